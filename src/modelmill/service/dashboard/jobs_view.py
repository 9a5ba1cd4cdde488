"""What the dashboard shows about jobs, as plain JSON-ready dicts built from store records.

Pure functions over records (no HTTP, no templates), so the JSON endpoints stay thin and
the shapes are unit-tested directly:

    job_row(job, now, tokens_per_epoch)      one line of the jobs table
    metric_series(metrics_events)            steps + one value list per metric, and which charts apply
    best_checkpoint(method, checkpoints)     the checkpoint to mark, and by which metric
    eval_comparison(events)                  the newest before/after eval table (docs/graders-evals.md, "Before/after reports")
    trajectories(events)                     agentic RFT's sampled trajectory per eval step (docs/agentic_rft.md)
"""

from __future__ import annotations

import json

from modelmill.reports import best_index
from modelmill.service.schemas.common import finite_numbers
from modelmill.service.store.records import ACTIVE_STATUSES, CheckpointRecord, EventRecord, JobRecord

# Charts on the job page: (id, title, metric names). A chart appears when any of its metrics
# occurs in the job's metrics events (names: docs/api.md and docs/methods.md, "Metrics events").
CHART_GROUPS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("loss", "Loss", ("train_loss", "valid_loss", "full_valid_loss")),
    ("accuracy", "Token accuracy",
     ("train_mean_token_accuracy", "valid_mean_token_accuracy", "full_valid_mean_token_accuracy")),
    ("reward_margin", "Reward margin", ("train_reward_margin", "valid_reward_margin", "full_valid_reward_margin")),
    ("reward_accuracy", "Reward accuracy",
     ("train_reward_accuracy", "valid_reward_accuracy", "full_valid_reward_accuracy")),
    ("reward", "Reward", ("train_reward_mean", "valid_reward_mean")),
)

# Metrics shown as "current" in the jobs table and on the job page header, in preference order.
HEADLINE_METRICS = ("train_loss", "train_reward_mean", "valid_loss", "valid_reward_mean")


def elapsed_seconds(job: JobRecord, now: float) -> float | None:
    """Wall time since the job first started: to its finish, to now while running, else to its last change."""
    if job.started_at is None:
        return None
    if job.finished_at is not None:
        end = job.finished_at
    elif job.status == "running":
        end = now
    else:
        end = job.updated_at or now
    return max(0.0, end - job.started_at)


def tokens(job: JobRecord, tokens_per_epoch: int | None) -> tuple[int | None, bool]:
    """(tokens, estimated). trained_tokens once the worker has reported it; while a job runs, an
    estimate from its training file's token count: epochs x tokens per epoch x the share of steps done."""
    if job.trained_tokens is not None:
        return int(job.trained_tokens), False
    if tokens_per_epoch and job.step and job.total_steps:
        n_epochs = job.hyperparameters.get("n_epochs") if job.hyperparameters_resolved else None
        if isinstance(n_epochs, int):
            return int(tokens_per_epoch * n_epochs * min(job.step / job.total_steps, 1.0)), True
    return None, False


def job_row(job: JobRecord, now: float, tokens_per_epoch: int | None = None) -> dict:
    n_tokens, estimated = tokens(job, tokens_per_epoch)
    return {
        "id": job.id, "status": job.status, "method": job.method_type, "model": job.model,
        "fine_tuned_model": job.fine_tuned_model, "created_at": job.created_at,
        "step": job.step, "total_steps": job.total_steps,
        "progress": (job.step / job.total_steps) if job.step is not None and job.total_steps else None,
        "elapsed_s": elapsed_seconds(job, now), "estimated_finish": job.estimated_finish if job.status == "running"
        else None, "tokens": n_tokens, "tokens_estimated": estimated, "active": job.status in ACTIVE_STATUSES,
        "error": job.error,
    }


