"""Eval runs on the durable worker: leases and fencing, cancel between batches, a dead
worker's run continued by the next one (skipping done items), shutdown handing a run back."""

from __future__ import annotations

import threading

import pytest

from modelmill import errors
from modelmill.service.evals import runner
from modelmill.service.store import EvalRunQueue
from modelmill.service.store.evals import NewRun
from modelmill.service.worker.loop import Worker

EXACT = {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}", "reference": "{{item.label}}",
         "operation": "eq"}


def make_run(store, n: int) -> str:
    ev = store.evals.create("e", {"type": "custom", "item_schema": {"type": "object"}, "include_sample_schema": False},
                            [EXACT], None)
    content = [{"item": {"label": str(i)}, "sample": {"output_text": str(i) if i % 2 == 0 else "no"}}
               for i in range(n)]
    return store.evals.create_run(NewRun(ev.id, "r", {"type": "jsonl", "source": {
        "type": "file_content", "content": content}})).id


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_claims_once_and_fences_a_stale_worker(store):
    run_id = make_run(store, 2)
    clock = Clock()
    queue = store.eval_run_queue(lease_seconds=10, clock=clock)
    first = queue.claim("w1")
    assert first.id == run_id and first.attempt == 1 and first.claimed_status == "queued"
    assert queue.claim("w2") is None
    queue.start(first, 2)
    clock.now += 11  # w1 stopped heartbeating
    second = queue.claim("w2")
    assert second.id == run_id and second.attempt == 2 and second.token == first.token + 1
    assert store.evals.run_by_id(run_id).reclaims == 1
    with pytest.raises(errors.FencedOutError):
        queue.finish(first, "completed")
    with pytest.raises(errors.FencedOutError):
        queue.heartbeat(first)
    queue.finish(second, "completed")
    assert store.evals.run_by_id(run_id).status == "completed"
    assert queue.claim("w3") is None


def test_cancel_of_an_unclaimed_run_is_immediate_and_fences(store):
    run_id = make_run(store, 2)
    queue = store.eval_run_queue(lease_seconds=10)
    run = store.evals.run_by_id(run_id)
    assert store.evals.cancel_run(run.eval_id, run_id).status == "canceled"
    assert queue.claim("w") is None
    with pytest.raises(errors.ConflictError):
        store.evals.cancel_run(run.eval_id, run_id)


def test_cancel_mid_run_stops_between_batches(store, settings, monkeypatch):
    monkeypatch.setattr(runner, "EVAL_BATCH", 2)
    run_id = make_run(store, 10)
    eval_id = store.evals.run_by_id(run_id).eval_id
    original = EvalRunQueue.record_items

    def record_then_cancel(self, lease, *args):
        original(self, lease, *args)
        if store.evals.run_by_id(run_id).result_counts["total"] == 2:
            assert store.evals.cancel_run(eval_id, run_id).requested_action == "cancel"  # leased: a request

    monkeypatch.setattr(EvalRunQueue, "record_items", record_then_cancel)
    assert Worker(settings, store).run_once() == run_id
    run = store.evals.run_by_id(run_id)
    assert run.status == "canceled" and run.lease_owner is None and run.finished_at is not None
    assert run.result_counts["total"] == 2 and len(store.evals.all_items(run_id)) == 2


class WorkerDied(BaseException):
    """Stands for SIGKILL: nothing in the worker catches it."""


