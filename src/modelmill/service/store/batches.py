"""Batches (the Batch API) as the API sees them, and the lease queue a worker runs them on.

A batch is background work on the one lease spine (lease.py), like jobs and eval runs:

    validating -> in_progress -> finalizing -> completed
                              \\-> failed | expired
    (any active status) -> cancelling -> cancelled

The API validates the input file when the batch is created (service/batches/requests.py) and records it as
`validating`; a worker claims it (BATCHES: validating, in_progress, finalizing and cancelling rows
are claimable when no live lease holds them), answers its lines and finalizes it. Each answered
line is a batch_results row, inserted fenced together with the batch's counters (record_in): a
worker that lost its lease writes nothing, a reclaimed batch skips the lines already recorded, and
UNIQUE (batch_id, line) backs that up, so no line is ever answered twice.

Cancel (request_cancel) marks the batch `cancelling` at once, as OpenAI does, and asks its lease
holder (requested_action); a batch nobody holds is taken over by the API (service/batches/requests.cancel
claims it through the same queue) and finalized there. The transaction that moves a batch into a
terminal status also queues its webhook event (batch.completed / failed / expired / cancelled).
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from typing import Iterator

from modelmill import errors
from modelmill.service.store.ids import new_id
from modelmill.service.store import webhooks
from modelmill.service.store.db import Database
from modelmill.service.store.lease import Lease, LeaseQueue, LeaseTable
from modelmill.service.store.pagination import page_rows
from modelmill.service.store.records import Leased, Page, to_json
from modelmill.service.store.text import clean

BATCH_ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")
BATCH_TERMINAL = ("completed", "failed", "expired", "cancelled")
# The timestamp column each status stamps when a batch enters it.
STATUS_AT = {"in_progress": "in_progress_at", "finalizing": "finalizing_at", "completed": "completed_at",
             "failed": "failed_at", "expired": "expired_at", "cancelling": "cancelling_at",
             "cancelled": "cancelled_at"}
RESULT_PAGE = 1000  # batch_results rows read per query when a file is written

BATCHES = LeaseTable(
    name="batches", what="batch", claimable=BATCH_ACTIVE, running="in_progress", terminal=BATCH_TERMINAL,
    writable=frozenset({"status", "errors", "output_file_id", "error_file_id", "finished_at", "requested_action",
                        *STATUS_AT.values()}),
    json_columns=frozenset({"errors"}))


@dataclass(frozen=True)
class BatchRecord(Leased):
    id: str
    project_id: str
    created_at: float
    endpoint: str
    model: str | None
    input_file_id: str
    completion_window: str
    metadata: dict | None
    output_expires_after: int | None
    status: str
    requested_action: str | None
    errors: list[dict] | None
    output_file_id: str | None
    error_file_id: str | None
    total: int
    completed: int
    failed: int
    input_tokens: int
    output_tokens: int
    expires_at: float
    in_progress_at: float | None = None
    finalizing_at: float | None = None
    completed_at: float | None = None
    failed_at: float | None = None
    expired_at: float | None = None
    cancelling_at: float | None = None
    cancelled_at: float | None = None
    finished_at: float | None = None
    updated_at: float = 0.0


@dataclass(frozen=True)
class NewBatch:
    endpoint: str
    input_file_id: str
    completion_window: str
    total: int  # the input file's requests (lines), counted when it was validated
    window_seconds: float  # the completion window: expires_at = created_at + this
    model: str | None = None
    metadata: dict | None = None
    output_expires_after: int | None = None


@dataclass(frozen=True)
class LineResult:
    """One answered input line: its output-file (ok) or error-file line, and the tokens it used."""

    line: int
    custom_id: str
    ok: bool
    result: dict  # {"id", "custom_id", "response": {...} | None, "error": {...} | None}
    input_tokens: int = 0
    output_tokens: int = 0


def _record(row) -> BatchRecord:
    names = BatchRecord.__dataclass_fields__
    return BatchRecord(**{k: (json.loads(row[k]) if k in ("metadata", "errors") and row[k] is not None else row[k])
                          for k in row.keys() if k in names})


class BatchRepo:
    def __init__(self, db: Database, clock=time.time):
        self.db = db
        self.clock = clock

    def create(self, new: NewBatch, project_id: str) -> BatchRecord:
        batch_id, now = new_id("batch_"), self.clock()
        self.db.execute("INSERT INTO batches (id, project_id, created_at, endpoint, model, input_file_id,"
                        " completion_window, metadata, output_expires_after, status, total, expires_at, updated_at)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'validating', ?, ?, ?)",
                        (batch_id, project_id, now, new.endpoint, new.model, new.input_file_id,
                         new.completion_window, to_json(new.metadata), new.output_expires_after, new.total,
                         now + new.window_seconds, now))
        return self.by_id(batch_id)

    def by_id(self, batch_id: str) -> BatchRecord:
        """The batch whatever its project (the worker's view)."""
        row = self.db.one("SELECT * FROM batches WHERE id = ?", (batch_id,))
        if row is None:
            raise errors.NotFoundError(f"No batch found with id '{batch_id}'.", param="batch_id")
        return _record(row)

    def get(self, batch_id: str, *, project_id: str) -> BatchRecord:
        """The batch, if `project_id` owns it (else the NotFoundError of a missing id)."""
        row = self.db.one("SELECT * FROM batches WHERE id = ? AND project_id = ?", (batch_id, project_id))
        if row is None:
            raise errors.NotFoundError(f"No batch found with id '{batch_id}'.", param="batch_id")
        return _record(row)

    def list(self, *, project_id: str, after: str | None = None, limit: int = 20) -> Page[BatchRecord]:
        """Newest first, as OpenAI lists batches."""
        scope = (["project_id = ?"], [project_id])
        rows, more = page_rows(self.db, "batches", *scope, after=after, limit=limit, descending=True,
                               cursor_where=scope)
        return Page([_record(r) for r in rows], more)

    def request_cancel(self, batch_id: str, *, project_id: str) -> BatchRecord:
        """Mark an active batch `cancelling` and ask its lease holder to stop (a batch already
        cancelling is left as it is); ConflictError for a batch that has ended."""
        now = self.clock()
        with self.db.transaction() as c:
            row = c.execute("SELECT status FROM batches WHERE id = ? AND project_id = ?" + self.db.row_lock,
                            (batch_id, project_id)).fetchone()
            if row is None:
                raise errors.NotFoundError(f"No batch found with id '{batch_id}'.", param="batch_id")
            if row["status"] in BATCH_TERMINAL:
                raise errors.ConflictError(f"Cannot cancel a batch with status '{row['status']}'.",
                                           param="batch_id")
            if row["status"] != "cancelling":
                c.execute("UPDATE batches SET status = 'cancelling', cancelling_at = ?, requested_action = 'cancel',"
                          " updated_at = ? WHERE id = ?", (now, now, batch_id))
        return self.get(batch_id, project_id=project_id)


class BatchQueue(LeaseQueue):
    """The worker's (and a cancelling API's) writes to a batch it holds, each fenced by its lease."""

    def __init__(self, db: Database, lease_seconds: float, *, clock=time.time):
        super().__init__(db, BATCHES, lease_seconds, clock=clock)

    def start(self, lease: Lease) -> None:
        """in_progress (from validating; a batch being cancelled stays cancelling), stamped once."""
        now = self.clock()
        with self.fenced(lease) as c:
            c.execute("UPDATE batches SET status = CASE WHEN status = 'validating' THEN 'in_progress' ELSE status END,"
                      " in_progress_at = COALESCE(in_progress_at, ?), updated_at = ? WHERE id = ?",
                      (now, now, lease.id))

    def finalizing(self, lease: Lease) -> None:
        """in_progress -> finalizing (the output files are being written); any other status stays."""
        now = self.clock()
        with self.fenced(lease) as c:
            c.execute("UPDATE batches SET status = 'finalizing', finalizing_at = COALESCE(finalizing_at, ?),"
                      " updated_at = ? WHERE id = ? AND status = 'in_progress'", (now, now, lease.id))

    def record_in(self, c: sqlite3.Connection, lease: Lease, results: list[LineResult]) -> None:
        """Inside a fenced transaction `c`: the answered lines and the batch's counters. Progress also
        resets `reclaims`, which counts worker deaths in a row without progress (a line that kills
        every worker fails the batch; one that was merely interrupted must not)."""
        now = self.clock()
        for r in results:
            c.execute("INSERT INTO batch_results (batch_id, line, custom_id, ok, result, created_at)"
                      " VALUES (?, ?, ?, ?, ?, ?)",  # clean: generated text is storable whatever it holds (text.py)
                      (lease.id, r.line, clean(r.custom_id), int(r.ok), to_json(clean(r.result)), now))
        c.execute("UPDATE batches SET completed = completed + ?, failed = failed + ?, input_tokens = input_tokens + ?,"
                  " output_tokens = output_tokens + ?, reclaims = 0, updated_at = ? WHERE id = ?",
                  (sum(r.ok for r in results), sum(not r.ok for r in results), sum(r.input_tokens for r in results),
                   sum(r.output_tokens for r in results), now, lease.id))

    def answered_lines(self, batch_id: str) -> set[int]:
        """The input lines the batch already has results for (a reclaim skips them)."""
        return {r[0] for r in self.db.all("SELECT line FROM batch_results WHERE batch_id = ?", (batch_id,))}

    def results(self, batch_id: str, ok: bool) -> Iterator[tuple[int, dict]]:
        """(line, result) of the batch's output (ok) or error lines, in input order, a page at a time."""
        last = 0
        while True:
            rows = self.db.all("SELECT line, result FROM batch_results WHERE batch_id = ? AND ok = ? AND line > ?"
                               " ORDER BY line LIMIT ?", (batch_id, int(ok), last, RESULT_PAGE))
            for row in rows:
                yield row["line"], json.loads(row["result"])
            if len(rows) < RESULT_PAGE:
                return
            last = rows[-1]["line"]

    def status_in(self, c: sqlite3.Connection, lease: Lease) -> str:
        """Inside a fenced transaction: the batch's status now (the API may have made it cancelling)."""
        return c.execute("SELECT status FROM batches WHERE id = ?", (lease.id,)).fetchone()["status"]

    def hand_back(self, lease: Lease) -> None:
        """Release the batch in the status it is in (in_progress, or cancelling if the API asked
        meanwhile): its worker is shutting down or has other work first, and the next claim carries
        on. The next claim of an in_progress row counts a reclaim (a death, to LeaseQueue.claim), so
        reclaims is set to -1 here: that claim brings it back to 0, since nobody died."""
        with self.fenced(lease) as c:
            self.finish_in(c, lease, self.status_in(c, lease), {})
            c.execute("UPDATE batches SET reclaims = -1 WHERE id = ? AND status = 'in_progress'", (lease.id,))

    def work_waiting(self, tables: tuple[LeaseTable, ...]) -> bool:
        """Whether any of `tables` (jobs, eval runs) has a row a worker could claim now: a batch is
        low-priority work, and its worker hands it back for those."""
        now = self.clock()
        for t in tables:
            marks = ",".join("?" * len(t.claimable))
            if self.db.one(f"SELECT 1 FROM {t.name} WHERE status IN ({marks}) AND (lease_expires_at IS NULL"
                           " OR lease_expires_at < ?) LIMIT 1", (*t.claimable, now)):
                return True
        return False

    def finish_in(self, c: sqlite3.Connection, lease: Lease, status: str, fields: dict) -> None:
        """LeaseQueue.finish_in; a terminal status also gets its timestamp (completed_at...) and the
        batch's webhook event (batch.<status>, OpenAI's WebhookBatch* data {"id"}) in the same transaction."""
        now = self.clock()
        if status in BATCH_TERMINAL:
            fields = {STATUS_AT[status]: now, **fields}
        super().finish_in(c, lease, status, fields)
        if status in BATCH_TERMINAL:
            project_id = c.execute("SELECT project_id FROM batches WHERE id = ?", (lease.id,)).fetchone()[0]
            webhooks.enqueue(c, project_id, f"batch.{status}", {"id": lease.id}, now=now)