def metric_series(events: list[EventRecord]) -> dict:
    """Metrics events (oldest first) -> {"steps": [...], "series": {name: [value or None per step]},
    "charts": [{"id", "title", "series": [names present]}], "latest": {name: newest value}}.

    A step reported twice (a resumed job repeats the steps after its last checkpoint) keeps the
    newer values. Only numeric, finite values count.
    """
    by_step: dict[int, dict[str, float]] = {}
    for ev in events:
        if ev.type != "metrics" or not ev.data or not isinstance(ev.data.get("step"), int):
            continue
        values = finite_numbers(ev.data)
        values.pop("step", None)
        values.pop("total_steps", None)
        by_step.setdefault(ev.data["step"], {}).update(values)
    steps = sorted(by_step)
    names = sorted({k for v in by_step.values() for k in v})
    series = {name: [by_step[s].get(name) for s in steps] for name in names}
    charts = []
    for chart_id, title, metrics in CHART_GROUPS:
        present = [m for m in metrics if m in series]
        if present:
            charts.append({"id": chart_id, "title": title, "series": present})
    latest = {}
    for name in names:
        for value in reversed(series[name]):
            if value is not None:
                latest[name] = value
                break
    return {"steps": steps, "series": series, "charts": charts, "latest": latest}


def best_checkpoint(method: str, checkpoints: list[CheckpointRecord]) -> tuple[str | None, str | None]:
    """(id of the best checkpoint, the metric that decided it); (None, None) without any metric."""
    index, metric = best_index(method, [(c.step_number, c.metrics) for c in checkpoints])
    return (checkpoints[index].id if index is not None else None), metric


def checkpoint_rows(method: str, checkpoints: list[CheckpointRecord]) -> tuple[list[dict], str | None]:
    best_id, metric = best_checkpoint(method, checkpoints)
    rows = [{"id": c.id, "step": c.step_number, "model": c.fine_tuned_model_checkpoint,
             "created_at": c.created_at, "metrics": finite_numbers(c.metrics), "best": c.id == best_id}
            for c in sorted(checkpoints, key=lambda c: c.step_number)]
    return rows, metric


def eval_comparison(events: list[EventRecord]) -> dict | None:
    """The newest event (events oldest first) whose data carries "eval_comparison", or None."""
    for ev in reversed(events):
        table = (ev.data or {}).get("eval_comparison")
        if isinstance(table, dict) and isinstance(table.get("rows"), list):
            return {"criteria": [str(c) for c in table.get("criteria") or []], "rows": table["rows"],
                    "created_at": ev.created_at}
    return None


def event_rows(events: list[EventRecord], limit: int = 300) -> list[dict]:
    """The newest `limit` events, newest first (as OpenAI lists them)."""
    return [{"id": e.id, "created_at": e.created_at, "level": e.level, "type": e.type, "message": e.message}
            for e in reversed(events[-limit:])]


MAX_TRAJECTORY_CHARS = 20_000  # of one message's content, as the page shows it


def trajectories(events: list[EventRecord]) -> list[dict]:
    """Agentic RFT's "Sampled trajectory at step N" events (ml/rft/train.py), one per eval step, oldest
    step first (after a resume the step's newer event wins): {"step", "reward", "messages",
    "environment_state", "created_at"}. Messages are cut down to what the page renders: role, content
    (text), tool_calls as {"id", "name", "arguments"}, and a tool result's tool_call_id and name."""
    by_step: dict[int, dict] = {}
    for ev in events:
        data = ev.data or {}
        messages, step = data.get("trajectory"), data.get("step")
        if not isinstance(messages, list) or isinstance(step, bool) or not isinstance(step, int):
            continue
        reward = finite_numbers({"r": data.get("reward")}).get("r")
        by_step[step] = {"step": step, "reward": reward, "created_at": ev.created_at,
                         "messages": [_message(m) for m in messages if isinstance(m, dict)],
                         "environment_state": data.get("environment_state")}
    return [by_step[s] for s in sorted(by_step)]


def _text(value) -> str:
    if isinstance(value, list):  # content parts
        value = "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in value)
    text = value if isinstance(value, str) else "" if value is None else json.dumps(value)
    return text if len(text) <= MAX_TRAJECTORY_CHARS else text[:MAX_TRAJECTORY_CHARS] + "...[cut]"


def _message(m: dict) -> dict:
    out = {"role": str(m.get("role", "")), "content": _text(m.get("content"))}
    calls = m.get("tool_calls")
    if isinstance(calls, list):
        out["tool_calls"] = [{"id": str(c.get("id", "")), "name": str((c.get("function") or {}).get("name", "")),
                              "arguments": _text((c.get("function") or {}).get("arguments"))}
                             for c in calls if isinstance(c, dict)]
    for key in ("tool_call_id", "name"):
        if isinstance(m.get(key), str):
            out[key] = m[key]
    return out
