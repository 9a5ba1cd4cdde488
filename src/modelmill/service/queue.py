"""Durable job claims: a lease with a heartbeat, and fencing on every write.

A worker claims the oldest runnable job by writing itself into the job's lease:
lease_owner (its id), lease_token (incremented on every claim: the fencing token) and
lease_expires_at. It renews the lease with heartbeats. A job is claimable when it is
validating_files, queued or running and its lease is absent or expired, so a job whose
worker died (SIGKILL, power loss) is picked up again once the lease runs out. A finished
job (succeeded, failed, cancelled) or a paused one is never claimed.

Every write a worker makes to a job's state (status, events, checkpoints, the result)
runs in one transaction that first checks `lease_owner = ? AND lease_token = ?`. If
another worker has claimed the job since, or the API has taken it over (cancel/pause of
an unleased job bumps the token), the check fails, nothing is written and
errors.FencedOutError is raised: a stale worker can never overwrite newer state.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from modelmill import errors
from modelmill.service.ids import new_id
from modelmill.service.store import Store
from modelmill.service.store.events import insert_event
from modelmill.service.store.records import ACTIVE_STATUSES, CheckpointRecord, JobRecord, from_row, to_json

log = logging.getLogger(__name__)

# Job columns a lease holder may write.
_WRITABLE = {"status", "error", "fine_tuned_model", "adapter_dir", "finished_at", "started_at", "trained_tokens",
             "total_steps", "step", "estimated_finish", "hyperparameters", "hyperparameters_resolved",
             "result_files", "requested_action"}
_JSON_FIELDS = {"error", "hyperparameters", "result_files"}


@dataclass(frozen=True)
class Lease:
    """A worker's claim on one job. `token` is the fencing token of this claim."""

    job_id: str
    owner: str
    token: int
    attempt: int  # 1 for the first claim of this job, 2+ when it was claimed before
    claimed_status: str  # the job's status when claimed


