"""Fine-tuning jobs as the API sees them: create, read, list, and the user's state changes.

The API never writes a job that a live worker holds: for a leased job, cancel and pause
are *requests* (requested_action) that the worker honours within one training step.
For a job nobody holds, the API applies the change itself and bumps lease_token, which
fences out any worker that still thinks it owns the job (see store/lease.py).

    validating_files -> queued -> running -> succeeded | failed | cancelled
           (any active state) <-> paused  (pause / resume; resume goes back to queued)
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from modelmill import errors
from modelmill.service.store import webhooks
from modelmill.service.store.db import Database
from modelmill.service.store.events import insert_event
from modelmill.service.store.pagination import page_rows
from modelmill.service.store.records import (ACTIVE_STATUSES, DEFAULT_PROJECT_ID, TERMINAL_STATUSES, JobRecord,
                                             Page, from_row, in_project, to_json)


@dataclass(frozen=True)
class NewJob:
    """A validated create request, with the model already resolved."""

    id: str
    model: str  # as requested
    base_model: str  # resolved base model name
    init_adapter: str | None  # adapter dir to continue from (ft: / checkpoint model), else None
    training_file: str
    validation_file: str | None
    suffix: str | None
    seed: int
    metadata: dict | None
    integrations: list | None
    method_type: str
    hyperparameters: dict  # as requested; "auto" allowed
    ft_name: str  # the fine_tuned_model name the job gets on success
    grader: dict | None = None  # method.reinforcement.grader (validated); None for other methods
    environment: dict | None = None  # method.reinforcement.environment (validated); None = not agentic
    project_id: str = DEFAULT_PROJECT_ID  # the project that owns the job and everything it makes


class JobRepo:
    def __init__(self, db: Database, clock=time.time):
        self.db = db
        self.clock = clock

    def create(self, new: NewJob) -> JobRecord:
        now = self.clock()
        with self.db.transaction() as c:
            c.execute(
                "INSERT INTO jobs (id, created_at, model, base_model, init_adapter, training_file,"
                " validation_file, suffix, seed, metadata, integrations, method_type, hyperparameters,"
                " ft_name, grader, status, updated_at, project_id, environment)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,'validating_files',?,?,?)",
                (new.id, now, new.model, new.base_model, new.init_adapter, new.training_file,
                 new.validation_file, new.suffix, new.seed, to_json(new.metadata), to_json(new.integrations),
                 new.method_type, to_json(new.hyperparameters), new.ft_name, to_json(new.grader), now,
                 new.project_id, to_json(new.environment)))
            insert_event(c, new.id, "info", f"Created fine-tuning job: {new.id}")
        return self.get(new.id)

    def get(self, job_id: str, *, project_id: str | None = None) -> JobRecord:
        """The job; with project_id, only if that project owns it (else the NotFoundError of a missing id)."""
        return self._locked_get(self.db.conn(), job_id, project_id)

    def list(self, *, after: str | None = None, limit: int = 20,
             metadata: dict[str, str] | None = None, project_id: str | None = None) -> Page[JobRecord]:
        where, params = [], []
        for key, value in (metadata or {}).items():
            field_sql, field_param = self.db.json_field("metadata", key)
            where.append(f"{field_sql} = ?")
            params += [field_param, value]
        scope = ([], []) if project_id is None else (["project_id = ?"], [project_id])
        rows, more = page_rows(self.db, "jobs", where + scope[0], params + scope[1], after=after, limit=limit,
                               descending=True, cursor_where=scope)
        return Page([from_row(JobRecord, r) for r in rows], more)

    def by_fine_tuned_model(self, name: str) -> JobRecord | None:
        row = self.db.one("SELECT * FROM jobs WHERE fine_tuned_model = ? AND status = 'succeeded'"
                          " AND model_deleted_at IS NULL", (name,))
        return None if row is None else from_row(JobRecord, row)

    def newest_using_file(self, file_id: str) -> JobRecord | None:
        """The newest job that trains or validates on `file_id` (any project), or None."""
        row = self.db.one("SELECT * FROM jobs WHERE training_file = ? OR validation_file = ?"
                          " ORDER BY seq DESC LIMIT 1", (file_id, file_id))
        return None if row is None else from_row(JobRecord, row)

    def fine_tuned_models(self) -> list[JobRecord]:
        rows = self.db.all("SELECT * FROM jobs WHERE status = 'succeeded' AND fine_tuned_model IS NOT NULL"
                           " AND model_deleted_at IS NULL ORDER BY seq")
        return [from_row(JobRecord, r) for r in rows]

    def mark_model_deleted(self, job_id: str) -> None:
        self.db.execute("UPDATE jobs SET model_deleted_at = ?, updated_at = ? WHERE id = ?",
                        (self.clock(), self.clock(), job_id))

    # -- the user's state changes ------------------------------------------------------

    def cancel(self, job_id: str, *, project_id: str | None = None) -> JobRecord:
        with self.db.transaction() as c:
            job = self._locked_get(c, job_id, project_id, lock=True)
            if job.status in TERMINAL_STATUSES:
                raise errors.ConflictError(f"Job {job_id} has already {job.status}; it cannot be cancelled",
                                           param="fine_tuning_job_id")
            if job.lease_live(self.clock()):
                if job.requested_action != "cancel":
                    self._set(c, job_id, requested_action="cancel")
                    insert_event(c, job_id, "info", "Cancellation requested; stopping at the next step")
            else:
                self._take_over(c, job_id, status="cancelled", finished_at=self.clock(), estimated_finish=None)
                insert_event(c, job_id, "info", "Job cancelled")
                webhooks.job_finished(c, job_id, "cancelled", self.clock())  # as a worker's finish would
        return self.get(job_id)

    def pause(self, job_id: str, *, project_id: str | None = None) -> JobRecord:
        with self.db.transaction() as c:
            job = self._locked_get(c, job_id, project_id, lock=True)
            if job.status not in ACTIVE_STATUSES:
                raise errors.ConflictError(f"Job {job_id} is {job.status}; only a queued or running job can be"
                                           " paused", param="fine_tuning_job_id")
            if job.lease_live(self.clock()):
                if job.requested_action == "cancel":
                    raise errors.ConflictError(f"Job {job_id} is being cancelled", param="fine_tuning_job_id")
                if job.requested_action != "pause":
                    self._set(c, job_id, requested_action="pause")
                    insert_event(c, job_id, "info", "Pause requested; checkpointing at the next step")
            else:
                self._take_over(c, job_id, status="paused", estimated_finish=None)
                insert_event(c, job_id, "info", "Job paused")
        return self.get(job_id)

    def resume(self, job_id: str, *, project_id: str | None = None) -> JobRecord:
        with self.db.transaction() as c:
            job = self._locked_get(c, job_id, project_id, lock=True)
            if job.requested_action == "pause" and job.status != "paused":
                # The API already answered "paused" (schemas/jobs.py wire_status) but no worker has
                # honoured it yet: resuming withdraws the request and the job trains on.
                self._set(c, job_id, requested_action=None)
                insert_event(c, job_id, "info", "Pause withdrawn by resume; the job continues")
            elif job.status != "paused":
                raise errors.ConflictError(f"Job {job_id} is {job.status}; only a paused job can be resumed",
                                           param="fine_tuning_job_id")
            else:
                self._take_over(c, job_id, status="queued")
                insert_event(c, job_id, "info", "Job resumed; queued to continue from its last checkpoint")
        return self.get(job_id)

    def _locked_get(self, c, job_id: str, project_id: str | None = None, *, lock: bool = False) -> JobRecord:
        """The job read on `c`; lock=True (in a transaction that then writes it) also locks the row on
        Postgres, so a worker's claim or fenced write can't slip in between the read and the write."""
        sql, params = in_project("SELECT * FROM jobs WHERE id = ?", [job_id], project_id)
        row = c.execute(sql + (self.db.row_lock if lock else ""), params).fetchone()
        if row is None:
            raise errors.NotFoundError(f"No such fine-tuning job: {job_id}", param="fine_tuning_job_id")
        return from_row(JobRecord, row)

    def _set(self, c, job_id: str, **fields) -> None:
        sets = ", ".join(f"{k} = ?" for k in fields)
        c.execute(f"UPDATE jobs SET {sets}, updated_at = ? WHERE id = ?", (*fields.values(), self.clock(), job_id))

    def _take_over(self, c, job_id: str, **fields) -> None:
        """Write an unleased job's state and fence out any worker still holding an old claim."""
        self._set(c, job_id, **fields, requested_action=None, lease_owner=None, lease_expires_at=None)
        c.execute("UPDATE jobs SET lease_token = lease_token + 1 WHERE id = ?", (job_id,))
