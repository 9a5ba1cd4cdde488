"""Durable eval-run claims: the same lease / heartbeat / fencing story as service/queue.py,
on the eval_runs table.

A run is claimable when it is queued or in_progress and its lease is absent or expired, so a
run whose worker died is picked up again once the lease runs out, and the new worker skips
the items already written. Every write a worker makes (output items with the run's counters,
the outcome) runs in one transaction that first checks the claim; a stale worker gets
errors.FencedOutError and writes nothing. A deleted run (or eval) fences out its worker too.
"""

from __future__ import annotations

import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

from modelmill import errors
from modelmill.service.store import Store
from modelmill.service.store.records import to_json


@dataclass(frozen=True)
class RunLease:
    """A worker's claim on one eval run. `token` is the fencing token of this claim."""

    run_id: str
    eval_id: str
    owner: str
    token: int
    attempt: int  # 1 for the first claim of this run
    claimed_status: str  # the run's status when claimed ("in_progress" means a reclaim)


class EvalRunQueue:
    def __init__(self, store: Store, lease_seconds: float, *, clock=time.time):
        self.store = store
        self.db = store.db
        self.lease_seconds = lease_seconds
        self.clock = clock

    def claim(self, owner: str, run_id: str | None = None) -> RunLease | None:
        """Claim the oldest runnable run (or run `run_id` if it is runnable) for `owner`."""
        now = self.clock()
        sql = ("SELECT id, eval_id, status, lease_token, attempts FROM eval_runs WHERE status IN"
               " ('queued', 'in_progress') AND (lease_expires_at IS NULL OR lease_expires_at < ?)")
        params: list = [now]
        if run_id is not None:
            sql, params = sql + " AND id = ?", params + [run_id]
        with self.db.transaction() as c:
            row = c.execute(sql + " ORDER BY seq LIMIT 1", params).fetchone()
            if row is None:
                return None
            token = row["lease_token"] + 1
            c.execute("UPDATE eval_runs SET lease_owner = ?, lease_token = ?, lease_expires_at = ?,"
                      " attempts = attempts + 1, reclaims = reclaims + ?, updated_at = ? WHERE id = ?",
                      (owner, token, now + self.lease_seconds, int(row["status"] == "in_progress"), now,
                       row["id"]))
        return RunLease(row["id"], row["eval_id"], owner, token, row["attempts"] + 1, row["status"])

    def heartbeat(self, lease: RunLease) -> None:
        cur = self.db.execute("UPDATE eval_runs SET lease_expires_at = ? WHERE id = ? AND lease_owner = ?"
                              " AND lease_token = ?", (self.clock() + self.lease_seconds, lease.run_id,
                                                       lease.owner, lease.token))
        if cur.rowcount == 0:
            raise errors.FencedOutError(f"Lost the lease on eval run {lease.run_id}")

    @contextmanager
    def fenced(self, lease: RunLease) -> Iterator[sqlite3.Connection]:
        with self.db.transaction() as c:
            row = c.execute("SELECT 1 FROM eval_runs WHERE id = ? AND lease_owner = ? AND lease_token = ?",
                            (lease.run_id, lease.owner, lease.token)).fetchone()
            if row is None:
                raise errors.FencedOutError(f"Eval run {lease.run_id} is no longer claimed by {lease.owner}")
            yield c

    def requested_action(self, lease: RunLease) -> str | None:
        row = self.db.one("SELECT requested_action, lease_owner, lease_token FROM eval_runs WHERE id = ?",
                          (lease.run_id,))
        if row is None or row["lease_owner"] != lease.owner or row["lease_token"] != lease.token:
            raise errors.FencedOutError(f"Eval run {lease.run_id} is no longer claimed by {lease.owner}")
        return row["requested_action"]

    def start(self, lease: RunLease, total_items: int) -> None:
        now = self.clock()
        with self.fenced(lease) as c:
            c.execute("UPDATE eval_runs SET status = 'in_progress', total_items = ?,"
                      " started_at = COALESCE(started_at, ?), updated_at = ? WHERE id = ?",
                      (total_items, now, now, lease.run_id))

    def record_items(self, lease: RunLease, items: list[dict], result_counts: dict, per_criteria: list[dict],
                     per_model_usage: list[dict]) -> None:
        """Insert a batch of output items and the run's counters (totals so far), atomically."""
        now = self.clock()
        with self.fenced(lease) as c:
            for it in items:
                c.execute("INSERT INTO eval_output_items (id, run_id, eval_id, created_at, datasource_item_id,"
                          " status, datasource_item, results, sample) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                          (it["id"], lease.run_id, lease.eval_id, now, it["datasource_item_id"], it["status"],
                           to_json(it["datasource_item"]), to_json(it["results"]), to_json(it["sample"])))
            c.execute("UPDATE eval_runs SET result_counts = ?, per_testing_criteria_results = ?,"
                      " per_model_usage = ?, updated_at = ? WHERE id = ?",
                      (to_json(result_counts), to_json(per_criteria), to_json(per_model_usage), now, lease.run_id))

    def done_item_ids(self, run_id: str) -> set[int]:
        return {r[0] for r in self.db.all("SELECT datasource_item_id FROM eval_output_items WHERE run_id = ?",
                                          (run_id,))}

    def finish(self, lease: RunLease, status: str, error: dict | None = None) -> None:
        """Write the outcome and release the lease. `status` is terminal, or "queued" to hand the
        run back (the worker is shutting down)."""
        now = self.clock()
        finished = now if status in ("completed", "failed", "canceled") else None
        with self.fenced(lease) as c:
            c.execute("UPDATE eval_runs SET status = ?, error = ?, finished_at = ?, requested_action = NULL,"
                      " lease_owner = NULL, lease_expires_at = NULL, updated_at = ? WHERE id = ?",
                      (status, to_json(error), finished, now, lease.run_id))
