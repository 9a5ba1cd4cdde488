"""The lease queue: durable claims with a heartbeat and fencing, for any table of background work.

One LeaseQueue, configured by a LeaseTable, serves every kind of background work a worker
claims: fine-tuning jobs (store/job_queue.py), eval runs (store/run_queue.py), batches and webhook
deliveries (store/webhook_queue.py). The table needs the columns id, seq, status,
requested_action, lease_owner, lease_token, lease_expires_at, attempts, reclaims and updated_at.

- claim: the oldest row (by seq) whose status is claimable and whose lease is absent or
  expired. The claim writes lease_owner (the worker), lease_token (incremented on every
  claim: the fencing token) and lease_expires_at, and counts the attempt. A row claimed in
  its table's `running` status was being worked on when its worker died (SIGKILL, power
  loss): that claim also counts a reclaim.
- heartbeat: the holder extends the lease; FencedOutError if it was lost.
- fenced: every write the holder makes runs in one transaction that first checks
  `lease_owner = ? AND lease_token = ?`. If another worker has claimed the row since, or the
  API has taken it over (cancelling or pausing an unleased row bumps the token), the check
  fails, nothing is written and errors.FencedOutError is raised: a stale worker can never
  overwrite newer state. A deleted row fences its worker out the same way.
- requested_action: what the user asked of a leased row ("cancel", "pause"); the API never
  writes a row a live worker holds, it asks.
- finish: the outcome and the release of the lease, in one fenced transaction. The token
  stays, so the released claim's token is never valid again.

Time comes from the injected `clock`: the store's (Store.clock: the database's clock on Postgres,
so workers on several machines agree on expiry), or one a test moves.
"""

from __future__ import annotations

import json
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

from modelmill import errors
from modelmill.service.store.db import Database
from modelmill.service.store.text import clean


@dataclass(frozen=True)
class LeaseTable:
    """Which table a LeaseQueue claims rows of, and how that table's statuses read."""

    name: str  # the table, e.g. "jobs"
    what: str  # how messages name one row, e.g. "job", "eval run"
    claimable: tuple[str, ...]  # statuses a worker may claim a row in (when no live lease holds it)
    running: str  # the status of a row being worked on: claiming it again means its worker died (a reclaim)
    terminal: tuple[str, ...]  # outcomes that set finished_at
    writable: frozenset[str]  # columns a lease holder may write through write()/finish()
    json_columns: frozenset[str] = frozenset()  # writable columns stored as JSON text
    # A column holding the earliest time a row may be claimed (a webhook delivery's retry backoff);
    # None = claimable at once.
    ready_column: str | None = None
    # Called inside the transaction that moves a row into a terminal status, by whichever path
    # (finish_in here, or the API's take-over): on_terminal(c, row_id, status, now). Webhooks use it
    # to write their outbox row in the same transaction (store/webhooks.py). None = nothing to do.
    on_terminal: Callable[[sqlite3.Connection, str, str, float], None] | None = None


@dataclass(frozen=True)
class Lease:
    """A worker's claim on one row. `token` is the fencing token of this claim."""

    id: str  # the claimed row's id (a job id, an eval run id)
    owner: str  # the worker's id
    token: int
    attempt: int  # 1 for the first claim of this row, 2+ when it was claimed before
    claimed_status: str  # the row's status when claimed (the table's `running` one means a reclaim)