class JobQueue:
    def __init__(self, store: Store, lease_seconds: float, *, clock=time.time):
        self.store = store
        self.db = store.db
        self.lease_seconds = lease_seconds
        self.clock = clock

    # -- claiming ----------------------------------------------------------------------

    def claim(self, owner: str) -> Lease | None:
        """Claim the oldest runnable job for `owner`, or return None if there is none."""
        now = self.clock()
        placeholders = ",".join("?" * len(ACTIVE_STATUSES))
        with self.db.transaction() as c:
            row = c.execute(
                f"SELECT id, status, lease_token, attempts FROM jobs WHERE status IN ({placeholders})"
                " AND (lease_expires_at IS NULL OR lease_expires_at < ?) ORDER BY seq LIMIT 1",
                (*ACTIVE_STATUSES, now)).fetchone()
            if row is None:
                return None
            token = row["lease_token"] + 1
            reclaim = int(row["status"] == "running")  # its last worker died mid-run
            c.execute("UPDATE jobs SET lease_owner = ?, lease_token = ?, lease_expires_at = ?,"
                      " attempts = attempts + 1, reclaims = reclaims + ?, updated_at = ? WHERE id = ?",
                      (owner, token, now + self.lease_seconds, reclaim, now, row["id"]))
        return Lease(row["id"], owner, token, row["attempts"] + 1, row["status"])

    def heartbeat(self, lease: Lease) -> None:
        """Extend the lease; raises FencedOutError if it was lost."""
        now = self.clock()
        cur = self.db.execute("UPDATE jobs SET lease_expires_at = ? WHERE id = ? AND lease_owner = ?"
                              " AND lease_token = ?", (now + self.lease_seconds, lease.job_id, lease.owner,
                                                       lease.token))
        if cur.rowcount == 0:
            raise errors.FencedOutError(f"Lost the lease on job {lease.job_id}")

    # -- fenced writes -----------------------------------------------------------------

    @contextmanager
    def fenced(self, lease: Lease) -> Iterator[sqlite3.Connection]:
        """A write transaction that proceeds only while `lease` is still the job's claim."""
        with self.db.transaction() as c:
            row = c.execute("SELECT 1 FROM jobs WHERE id = ? AND lease_owner = ? AND lease_token = ?",
                            (lease.job_id, lease.owner, lease.token)).fetchone()
            if row is None:
                raise errors.FencedOutError(f"Job {lease.job_id} is no longer claimed by {lease.owner}")
            yield c

    def update(self, lease: Lease, **fields) -> None:
        """Write job fields (see _WRITABLE) under the lease."""
        with self.fenced(lease) as c:
            _update(c, lease.job_id, fields, self.clock())

    def add_event(self, lease: Lease, level: str, message: str, *, type: str = "message",
                  data: dict | None = None) -> None:
        with self.fenced(lease) as c:
            insert_event(c, lease.job_id, level, message, type=type, data=data)

    def record_step(self, lease: Lease, step: int, total_steps: int, message: str, data: dict,
                    estimated_finish: float | None) -> None:
        """One metrics event plus the job's progress fields, in one fenced transaction."""
        with self.fenced(lease) as c:
            insert_event(c, lease.job_id, "info", message, type="metrics", data=data)
            _update(c, lease.job_id, {"step": step, "total_steps": total_steps,
                                      "estimated_finish": estimated_finish}, self.clock())

    def add_checkpoint(self, lease: Lease, step: int, path: Path, metrics: dict, model_name: str) -> None:
        """Record a checkpoint (replacing one at the same step) and forget ones pruned from disk."""
        with self.fenced(lease) as c:
            c.execute("INSERT INTO checkpoints (id, job_id, created_at, step_number, metrics, path,"
                      " fine_tuned_model_checkpoint) VALUES (?, ?, ?, ?, ?, ?, ?)"
                      " ON CONFLICT (job_id, step_number) DO UPDATE SET metrics = excluded.metrics,"
                      " path = excluded.path, created_at = excluded.created_at",
                      (new_id("ftckpt_"), lease.job_id, self.clock(), step, to_json(metrics), str(path),
                       model_name))
            insert_event(c, lease.job_id, "info", f"Checkpoint created at step {step}",
                         data={"step": step, "fine_tuned_model_checkpoint": model_name})
            _forget_pruned(c, lease.job_id)
            # Progress: `reclaims` counts worker losses since the newest checkpoint, so a long job
            # that keeps checkpointing survives any number of crashes (see worker.max_worker_losses).
            c.execute("UPDATE jobs SET reclaims = 0 WHERE id = ?", (lease.job_id,))

    def forget_pruned_checkpoints(self, lease: Lease) -> None:
        with self.fenced(lease) as c:
            _forget_pruned(c, lease.job_id)

    def finish(self, lease: Lease, status: str, *, message: str | None = None, level: str = "info",
               **fields) -> None:
        """Write the job's outcome and release the lease, in one fenced transaction.

        `status` is terminal (succeeded / failed / cancelled), "paused", or "queued" (hand the
        job back, e.g. when the worker shuts down).
        """
        now = self.clock()
        if status in ("succeeded", "failed", "cancelled"):
            fields.setdefault("finished_at", now)
        fields.update(status=status, requested_action=None, estimated_finish=None)
        with self.fenced(lease) as c:
            if message:
                insert_event(c, lease.job_id, level, message)
            _update(c, lease.job_id, fields, now)
            c.execute("UPDATE jobs SET lease_owner = NULL, lease_expires_at = NULL WHERE id = ?",
                      (lease.job_id,))

    # -- reads -------------------------------------------------------------------------

    def job(self, lease: Lease) -> JobRecord:
        return self.store.jobs.get(lease.job_id)

    def data_version(self) -> int:
        """SQLite's PRAGMA data_version on this thread's connection: it changes whenever another
        connection (the API creating a job, another worker) commits. A read without a lock, so an
        idle worker can check it every few milliseconds where a claim (a write transaction) would
        contend with the API."""
        return int(self.db.one("PRAGMA data_version")[0])

    def requested_action(self, lease: Lease) -> str | None:
        """What the user asked of this job ("cancel" / "pause"), or None.
        Raises FencedOutError if the lease was lost (then the answer no longer matters)."""
        row = self.db.one("SELECT requested_action, lease_owner, lease_token FROM jobs WHERE id = ?",
                          (lease.job_id,))
        if row is None or row["lease_owner"] != lease.owner or row["lease_token"] != lease.token:
            raise errors.FencedOutError(f"Job {lease.job_id} is no longer claimed by {lease.owner}")
        return row["requested_action"]


def _update(c: sqlite3.Connection, job_id: str, fields: dict, now: float) -> None:
    bad = set(fields) - _WRITABLE
    if bad:
        raise ValueError(f"not writable by a worker: {sorted(bad)}")
    values = [json.dumps(v) if k in _JSON_FIELDS and v is not None else v for k, v in fields.items()]
    sets = ", ".join(f"{k} = ?" for k in fields)
    c.execute(f"UPDATE jobs SET {sets}, updated_at = ? WHERE id = ?", (*values, now, job_id))


def _forget_pruned(c: sqlite3.Connection, job_id: str) -> None:
    rows = c.execute("SELECT * FROM checkpoints WHERE job_id = ?", (job_id,)).fetchall()
    for ckpt in (from_row(CheckpointRecord, r) for r in rows):
        if not Path(ckpt.path).exists():
            c.execute("DELETE FROM checkpoints WHERE id = ?", (ckpt.id,))


class Heartbeat(threading.Thread):
    """Calls `renew` (a queue's heartbeat for one lease) every `interval` seconds until stopped.
    Used for training jobs (JobQueue) and eval runs (evals/run_queue.EvalRunQueue) alike: a
    FencedOutError means the lease is gone, so `lost` is set and beating stops; any other error
    (a locked database, ...) is logged and retried at the next beat."""

    def __init__(self, renew: Callable[[], None], interval: float, lost: threading.Event, what: str):
        super().__init__(name=f"heartbeat-{what}", daemon=True)
        self.renew, self.interval, self.lost, self.what = renew, interval, lost, what
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            try:
                self.renew()
            except errors.FencedOutError:
                log.warning("lost the lease on %s", self.what)
                self.lost.set()
                return
            except Exception:  # a locked database etc.: try again next beat
                log.exception("heartbeat for %s failed", self.what)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)
