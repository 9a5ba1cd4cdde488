"""`modelmill jobs watch`: a live progress bar for a fine-tuning job, over the public API.

On a terminal: one tqdm bar (step/total, the current loss or reward, an ETA) with the job's
messages printed above it. In a log file or pipe: one plain line per new step instead. Either
way the watch ends with a summary: status, steps, tokens, wall time, the last metrics and the
best checkpoint.

`modelmill evals watch` works the same way for an eval run: a bar of items graded out of the
total (or plain lines), then the pass rate of each testing criterion and the report page.
"""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

TERMINAL = {"succeeded", "failed", "cancelled"}

# Metrics shown next to the bar, in order, with their short labels (SFT, DPO, RFT names).
SHOWN_METRICS = (
    ("train_loss", "loss"), ("valid_loss", "valid_loss"), ("full_valid_loss", "full_valid_loss"),
    ("train_mean_token_accuracy", "acc"),
    ("train_reward_margin", "margin"), ("train_reward_accuracy", "reward_acc"),  # DPO
    ("train_reward_mean", "reward"), ("valid_reward_mean", "valid_reward"),  # RFT
)
BAR_FORMAT = "{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]"


def latest_metrics(client, job_id: str, limit: int = 20) -> dict | None:
    """The newest metrics event's data (events are listed newest first, as on OpenAI)."""
    for ev in client.fine_tuning.jobs.list_events(job_id, limit=limit).data:
        if getattr(ev, "type", None) == "metrics" and ev.data:
            return dict(ev.data)
    return None


def last_values(client, job_id: str, limit: int = 200) -> dict:
    """The newest value of every metric among the last `limit` events (valid_* arrive every few steps)."""
    out: dict = {}
    for ev in client.fine_tuning.jobs.list_events(job_id, limit=limit).data:
        if getattr(ev, "type", None) == "metrics" and ev.data:
            for k, v in dict(ev.data).items():
                out.setdefault(k, v)
    return out


def _postfix(metrics: dict) -> dict:
    return {label: f"{metrics[key]:.4f}" for key, label in SHOWN_METRICS
            if isinstance(metrics.get(key), (int, float))}


def watch_job(client, job_id: str, poll: float = 1.0, stop_on_pause: bool = True, out=sys.stderr):
    """Poll until the job ends (or pauses); show step/total, loss or reward and ETA; print a
    summary; return the final job."""
    live = hasattr(out, "isatty") and out.isatty()
    bar = tqdm(total=None, desc=job_id, unit="step", file=out, dynamic_ncols=True, disable=not live,
               bar_format=BAR_FORMAT)
    seen_messages: set[str] = set()
    last_step, first = 0, None  # first: (time, step) when this watch first saw a step, for the ETA
    try:
        while True:
            job = client.fine_tuning.jobs.retrieve(job_id)
            events = client.fine_tuning.jobs.list_events(job_id, limit=50).data
            for ev in reversed(events):
                if getattr(ev, "type", "message") != "metrics" and ev.id not in seen_messages:
                    seen_messages.add(ev.id)
                    tqdm.write(f"[{ev.level}] {ev.message}", file=out)
            metrics = next((dict(ev.data) for ev in events if getattr(ev, "type", None) == "metrics" and ev.data),
                           None)
            if metrics and metrics.get("total_steps"):
                step, total = int(metrics.get("step", 0)), int(metrics["total_steps"])
                if first is None or step < first[1]:
                    first = (time.monotonic(), step)
                eta = eta_text(job, first, step, total)
                bar.total, bar.n = total, step
                bar.set_postfix({**_postfix(metrics), "eta": eta}, refresh=False)
                if not live and step > last_step:
                    print(f"step {step}/{total} eta {eta} "
                          + " ".join(f"{k}={v}" for k, v in _postfix(metrics).items()), file=out, flush=True)
                    last_step = step
            bar.set_description(f"{job_id} {job.status}")
            bar.refresh()
            if job.status in TERMINAL or (stop_on_pause and job.status == "paused"):
                break
            time.sleep(poll)
    finally:
        bar.close()
    print(summary(job, last_values(client, job_id), _checkpoints(client, job_id)), file=out)
    return job


def eta_text(job, first: tuple[float, int] | None, step: int, total: int, now: float | None = None) -> str:
    """Seconds left: the server's estimated_finish while running, else this watch's own step rate."""
    if step >= total:
        return "0s"
    if job.status in TERMINAL or job.status == "paused":
        return "-"
    wall = time.time() if now is None else now
    finish = getattr(job, "estimated_finish", None)
    if job.status == "running" and finish:
        return _seconds(max(0.0, finish - wall))
    if first is None or step <= first[1]:
        return "?"
    t0, step0 = first
    per_step = (time.monotonic() - t0) / (step - step0)
    return _seconds(per_step * (total - step))


def _seconds(s: float) -> str:
    s = int(round(s))
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def _checkpoints(client, job_id: str) -> list:
    try:
        return list(client.fine_tuning.jobs.checkpoints.list(job_id, limit=100).data)
    except Exception:  # noqa: BLE001 - the summary goes without checkpoints rather than failing the watch
        return []


