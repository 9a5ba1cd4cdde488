"""Aggregate reads for GET /metrics (service/core/metrics.py), run at scrape time.

They read the shared store, so the figures are the same whichever API process is scraped and count
the work of every worker, on any machine. Each is one small GROUP BY over indexed status columns.
"""

from __future__ import annotations

from dataclasses import dataclass

from modelmill.service.store.lease import LeaseTable


@dataclass(frozen=True)
class QueueStats:
    waiting: int  # rows a worker could claim now: claimable status, no live lease (and ready, if the table says when)
    oldest_age_s: float  # seconds since the oldest waiting row last changed (0 when none waits)


def jobs_by_status_and_method(db) -> list[tuple[str, str, int]]:
    """(status, method, count) of every fine-tuning job, all projects together."""
    rows = db.all("SELECT status, method_type, COUNT(*) AS n FROM jobs GROUP BY status, method_type")
    return [(r["status"], r["method_type"], int(r["n"])) for r in rows]


def trained_tokens_by_method(db) -> list[tuple[str, int]]:
    """(method, tokens) summed over jobs that recorded trained_tokens (set when a job ends)."""
    rows = db.all("SELECT method_type, COALESCE(SUM(trained_tokens), 0) AS n FROM jobs"
                  " WHERE trained_tokens IS NOT NULL GROUP BY method_type")
    return [(r["method_type"], int(r["n"])) for r in rows]


def queue(db, table: LeaseTable) -> QueueStats:
    """How many rows of a lease table wait for a worker, and for how long the oldest has."""
    now = db.now()
    marks = ",".join("?" for _ in table.claimable)
    where = f"status IN ({marks}) AND (lease_owner IS NULL OR lease_expires_at IS NULL OR lease_expires_at <= ?)"
    params: list = [*table.claimable, now]
    if table.ready_column:  # e.g. a webhook delivery waiting out its retry backoff is not waiting for a worker
        where += f" AND ({table.ready_column} IS NULL OR {table.ready_column} <= ?)"
        params.append(now)
    row = db.one(f"SELECT COUNT(*) AS n, MIN(updated_at) AS oldest FROM {table.name} WHERE {where}", params)
    n = int(row["n"]) if row else 0
    oldest = row["oldest"] if row else None
    return QueueStats(n, max(0.0, now - float(oldest)) if n and oldest is not None else 0.0)
