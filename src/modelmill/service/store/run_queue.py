"""Eval runs on the lease queue (store/lease.py): the writes a worker makes to a run it holds.

A run is claimable when it is queued or in_progress and no live lease holds it, so a run whose
worker died is picked up again once the lease runs out (a claim of an in_progress run counts a
reclaim), and the new worker skips the items already written. Every write (the start, output
items with the run's counters, the outcome) is one fenced transaction; a stale worker gets
errors.FencedOutError and writes nothing. A deleted run (or eval) fences out its worker too.
The API side of the same rows is store/evals.py.
"""

from __future__ import annotations

import time

from modelmill.service.store import webhooks
from modelmill.service.store.db import Database
from modelmill.service.store.evals import RUN_ACTIVE, RUN_TERMINAL
from modelmill.service.store.lease import Lease, LeaseQueue, LeaseTable
from modelmill.service.store.records import to_json

EVAL_RUNS = LeaseTable(
    name="eval_runs", what="eval run", claimable=RUN_ACTIVE, running="in_progress", terminal=RUN_TERMINAL,
    writable=frozenset({"status", "error", "finished_at", "requested_action"}), json_columns=frozenset({"error"}),
    on_terminal=webhooks.eval_run_finished)


class EvalRunQueue(LeaseQueue):
    def __init__(self, db: Database, lease_seconds: float, *, clock=time.time):
        super().__init__(db, EVAL_RUNS, lease_seconds, clock=clock)

    def start(self, lease: Lease, total_items: int) -> None:
        """Mark the run in_progress with its item count (started_at stays that of its first attempt)."""
        now = self.clock()
        with self.fenced(lease) as c:
            c.execute("UPDATE eval_runs SET status = 'in_progress', total_items = ?,"
                      " started_at = COALESCE(started_at, ?), updated_at = ? WHERE id = ?",
                      (total_items, now, now, lease.id))

    def record_items(self, lease: Lease, items: list[dict], result_counts: dict, per_criteria: list[dict],
                     per_model_usage: list[dict]) -> None:
        """Insert a batch of output items and the run's counters (totals so far), atomically."""
        now = self.clock()
        with self.fenced(lease) as c:
            for it in items:  # eval_id: the run's own
                c.execute("INSERT INTO eval_output_items (id, run_id, eval_id, created_at, datasource_item_id,"
                          " status, datasource_item, results, sample)"
                          " SELECT ?, id, eval_id, ?, ?, ?, ?, ?, ? FROM eval_runs WHERE id = ?",
                          (it["id"], now, it["datasource_item_id"], it["status"], to_json(it["datasource_item"]),
                           to_json(it["results"]), to_json(it["sample"]), lease.id))
            c.execute("UPDATE eval_runs SET result_counts = ?, per_testing_criteria_results = ?,"
                      " per_model_usage = ?, updated_at = ? WHERE id = ?",
                      (to_json(result_counts), to_json(per_criteria), to_json(per_model_usage), now, lease.id))

    def done_item_ids(self, run_id: str) -> set[int]:
        """The data-source item indexes the run already has output items for (a reclaim skips them)."""
        return {r[0] for r in self.db.all("SELECT datasource_item_id FROM eval_output_items WHERE run_id = ?",
                                          (run_id,))}

    def finish(self, lease: Lease, status: str, error: dict | None = None) -> None:
        """Write the outcome and release the lease. `status` is terminal, or "queued" to hand the
        run back (the worker is shutting down); a hand-back carries out a cancel the user asked for
        since the runner's last look, which finish_in would otherwise clear with the lease (the same
        rule as JobQueue.finish)."""
        with self.fenced(lease) as c:
            if status == "queued" and c.execute(f"SELECT requested_action FROM {self.table.name} WHERE id = ?",
                                                (lease.id,)).fetchone()[0] == "cancel":
                status = "canceled"
            self.finish_in(c, lease, status, {"error": error})