def summary(job, metrics: dict | None = None, checkpoints: list | None = None) -> str:
    """A few lines on how the job ended: status, model, steps, tokens, wall time, last metrics,
    the best checkpoint (lowest validation loss, or highest validation reward for RFT) and any error."""
    from modelmill.reports import best_index

    metrics = metrics or {}
    lines = [f"job {job.id}: {job.status}"]
    if job.fine_tuned_model:
        lines.append(f"  fine_tuned_model: {job.fine_tuned_model}")
    if metrics.get("step") is not None and metrics.get("total_steps"):
        lines.append(f"  steps:            {metrics['step']}/{metrics['total_steps']}")
    if job.trained_tokens:
        lines.append(f"  trained_tokens:   {job.trained_tokens}")
    if job.created_at and job.finished_at:
        lines.append(f"  wall time:        {_seconds(job.finished_at - job.created_at)}")
    shown = _postfix(metrics)
    if shown:
        lines.append("  last metrics:     " + "  ".join(f"{k}={v}" for k, v in shown.items()))
    if checkpoints:
        method = getattr(getattr(job, "method", None), "type", None) or "supervised"
        scored = [(c.step_number, _as_dict(c.metrics)) for c in checkpoints]
        index, by = best_index(method, scored)
        if index is not None:
            name = checkpoints[index].fine_tuned_model_checkpoint
            lines.append(f"  best checkpoint:  {name} ({by}={scored[index][1][by]:.4f})")
    if job.error and getattr(job.error, "message", None):
        lines.append(f"  error:            {job.error.code}: {job.error.message}")
    return "\n".join(lines)


def _as_dict(obj) -> dict:
    """An SDK object (or a plain dict) as a dict without unset fields."""
    if obj is None:
        return {}
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    return dict(obj)


# -- eval runs (`modelmill evals watch`) --------------------------------------------------

EVAL_TERMINAL = {"completed", "failed", "canceled"}


def eval_run_total(client, run) -> int | None:
    """How many items the run will grade: its inline content's length, or the non-blank lines of
    its JSONL file (read once through /v1/files); None when that cannot be told."""
    source = (_as_dict(run.data_source) or {}).get("source") or {}
    if source.get("type") == "file_content" and isinstance(source.get("content"), list):
        return len(source["content"])
    if source.get("type") == "file_id" and source.get("id"):
        try:
            return sum(1 for line in client.files.content(source["id"]).read().splitlines() if line.strip())
        except Exception:  # noqa: BLE001 - a bar without a total rather than a failed watch
            return None
    return None


def watch_eval_run(client, eval_id: str, run_id: str, poll: float = 1.0, out=None):
    """Poll an eval run until it ends: a bar of items graded out of the total on a terminal, one
    plain line per change otherwise; then the summary. Returns the final run. `out`: stderr."""
    out = out or sys.stderr
    live = hasattr(out, "isatty") and out.isatty()
    run = client.evals.runs.retrieve(run_id, eval_id=eval_id)
    total = eval_run_total(client, run)
    bar = tqdm(total=total, desc=f"{run_id} {run.status}", unit="item", file=out, dynamic_ncols=True,
               disable=not live, bar_format=BAR_FORMAT if total else "{desc} {n_fmt} items [{elapsed}{postfix}]")
    last = None
    try:
        while True:
            counts = _as_dict(run.result_counts)
            graded = int(counts.get("total") or 0)
            bar.n = graded
            bar.set_postfix({k: counts.get(k, 0) for k in ("passed", "failed", "errored")}, refresh=False)
            bar.set_description(f"{run_id} {run.status}")
            bar.refresh()
            state = (run.status, graded)
            if not live and state != last:
                print(f"{run.status} {graded}/{total if total is not None else '?'} items "
                      f"passed={counts.get('passed', 0)} failed={counts.get('failed', 0)} "
                      f"errored={counts.get('errored', 0)}", file=out, flush=True)
            last = state
            if run.status in EVAL_TERMINAL:
                break
            time.sleep(poll)
            run = client.evals.runs.retrieve(run_id, eval_id=eval_id)
    finally:
        bar.close()
    print(eval_summary(run), file=out)
    return run


def criteria_rates(run) -> list[tuple[str, int, int]]:
    """(criterion, passed, graded) per testing criterion of a run."""
    out = []
    for c in run.per_testing_criteria_results or []:
        c = _as_dict(c)
        passed, failed = int(c.get("passed") or 0), int(c.get("failed") or 0)
        out.append((c.get("testing_criteria", "?"), passed, passed + failed))
    return out


def eval_summary(run) -> str:
    """A few lines on an eval run: status, model, counts, the pass rate of each criterion, the
    report page and any error."""
    counts = _as_dict(run.result_counts)
    lines = [f"eval run {run.id} ({run.name}): {run.status}", f"  eval:     {run.eval_id}"]
    if run.model:
        lines.append(f"  model:    {run.model}")
    lines.append(f"  items:    {counts.get('total', 0)} (passed {counts.get('passed', 0)}, "
                 f"failed {counts.get('failed', 0)}, errored {counts.get('errored', 0)})")
    for name, passed, graded in criteria_rates(run):
        rate = f"{100 * passed / graded:.1f}%" if graded else "-"
        lines.append(f"  {name}: {rate} passed ({passed}/{graded})")
    if run.report_url:
        lines.append(f"  report:   {run.report_url}")
    error = _as_dict(run.error)
    if error.get("message"):
        lines.append(f"  error:    {error.get('code')}: {error['message']}")
    return "\n".join(lines)
