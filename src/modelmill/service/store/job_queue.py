"""Fine-tuning jobs on the lease queue (store/lease.py): the writes a worker makes to a job it holds.

A job is claimable when it is validating_files, queued or running and no live lease holds it,
so a job whose worker died is picked up again once the lease runs out (a claim of a running
job counts a reclaim). A finished job (succeeded, failed, cancelled) or a paused one is never
claimed. Every write below is one fenced transaction: status, events, metrics steps,
checkpoints, the outcome. The API side of the same rows (create, cancel, pause, resume) is
store/jobs.py.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from modelmill.service.store.ids import new_id
from modelmill.service.store import webhooks
from modelmill.service.store.db import Database
from modelmill.service.store.events import insert_event
from modelmill.service.store.lease import Lease, LeaseQueue, LeaseTable
from modelmill.service.store.records import (ACTIVE_STATUSES, TERMINAL_STATUSES, CheckpointRecord, from_row,
                                             to_json)

JOBS = LeaseTable(
    name="jobs", what="job", claimable=ACTIVE_STATUSES, running="running", terminal=TERMINAL_STATUSES,
    writable=frozenset({"status", "error", "fine_tuned_model", "adapter_dir", "finished_at", "started_at",
                        "trained_tokens", "total_steps", "step", "estimated_finish", "hyperparameters",
                        "hyperparameters_resolved", "result_files", "requested_action"}),
    json_columns=frozenset({"error", "hyperparameters", "result_files"}), on_terminal=webhooks.job_finished)


class JobQueue(LeaseQueue):
    def __init__(self, db: Database, lease_seconds: float, *, clock=time.time):
        super().__init__(db, JOBS, lease_seconds, clock=clock)

    def add_event(self, lease: Lease, level: str, message: str, *, type: str = "message",
                  data: dict | None = None) -> None:
        with self.fenced(lease) as c:
            insert_event(c, lease.id, level, message, type=type, data=data)

    def record_step(self, lease: Lease, step: int, total_steps: int, message: str, data: dict,
                    estimated_finish: float | None) -> None:
        """One metrics event plus the job's progress fields, in one fenced transaction.

        A step at or below the job's recorded progress is a re-run: the job resumed from an
        earlier checkpoint after a crash, pause or takeover. The abandoned attempt's metrics
        events from this step on are deleted first, so each step has exactly one metrics event,
        the one of the attempt whose weights the job kept. (Replaced rather than marked as
        re-runs: the events list, the dashboard's curves and the results CSV all read one point
        per step, and the abandoned points describe weights that no longer exist. The "Resuming
        from checkpoint at step N" event still records that the steps were run again.)"""
        with self.fenced(lease) as c:
            row = c.execute("SELECT step FROM jobs WHERE id = ?", (lease.id,)).fetchone()
            if row is not None and row["step"] is not None and step <= row["step"]:
                at, key = self.db.json_field("data", "step")
                c.execute(f"DELETE FROM events WHERE job_id = ? AND type = 'metrics' AND CAST({at} AS INTEGER) >= ?",
                          (lease.id, key, step))
            insert_event(c, lease.id, "info", message, type="metrics", data=data)
            self.write(c, lease, {"step": step, "total_steps": total_steps, "estimated_finish": estimated_finish})

    def add_checkpoint(self, lease: Lease, step: int, path: Path, metrics: dict, model_name: str) -> None:
        """Record a checkpoint (replacing one at the same step) and forget ones pruned from disk."""
        with self.fenced(lease) as c:
            c.execute("INSERT INTO checkpoints (id, job_id, created_at, step_number, metrics, path,"
                      " fine_tuned_model_checkpoint) VALUES (?, ?, ?, ?, ?, ?, ?)"
                      " ON CONFLICT (job_id, step_number) DO UPDATE SET metrics = excluded.metrics,"
                      " path = excluded.path, created_at = excluded.created_at",
                      (new_id("ftckpt_"), lease.id, self.clock(), step, to_json(metrics), str(path), model_name))
            insert_event(c, lease.id, "info", f"Checkpoint created at step {step}",
                         data={"step": step, "fine_tuned_model_checkpoint": model_name})
            _forget_pruned(c, lease.id)
            # Progress: `reclaims` counts worker losses since the newest checkpoint, so a long job
            # that keeps checkpointing survives any number of crashes (see worker.max_worker_losses).
            c.execute("UPDATE jobs SET reclaims = 0 WHERE id = ?", (lease.id,))

    def forget_pruned_checkpoints(self, lease: Lease) -> None:
        with self.fenced(lease) as c:
            _forget_pruned(c, lease.id)

    def finish(self, lease: Lease, status: str, *, message: str | None = None, level: str = "info",
               **fields) -> None:
        """Write the job's outcome (an optional event `message`, `fields`) and release the lease, in
        one fenced transaction. `status` is terminal (succeeded / failed / cancelled), "paused", or
        "queued" (hand the job back, e.g. when the worker shuts down); a hand-back carries out the
        user's pending cancel or pause instead (_latest_word)."""
        with self.fenced(lease) as c:
            if status in ("paused", "queued"):
                status, message = _latest_word(_requested(c, lease.id), status, message)
            if message:
                insert_event(c, lease.id, level, message)
            self.finish_in(c, lease, status, dict(fields, estimated_finish=None))


def _latest_word(requested: str | None, status: str, message: str | None) -> tuple[str, str | None]:
    """(status, message) for a worker handing a job back ("paused" or "queued"), from the user's request
    on the row now. The worker chose its status at its last look at requested_action; the API may have
    stored a newer request since and already answered with it (schemas/jobs.py wire_status). This finish
    clears requested_action and releases the lease, so the request must be carried out here or it is
    lost: a cancel that landed while the worker was finishing a pause was re-queued as a withdrawn pause,
    and the next worker trained on while the API's answer went from "cancelled" back to "queued"."""
    if requested == "cancel":  # the cancel is the latest word whatever the worker stopped for
        return "cancelled", "Job cancelled"
    if status == "paused" and requested != "pause":
        # The worker read the pause request, then the user resumed before this write (the resume
        # withdrew the request): hand the job back to run on from the checkpoint the pause just
        # wrote, rather than park it paused for good.
        return "queued", "Pause withdrawn by resume; queued to continue from its checkpoint"
    if status == "queued" and requested == "pause":  # a pause that landed while the worker was shutting down
        return "paused", "Job paused; resume it to continue from its checkpoint"
    return status, message


def _requested(c: sqlite3.Connection, job_id: str) -> str | None:
    return c.execute("SELECT requested_action FROM jobs WHERE id = ?", (job_id,)).fetchone()["requested_action"]


def _forget_pruned(c: sqlite3.Connection, job_id: str) -> None:
    rows = c.execute("SELECT * FROM checkpoints WHERE job_id = ?", (job_id,)).fetchall()
    for ckpt in (from_row(CheckpointRecord, r) for r in rows):
        if not Path(ckpt.path).exists():
            c.execute("DELETE FROM checkpoints WHERE id = ?", (ckpt.id,))
