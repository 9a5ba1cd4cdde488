"""Webhooks as the store sees them: endpoints per project, the outbox, deliveries and their attempts.

enqueue(c, project_id, event_type, data) writes, inside the caller's transaction `c`, one event
(its body exactly as it will be sent) and one delivery per endpoint of the project that wants that
event type. The rows commit with the state change they announce, or not at all (the outbox
pattern): a crash between "the job ended" and "tell the receiver" can neither lose the event nor
announce a change that rolled back. Workers then claim deliveries on the lease queue
(webhook_queue.py) and send them, at least once (service/webhooks/outbox.py).

Terminal transitions announce themselves through LeaseTable.on_terminal (store/lease.py):
job_finished and eval_run_finished below are the hooks of the jobs and eval_runs tables, called
by the lease holder's finish and by the API's take-over (cancel) alike, so every route to a
terminal status writes its event exactly once, in that route's transaction.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass

from modelmill import errors
from modelmill.service.store.ids import new_id
from modelmill.service.store.db import Database
from modelmill.service.store.records import in_project

# Every event type OpenAI's spec defines a Webhook* schema for (../shared/spec: WebhookBatchCancelled ...).
EVENT_TYPES = (
    "batch.cancelled", "batch.completed", "batch.expired", "batch.failed",
    "eval.run.canceled", "eval.run.failed", "eval.run.succeeded",
    "fine_tuning.job.cancelled", "fine_tuning.job.failed", "fine_tuning.job.succeeded",
    "response.cancelled", "response.completed", "response.failed", "response.incomplete",
)
# A terminal status -> the event announcing it. An eval run ends "completed"; OpenAI's event says succeeded.
JOB_EVENTS = {"succeeded": "fine_tuning.job.succeeded", "failed": "fine_tuning.job.failed",
              "cancelled": "fine_tuning.job.cancelled"}
RUN_EVENTS = {"completed": "eval.run.succeeded", "failed": "eval.run.failed", "canceled": "eval.run.canceled"}
DELIVERY_STATUSES = ("pending", "sending", "delivered", "failed")


@dataclass(frozen=True)
class EndpointRecord:
    id: str
    project_id: str
    url: str
    events: list[str] | None  # None = every event type
    secret: str
    created_at: float


@dataclass(frozen=True)
class DeliveryRecord:
    id: str
    event_id: str
    event_type: str
    endpoint_id: str
    url: str
    status: str
    attempts: int
    next_attempt_at: float
    last_status_code: int | None
    last_error: str | None
    created_at: float
    finished_at: float | None


@dataclass(frozen=True)
class AttemptRecord:
    started_at: float
    duration_ms: int
    status_code: int | None
    error: str | None


@dataclass(frozen=True)
class Outgoing:
    """What one delivery sends: the event body (bytes as stored), where, and the signing secret."""

    delivery_id: str
    event_id: str
    event_created_at: float
    url: str
    secret: str
    body: str


# -- the outbox ------------------------------------------------------------------------------

def enqueue(c: sqlite3.Connection, project_id: str, event_type: str, data: dict, *,
            now: float | None = None) -> str | None:
    """Inside transaction `c`: record event `event_type` (body {"id": "evt_...", "object": "event",
    "created_at", "type", "data"}, OpenAI's Webhook* shape) and a pending delivery for each endpoint of
    `project_id` that wants it. Returns the event id, or None when no endpoint wants the event (then
    nothing is written). `now`: the store's clock (Store.clock), else this machine's."""
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown webhook event type {event_type!r}")
    rows = c.execute("SELECT id, events FROM webhook_endpoints WHERE project_id = ? ORDER BY seq",
                     (project_id,)).fetchall()
    wanted = [r["id"] for r in rows if r["events"] is None or event_type in json.loads(r["events"])]
    if not wanted:
        return None
    now = time.time() if now is None else now
    event_id = new_id("evt_")
    body = json.dumps({"id": event_id, "object": "event", "created_at": int(now), "type": event_type,
                       "data": data}, separators=(",", ":"))
    c.execute("INSERT INTO webhook_events (id, project_id, type, created_at, payload) VALUES (?, ?, ?, ?, ?)",
              (event_id, project_id, event_type, now, body))
    for endpoint_id in wanted:
        c.execute("INSERT INTO webhook_deliveries (id, event_id, endpoint_id, project_id, status, next_attempt_at,"
                  " created_at, updated_at) VALUES (?, ?, ?, ?, 'pending', ?, ?, ?)",
                  (new_id("whdel_"), event_id, endpoint_id, project_id, now, now, now))
    _wake_dispatchers(c)
    return event_id


def _wake_dispatchers(c) -> None:
    """Wake idle delivery threads (service/webhooks/outbox.Dispatcher waits on Database.wait_for_change) when
    `c` commits. SQLite's data_version moves with any commit by itself; Postgres needs a NOTIFY on the
    channel its listener follows (pg.CHANNEL), which the database sends at commit (none on rollback).
    Sent here, not by a trigger, so that the deliveries' own retries and claims wake nobody."""
    if getattr(c, "dialect", "sqlite") == "postgres":
        c.execute("SELECT pg_notify(?, ?)", ("modelmill_work", "webhook_deliveries"))


def job_finished(c: sqlite3.Connection, job_id: str, status: str, now: float) -> None:
    """LeaseTable.on_terminal of the jobs table: fine_tuning.job.<status>."""
    row = c.execute("SELECT project_id FROM jobs WHERE id = ?", (job_id,)).fetchone()
    if row is not None and status in JOB_EVENTS:
        enqueue(c, row["project_id"], JOB_EVENTS[status], {"id": job_id}, now=now)


def eval_run_finished(c: sqlite3.Connection, run_id: str, status: str, now: float) -> None:
    """LeaseTable.on_terminal of the eval_runs table: eval.run.succeeded / failed / canceled."""
    row = c.execute("SELECT project_id FROM eval_runs WHERE id = ?", (run_id,)).fetchone()
    if row is not None and status in RUN_EVENTS:
        enqueue(c, row["project_id"], RUN_EVENTS[status], {"id": run_id}, now=now)


# -- endpoints and what happened to their deliveries ------------------------------------------

class WebhookRepo:
    def __init__(self, db: Database, clock=time.time):
        self.db = db
        self.clock = clock

    def create_endpoint(self, project_id: str, url: str, events: list[str] | None, secret: str) -> EndpointRecord:
        """A new endpoint (url and events already validated by service/webhooks/outbox.py)."""
        endpoint_id = new_id("whep_")
        self.db.execute("INSERT INTO webhook_endpoints (id, project_id, url, events, secret, created_at)"
                        " VALUES (?, ?, ?, ?, ?, ?)",
                        (endpoint_id, project_id, url, None if events is None else json.dumps(events), secret,
                         self.clock()))
        return self.get_endpoint(endpoint_id)

    def get_endpoint(self, endpoint_id: str, *, project_id: str | None = None) -> EndpointRecord:
        sql, params = in_project("SELECT * FROM webhook_endpoints WHERE id = ?", [endpoint_id], project_id)
        row = self.db.one(sql, params)
        if row is None:
            raise errors.NotFoundError(f"No such webhook endpoint: {endpoint_id}", param="webhook_endpoint_id")
        return _endpoint(row)

    def list_endpoints(self, *, project_id: str | None = None) -> list[EndpointRecord]:
        if project_id is None:
            rows = self.db.all("SELECT * FROM webhook_endpoints ORDER BY seq")
        else:
            rows = self.db.all("SELECT * FROM webhook_endpoints WHERE project_id = ? ORDER BY seq", (project_id,))
        return [_endpoint(r) for r in rows]

    def delete_endpoint(self, endpoint_id: str, *, project_id: str | None = None) -> None:
        """Delete the endpoint with its deliveries and their attempts (a delivery in flight loses its
        lease and records nothing more)."""
        self.get_endpoint(endpoint_id, project_id=project_id)
        with self.db.transaction() as c:
            c.execute("DELETE FROM webhook_deliveries WHERE endpoint_id = ?", (endpoint_id,))
            c.execute("DELETE FROM webhook_endpoints WHERE id = ?", (endpoint_id,))

    def deliveries(self, *, project_id: str | None = None, endpoint_id: str | None = None,
                   limit: int = 100) -> list[DeliveryRecord]:
        """The newest deliveries first (of one project / endpoint, when given)."""
        where, params = [], []
        if project_id is not None:
            where, params = where + ["d.project_id = ?"], params + [project_id]
        if endpoint_id is not None:
            where, params = where + ["d.endpoint_id = ?"], params + [endpoint_id]
        sql = ("SELECT d.*, e.type AS event_type, w.url AS url FROM webhook_deliveries d"
               " JOIN webhook_events e ON e.id = d.event_id JOIN webhook_endpoints w ON w.id = d.endpoint_id"
               + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY d.seq DESC LIMIT ?")
        return [_delivery(r) for r in self.db.all(sql, (*params, limit))]

    def attempts(self, delivery_id: str) -> list[AttemptRecord]:
        rows = self.db.all("SELECT started_at, duration_ms, status_code, error FROM webhook_attempts"
                           " WHERE delivery_id = ? ORDER BY seq", (delivery_id,))
        return [AttemptRecord(r["started_at"], r["duration_ms"], r["status_code"], r["error"]) for r in rows]

    def outgoing(self, delivery_id: str) -> Outgoing | None:
        """What delivery `delivery_id` sends; None if it (or its endpoint) was deleted."""
        row = self.db.one("SELECT d.id, d.event_id, e.created_at, e.payload, w.url, w.secret"
                          " FROM webhook_deliveries d JOIN webhook_events e ON e.id = d.event_id"
                          " JOIN webhook_endpoints w ON w.id = d.endpoint_id WHERE d.id = ?", (delivery_id,))
        if row is None:
            return None
        return Outgoing(row["id"], row["event_id"], row["created_at"], row["url"], row["secret"], row["payload"])

    def events(self, *, project_id: str | None = None, limit: int = 100) -> list[dict]:
        """The newest events' bodies first (as sent), of one project when given."""
        sql, params = "SELECT payload FROM webhook_events", []
        if project_id is not None:
            sql, params = sql + " WHERE project_id = ?", [project_id]
        return [json.loads(r["payload"]) for r in self.db.all(sql + " ORDER BY seq DESC LIMIT ?", (*params, limit))]


def _endpoint(row) -> EndpointRecord:
    return EndpointRecord(row["id"], row["project_id"], row["url"],
                          None if row["events"] is None else json.loads(row["events"]), row["secret"],
                          row["created_at"])


def _delivery(row) -> DeliveryRecord:
    return DeliveryRecord(row["id"], row["event_id"], row["event_type"], row["endpoint_id"], row["url"],
                          row["status"], row["attempts"], row["next_attempt_at"], row["last_status_code"],
                          row["last_error"], row["created_at"], row["finished_at"])
