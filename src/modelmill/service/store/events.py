"""A job's events (messages and metrics) and checkpoints. Lists come newest first, as OpenAI's do."""

from __future__ import annotations

import sqlite3
import time

from modelmill import errors
from modelmill.service.store.ids import new_id
from modelmill.service.store.db import Database
from modelmill.service.store.pagination import page_rows
from modelmill.service.store.records import CheckpointRecord, EventRecord, Page, from_row, to_json
from modelmill.service.store.text import clean

EVENT_LEVELS = ("info", "warn", "error")
EVENT_TYPES = ("message", "metrics")


def insert_event(c: sqlite3.Connection, job_id: str, level: str, message: str, *, type: str = "message",
                 data: dict | None = None) -> str:
    """Insert one event on connection `c` (inside the caller's transaction, if any)."""
    if level not in EVENT_LEVELS:
        level = "info"
    event_id = new_id("ftevent-")
    c.execute("INSERT INTO events (id, job_id, created_at, level, type, message, data)"
              " VALUES (?, ?, ?, ?, ?, ?, ?)",
              (event_id, job_id, time.time(), level, type, clean(message), to_json(clean(data))))
    return event_id


class EventRepo:
    def __init__(self, db: Database):
        self.db = db

    def add(self, job_id: str, level: str, message: str, *, type: str = "message",
            data: dict | None = None) -> str:
        """An unfenced event (the API's own: created, cancel requested...). Workers use the queue."""
        return insert_event(self.db.conn(), job_id, level, message, type=type, data=data)

    def list(self, job_id: str, *, after: str | None = None, limit: int = 20) -> Page[EventRecord]:
        rows, more = page_rows(self.db, "events", ["job_id = ?"], [job_id], after=after, limit=limit,
                               descending=True, cursor_where=(["job_id = ?"], [job_id]))
        return Page([from_row(EventRecord, r) for r in rows], more)

    def all_for(self, job_id: str, *, type: str | None = None) -> list[EventRecord]:
        """Every event of a job, oldest first (for result files and tests)."""
        sql, params = "SELECT * FROM events WHERE job_id = ?", [job_id]
        if type:
            sql, params = sql + " AND type = ?", params + [type]
        return [from_row(EventRecord, r) for r in self.db.all(sql + " ORDER BY seq", params)]


class CheckpointRepo:
    def __init__(self, db: Database):
        self.db = db

    def list(self, job_id: str, *, after: str | None = None, limit: int = 10) -> Page[CheckpointRecord]:
        rows, more = page_rows(self.db, "checkpoints", ["job_id = ?"], [job_id], after=after, limit=limit,
                               descending=True, cursor_where=(["job_id = ?"], [job_id]))
        return Page([from_row(CheckpointRecord, r) for r in rows], more)

    def all_for(self, job_id: str) -> list[CheckpointRecord]:
        rows = self.db.all("SELECT * FROM checkpoints WHERE job_id = ? ORDER BY step_number", (job_id,))
        return [from_row(CheckpointRecord, r) for r in rows]

    def by_model_name(self, name: str) -> CheckpointRecord | None:
        row = self.db.one("SELECT * FROM checkpoints WHERE fine_tuned_model_checkpoint = ?", (name,))
        return None if row is None else from_row(CheckpointRecord, row)

    def all_models(self) -> list[CheckpointRecord]:
        return [from_row(CheckpointRecord, r) for r in self.db.all("SELECT * FROM checkpoints ORDER BY seq")]

    def get(self, checkpoint_id: str) -> CheckpointRecord:
        row = self.db.one("SELECT * FROM checkpoints WHERE id = ?", (checkpoint_id,))
        if row is None:
            raise errors.NotFoundError(f"No such checkpoint: {checkpoint_id}", param="checkpoint_id")
        return from_row(CheckpointRecord, row)
