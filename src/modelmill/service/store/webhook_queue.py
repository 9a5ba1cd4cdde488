"""Webhook deliveries on the lease queue (store/lease.py): the writes a worker makes to a delivery it holds.

A delivery is claimable when it is pending (or sending: its worker died mid-attempt, a reclaim),
no live lease holds it, and its next_attempt_at has come (LeaseTable.ready_column: the retry
backoff). The worker marks it sending, makes one HTTP attempt, then records the attempt and the
outcome in one fenced transaction: delivered, failed (retries exhausted), or pending again with
the next attempt's time, which releases the lease. A worker killed mid-attempt leaves the row
sending under a lease that runs out; the next claim sends it again (at least once: the receiver
dedupes on the webhook-id header).
"""

from __future__ import annotations

import time

from modelmill.service.store.db import Database
from modelmill.service.store.lease import Lease, LeaseQueue, LeaseTable
from modelmill.service.store.text import clean

WEBHOOK_DELIVERIES = LeaseTable(
    name="webhook_deliveries", what="webhook delivery", claimable=("pending", "sending"), running="sending",
    terminal=("delivered", "failed"),
    writable=frozenset({"status", "next_attempt_at", "last_status_code", "last_error", "finished_at",
                        "requested_action"}),
    ready_column="next_attempt_at")


class DeliveryQueue(LeaseQueue):
    def __init__(self, db: Database, lease_seconds: float, *, clock=time.time):
        super().__init__(db, WEBHOOK_DELIVERIES, lease_seconds, clock=clock)

    def start(self, lease: Lease) -> None:
        """Mark the delivery sending (a claim of a sending row later means this attempt's worker died)."""
        self.update(lease, status="sending")

    def record_attempt(self, lease: Lease, *, started_at: float, duration_ms: int, status_code: int | None,
                       error: str | None, outcome: str, next_attempt_at: float | None = None) -> None:
        """The attempt's row and the delivery's outcome, in one fenced transaction: `outcome` is
        "delivered", "failed" (given up), or "pending" with `next_attempt_at` (retry then)."""
        fields = {"last_status_code": status_code, "last_error": error}
        if outcome == "pending":
            fields["next_attempt_at"] = next_attempt_at
        with self.fenced(lease) as c:
            c.execute("INSERT INTO webhook_attempts (delivery_id, started_at, duration_ms, status_code, error)"
                      " VALUES (?, ?, ?, ?, ?)", (lease.id, started_at, duration_ms, status_code, clean(error)))
            self.finish_in(c, lease, outcome, fields)

    def next_due(self) -> float | None:
        """The earliest time a delivery becomes claimable (its backoff over, or its dead worker's lease
        run out), None when none is waiting: an idle dispatcher sleeps until then without taking the
        write lock a claim takes."""
        row = self.db.one("SELECT MIN(CASE WHEN lease_expires_at IS NOT NULL AND lease_expires_at > next_attempt_at"
                          " THEN lease_expires_at ELSE next_attempt_at END) AS due FROM webhook_deliveries"
                          " WHERE status IN ('pending', 'sending')")
        return None if row is None or row["due"] is None else float(row["due"])