def test_a_dead_workers_run_is_continued_without_redoing_items(store, settings, monkeypatch):
    monkeypatch.setattr(runner, "EVAL_BATCH", 2)
    run_id = make_run(store, 7)
    original = EvalRunQueue.record_items
    calls = []

    def die_on_second_batch(self, lease, *args):
        calls.append(lease.owner)
        if len(calls) == 2:
            raise WorkerDied()
        original(self, lease, *args)

    monkeypatch.setattr(EvalRunQueue, "record_items", die_on_second_batch)
    with pytest.raises(WorkerDied):
        Worker(settings, store, worker_id="dead").run_once()
    run = store.evals.run_by_id(run_id)
    assert run.status == "in_progress" and run.lease_owner == "dead" and run.result_counts["total"] == 2

    store.db.execute("UPDATE eval_runs SET lease_expires_at = 0 WHERE id = ?", (run_id,))  # the lease runs out
    monkeypatch.setattr(EvalRunQueue, "record_items", original)
    assert Worker(settings, store, worker_id="next").run_once() == run_id
    run = store.evals.run_by_id(run_id)
    assert run.status == "completed" and run.reclaims == 1 and run.attempts == 2
    items = store.evals.all_items(run_id)
    assert [i.datasource_item_id for i in items] == list(range(7))
    assert run.result_counts == {"total": 7, "errored": 0, "failed": 3, "passed": 4}
    assert run.per_testing_criteria_results == [{"testing_criteria": "exact", "passed": 4, "failed": 3}]


def test_worker_shutdown_hands_the_run_back(store, settings, monkeypatch):
    monkeypatch.setattr(runner, "EVAL_BATCH", 2)
    run_id = make_run(store, 6)
    stop = threading.Event()
    original = EvalRunQueue.record_items

    def record_then_stop(self, lease, *args):
        original(self, lease, *args)
        stop.set()

    monkeypatch.setattr(EvalRunQueue, "record_items", record_then_stop)
    assert Worker(settings, store, stop_event=stop).run_once() == run_id
    run = store.evals.run_by_id(run_id)
    assert run.status == "queued" and run.lease_owner is None and run.result_counts["total"] == 2
    monkeypatch.setattr(EvalRunQueue, "record_items", original)
    assert Worker(settings, store).run_once() == run_id
    assert store.evals.run_by_id(run_id).result_counts["total"] == 6


def test_a_cancel_that_lands_while_the_run_is_handed_back_ends_it(store):
    """The runner looked at requested_action, saw nothing, and hands the run back (shutdown); a cancel
    stored in between must end the run, not be cleared with the lease and the run re-queued."""
    run_id = make_run(store, 2)
    queue = store.eval_run_queue(lease_seconds=10)
    lease = queue.claim("w")
    run = store.evals.run_by_id(run_id)
    assert store.evals.cancel_run(run.eval_id, run_id) is not None  # the lease is live: stored as a request
    assert queue.requested_action(lease) == "cancel"
    queue.finish(lease, "queued")
    assert store.evals.run_by_id(run_id).status == "canceled"
    assert queue.claim("w2") is None


def test_training_jobs_come_before_eval_runs(store, settings, client):
    from tests.service.conftest import create_job, training_jsonl, upload

    run_id = make_run(store, 1)
    f = upload(client, training_jsonl(2))  # too few lines: the job fails fast in validation
    job = create_job(client, f["id"])
    worker = Worker(settings, store)
    assert worker.run_once() == job["id"]
    assert worker.run_once() == run_id
    assert worker.run_once() is None


def test_a_run_that_keeps_killing_workers_is_failed(store, settings):
    run_id = make_run(store, 1)
    store.db.execute("UPDATE eval_runs SET status = 'in_progress', reclaims = ? WHERE id = ?",
                     (runner.MAX_RECLAIMS, run_id))
    Worker(settings, store).run_once()
    run = store.evals.run_by_id(run_id)
    assert run.status == "failed" and run.error["code"] == "worker_lost"


def test_passed_rule():
    from modelmill.ml.graders import GradeResult

    assert runner.passed({"type": "python"}, GradeResult(reward=0.5)) is True
    assert runner.passed({"type": "python", "pass_threshold": 0.8}, GradeResult(reward=0.5)) is False
    assert runner.passed({"type": "score_model", "range": [0, 10]}, GradeResult(reward=4.0)) is False
    assert runner.passed({"type": "label_model"}, GradeResult(reward=0.0, passed=True)) is True
    errored = GradeResult(reward=1.0)
    errored.errors["other_error"] = True
    assert runner.passed({"type": "python"}, errored) is False
