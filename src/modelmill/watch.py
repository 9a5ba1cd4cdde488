"""`modelmill jobs watch`: a live progress bar for a fine-tuning job, over the public API."""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

TERMINAL = {"succeeded", "failed", "cancelled"}


def latest_metrics(client, job_id: str) -> dict | None:
    """The newest metrics event's data (events are listed newest first, as on OpenAI)."""
    for ev in client.fine_tuning.jobs.list_events(job_id, limit=20).data:
        if getattr(ev, "type", None) == "metrics" and ev.data:
            return dict(ev.data)
    return None


def _postfix(metrics: dict) -> dict:
    shown = {}
    for key in ("train_loss", "valid_loss", "full_valid_loss", "train_mean_token_accuracy",
                "train_reward_margin", "train_reward_accuracy"):  # the last two: DPO jobs
        if metrics.get(key) is not None:
            shown[key.replace("_mean_token_accuracy", "_acc").replace("_reward_", "_")] = f"{metrics[key]:.4f}"
    return shown


def watch_job(client, job_id: str, poll: float = 1.0, stop_on_pause: bool = True, out=sys.stderr):
    """Poll until the job ends (or pauses); show step/total, loss and ETA; return the final job."""
    # A live bar on a terminal; in a log file or pipe, one plain line per new step instead.
    live = hasattr(out, "isatty") and out.isatty()
    bar = tqdm(total=None, desc=job_id, unit="step", file=out, dynamic_ncols=True, disable=not live)
    seen_messages: set[str] = set()
    last_step, first = 0, None  # first: (time, step) when this watch first saw a step, for the ETA
    try:
        while True:
            job = client.fine_tuning.jobs.retrieve(job_id)
            for ev in reversed(client.fine_tuning.jobs.list_events(job_id, limit=50).data):
                if getattr(ev, "type", "message") != "metrics" and ev.id not in seen_messages:
                    seen_messages.add(ev.id)
                    tqdm.write(f"[{ev.level}] {ev.message}", file=out)
            metrics = latest_metrics(client, job_id)
            if metrics and metrics.get("total_steps"):
                bar.total = int(metrics["total_steps"])
                bar.n = int(metrics.get("step", 0))
                bar.set_postfix(_postfix(metrics), refresh=False)
                if not live and bar.n > last_step:
                    first = first or (time.monotonic(), bar.n)
                    print(f"step {bar.n}/{bar.total} {_eta(first, bar.n, bar.total)} "
                          + " ".join(f"{k}={v}" for k, v in _postfix(metrics).items()), file=out, flush=True)
                    last_step = bar.n
            bar.set_description(f"{job_id} {job.status}")
            bar.refresh()
            if job.status in TERMINAL or (stop_on_pause and job.status == "paused"):
                break
            time.sleep(poll)
    finally:
        bar.close()
    print(summary(job), file=out)
    return job


def _eta(first: tuple[float, int], step: int, total: int) -> str:
    t0, step0 = first
    if step <= step0:
        return "eta ?"
    per_step = (time.monotonic() - t0) / (step - step0)
    return f"eta {per_step * (total - step):.0f}s"


def summary(job) -> str:
    lines = [f"job {job.id}: {job.status}"]
    if job.fine_tuned_model:
        lines.append(f"  fine_tuned_model: {job.fine_tuned_model}")
    if job.trained_tokens:
        lines.append(f"  trained_tokens:   {job.trained_tokens}")
    if job.created_at and job.finished_at:
        lines.append(f"  wall time:        {job.finished_at - job.created_at} s")
    if job.error and getattr(job.error, "message", None):
        lines.append(f"  error:            {job.error.code}: {job.error.message}")
    return "\n".join(lines)