class LeaseQueue:
    def __init__(self, db: Database, table: LeaseTable, lease_seconds: float, *, clock=time.time):
        self.db = db
        self.table = table
        self.lease_seconds = lease_seconds  # how long a claim or a heartbeat holds the row
        self.clock = clock

    # -- claiming ----------------------------------------------------------------------

    def claim(self, owner: str, row_id: str | None = None) -> Lease | None:
        """Claim the oldest claimable row for `owner` (only `row_id`, if given); None if there is none."""
        t, now = self.table, self.clock()
        marks = ",".join("?" * len(t.claimable))
        sql = (f"SELECT id, status, lease_token, attempts FROM {t.name} WHERE status IN ({marks})"
               " AND (lease_expires_at IS NULL OR lease_expires_at < ?)")
        params: list = [*t.claimable, now]
        if t.ready_column:
            sql, params = sql + f" AND {t.ready_column} <= ?", params + [now]
        if row_id is not None:
            sql, params = sql + " AND id = ?", params + [row_id]
        with self.db.transaction() as c:
            # claim_lock: on Postgres, lock the row taken and skip rows other claims hold (db.py, pg.py)
            row = c.execute(sql + " ORDER BY seq LIMIT 1" + self.db.claim_lock, params).fetchone()
            if row is None:
                return None
            token = row["lease_token"] + 1
            c.execute(f"UPDATE {t.name} SET lease_owner = ?, lease_token = ?, lease_expires_at = ?,"
                      " attempts = attempts + 1, reclaims = reclaims + ?, updated_at = ? WHERE id = ?",
                      (owner, token, now + self.lease_seconds, int(row["status"] == t.running), now, row["id"]))
        return Lease(row["id"], owner, token, row["attempts"] + 1, row["status"])

    def heartbeat(self, lease: Lease) -> None:
        """Extend the lease; raises FencedOutError if it was lost."""
        cur = self.db.execute(f"UPDATE {self.table.name} SET lease_expires_at = ? WHERE id = ? AND lease_owner = ?"
                              " AND lease_token = ?", (self.clock() + self.lease_seconds, lease.id, lease.owner,
                                                       lease.token))
        if cur.rowcount == 0:
            raise errors.FencedOutError(f"Lost the lease on {self.table.what} {lease.id}")

    # -- fenced writes -----------------------------------------------------------------

    @contextmanager
    def fenced(self, lease: Lease) -> Iterator[sqlite3.Connection]:
        """A write transaction that proceeds only while `lease` is still the row's claim."""
        with self.db.transaction() as c:
            # row_lock: on Postgres (READ COMMITTED) the check must hold until commit, so lock the row
            row = c.execute(f"SELECT 1 FROM {self.table.name} WHERE id = ? AND lease_owner = ? AND lease_token = ?"
                            + self.db.row_lock, (lease.id, lease.owner, lease.token)).fetchone()
            if row is None:
                raise errors.FencedOutError(f"{self.table.what.capitalize()} {lease.id} is no longer claimed by"
                                            f" {lease.owner}")
            yield c

    def update(self, lease: Lease, **fields) -> None:
        """Write columns of the leased row (see LeaseTable.writable), fenced."""
        with self.fenced(lease) as c:
            self.write(c, lease, fields)

    def write(self, c: sqlite3.Connection, lease: Lease, fields: dict) -> None:
        """Inside a fenced transaction `c`: set `fields` on the leased row (and its updated_at)."""
        t = self.table
        bad = set(fields) - t.writable
        if bad:
            raise ValueError(f"not writable by a worker: {sorted(bad)}")
        values = [json.dumps(v) if k in t.json_columns and v is not None else v
                  for k, v in clean(fields).items()]  # a grader's hostile error text must not crash the write
        sets = "".join(f"{k} = ?, " for k in fields)
        c.execute(f"UPDATE {t.name} SET {sets}updated_at = ? WHERE id = ?", (*values, self.clock(), lease.id))

    def finish(self, lease: Lease, status: str, **fields) -> None:
        """Write the outcome and release the lease, in one fenced transaction (see finish_in)."""
        with self.fenced(lease) as c:
            self.finish_in(c, lease, status, fields)

    def finish_in(self, c: sqlite3.Connection, lease: Lease, status: str, fields: dict) -> None:
        """Inside a fenced transaction `c`: set `status` (and `fields`), clear requested_action, stamp
        finished_at when the status is terminal, and release the lease. A non-terminal status hands
        the row back (e.g. "queued" when the worker shuts down, "paused")."""
        fields = dict(fields, status=status, requested_action=None)
        if status in self.table.terminal:
            fields.setdefault("finished_at", self.clock())
            if self.table.on_terminal is not None:
                self.table.on_terminal(c, lease.id, status, self.clock())
        self.write(c, lease, fields)
        c.execute(f"UPDATE {self.table.name} SET lease_owner = NULL, lease_expires_at = NULL WHERE id = ?",
                  (lease.id,))

    # -- reads -------------------------------------------------------------------------

    def requested_action(self, lease: Lease) -> str | None:
        """What the user asked of the leased row ("cancel" / "pause"), or None.
        Raises FencedOutError if the lease was lost (then the answer no longer matters)."""
        row = self.db.one(f"SELECT requested_action, lease_owner, lease_token FROM {self.table.name} WHERE id = ?",
                          (lease.id,))
        if row is None or row["lease_owner"] != lease.owner or row["lease_token"] != lease.token:
            raise errors.FencedOutError(f"{self.table.what.capitalize()} {lease.id} is no longer claimed by"
                                        f" {lease.owner}")
        return row["requested_action"]

    def data_version(self) -> int:
        """A number that changes whenever another connection commits (Database.data_version): an idle
        worker polls it cheaply and claims as soon as it moves."""
        return self.db.data_version()
