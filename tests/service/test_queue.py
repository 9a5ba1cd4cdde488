"""The lease queue (store/lease.py), run against both tables it serves (jobs and eval runs): claim
order, fencing tokens, expired-lease reclaims, heartbeats, fenced writes and requested actions; then
the job-specific writes (store/job_queue.py). A stale worker's writes are refused once another holds
the row. Every test runs on SQLite and on Postgres (the `dialect` fixture)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pytest

from modelmill import errors
from modelmill.service.store import EvalRunQueue, JobQueue, LeaseQueue, NewJob
from modelmill.service.store.evals import NewRun
from tests.service.conftest import DIALECTS


@pytest.fixture(params=DIALECTS)
def dialect(request) -> str:
    return request.param


class Clock:
    def __init__(self, t: float = 1_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def add_job(store, job_id: str) -> str:
    store.jobs.create(NewJob(id=job_id, model="modelmill-tiny", base_model="modelmill-tiny", init_adapter=None,
                             training_file="file-x", validation_file=None, suffix=None, seed=0, metadata=None,
                             integrations=None, method_type="supervised",
                             hyperparameters={"n_epochs": "auto", "batch_size": "auto",
                                              "learning_rate_multiplier": "auto"},
                             ft_name=f"ft:modelmill-tiny:o::{job_id}"))
    return job_id


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def queue(store, clock):
    store.jobs.clock = clock  # the API's view of lease expiry uses the same clock
    return JobQueue(store.db, lease_seconds=10, clock=clock)


# -- the generic lease queue, on both tables ----------------------------------------------------------

@dataclass
class Table:
    """One table on the lease queue, as these tests drive it."""

    queue: LeaseQueue
    add: Callable[[], str]  # a new claimable row -> its id
    get: Callable[[str], object]  # the row's record (status, lease_owner, attempts, reclaims, ...)
    cancel: Callable[[str], object]  # the API's cancel of the row
    first_status: str  # a new row's status


def jobs_table(store, clock) -> Table:
    store.jobs.clock = clock
    names = iter(f"ftjob-{i}" for i in range(100))
    return Table(JobQueue(store.db, lease_seconds=10, clock=clock), lambda: add_job(store, next(names)),
                 store.jobs.get, store.jobs.cancel, "validating_files")


def eval_runs_table(store, clock) -> Table:
    store.evals.clock = clock
    ev = store.evals.create("e", {"type": "custom", "item_schema": {"type": "object"}, "include_sample_schema": False},
                            [{"type": "string_check", "name": "s", "input": "a", "reference": "a", "operation": "eq"}],
                            None)

    def add():
        return store.evals.create_run(NewRun(ev.id, "r", {"type": "jsonl", "source": {
            "type": "file_content", "content": [{"item": {}}]}})).id

    return Table(EvalRunQueue(store.db, lease_seconds=10, clock=clock), add, store.evals.run_by_id,
                 lambda run_id: store.evals.cancel_run(ev.id, run_id), "queued")


@pytest.fixture(params=[jobs_table, eval_runs_table], ids=["jobs", "eval_runs"])
def table(request, store, clock) -> Table:
    return request.param(store, clock)


def test_claims_oldest_first_and_never_twice(table):
    a, b = table.add(), table.add()
    first, second = table.queue.claim("w1"), table.queue.claim("w2")
    assert (first.id, second.id) == (a, b)
    assert table.queue.claim("w3") is None
    assert first.attempt == 1 and first.claimed_status == table.first_status and first.token == 1
    assert table.get(a).lease_owner == "w1" and table.get(a).attempts == 1


def test_claim_of_one_row_by_id(table):
    a, b = table.add(), table.add()
    assert table.queue.claim("w1", b).id == b  # not the oldest: the one asked for
    assert table.queue.claim("w2", b) is None  # held
    assert table.queue.claim("w2").id == a


def test_expired_lease_is_reclaimed_with_the_next_token(table, clock):
    row = table.add()
    old = table.queue.claim("w1")
    table.queue.update(old, status=table.queue.table.running)
    clock.t += 5
    table.queue.heartbeat(old)  # renewed: still held at +14
    clock.t += 9
    assert table.queue.claim("w2") is None
    clock.t += 11  # no heartbeat for longer than the lease
    new = table.queue.claim("w2")
    assert new.id == row and new.token == old.token + 1 and new.attempt == 2
    assert new.claimed_status == table.queue.table.running
    assert table.get(row).reclaims == 1  # claimed while running: its worker died


def test_a_lost_lease_fences_every_write_of_its_old_holder(table, clock):
    row = table.add()
    old = table.queue.claim("w1")
    clock.t += 11
    new = table.queue.claim("w2")
    for stale in (lambda: table.queue.heartbeat(old),
                  lambda: table.queue.update(old, status="failed"),
                  lambda: table.queue.finish(old, "failed"),
                  lambda: table.queue.requested_action(old)):
        with pytest.raises(errors.FencedOutError):
            stale()
    with pytest.raises(errors.FencedOutError):
        with table.queue.fenced(old) as c:
            c.execute(f"UPDATE {table.queue.table.name} SET status = 'failed' WHERE id = ?", (row,))
    assert table.get(row).status == table.first_status and table.get(row).lease_owner == "w2"
    table.queue.heartbeat(new)  # the current holder is unaffected
    table.queue.update(new, status=table.queue.table.running)
    assert table.get(row).status == table.queue.table.running


def test_cancel_is_a_request_to_a_live_lease_and_a_takeover_of_a_dead_one(table, clock):
    live, dead = table.add(), table.add()
    held = table.queue.claim("w1", live)
    assert table.queue.requested_action(held) is None
    assert table.cancel(live).requested_action == "cancel"  # a live lease: a request, the worker decides
    assert table.queue.requested_action(held) == "cancel"
    table.queue.finish(held, table.queue.table.terminal[-1])
    done = table.get(live)
    assert done.requested_action is None and done.lease_owner is None and done.finished_at is not None

    gone = table.queue.claim("w2", dead)
    clock.t += 11  # w2 stopped heartbeating
    cancelled = table.cancel(dead)  # nobody holds it: the API cancels it and bumps the token
    assert cancelled.status in table.queue.table.terminal and cancelled.finished_at is not None
    with pytest.raises(errors.FencedOutError):
        table.queue.update(gone, status=table.queue.table.running)
    assert table.queue.claim("w3") is None  # finished rows are never claimed


def test_handing_a_row_back_releases_it_for_the_next_worker(table, clock):
    row = table.add()
    lease = table.queue.claim("w1")
    table.queue.finish(lease, "queued")  # e.g. the worker shuts down
    assert table.get(row).lease_owner is None and table.get(row).finished_at is None
    again = table.queue.claim("w2")  # at once: no lease to wait out
    assert again.id == row and again.token == lease.token + 1 and table.get(row).reclaims == 0
    with pytest.raises(errors.FencedOutError):
        table.queue.heartbeat(lease)  # a released claim's token is never valid again


def test_only_the_tables_worker_columns_are_writable(table):
    table.add()
    lease = table.queue.claim("w1")
    with pytest.raises(ValueError, match="lease_owner"):
        table.queue.update(lease, lease_owner="w9")


def test_data_version_moves_when_another_connection_commits(table, store):
    import threading

    before = table.queue.data_version()
    added = threading.Thread(target=table.add)  # another thread: its own connection
    added.start()
    added.join()
    # SQLite: data_version moved; Postgres: the claimable row's NOTIFY reached this process's listener
    assert table.queue.db.wait_for_change(before, timeout=5)
    assert table.queue.data_version() != before


def test_the_heartbeat_thread_renews_the_lease_and_reports_its_loss(table, store, settings, clock):
    import threading
    import time

    from modelmill.service.core.tasks import TaskContext

    row = table.add()
    lease = table.queue.claim("w1")
    ctx = TaskContext(store, settings, table.queue, lease, threading.Event())
    lost = threading.Event()
    with ctx.heartbeat(lost):
        clock.t += 5
        deadline = time.monotonic() + 10
        while table.get(row).lease_expires_at != clock.t + 10 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert table.get(row).lease_expires_at == clock.t + 10  # renewed from the new time
        table.cancel(row)  # a live lease: only a request, the lease holds
        assert not lost.wait(3 * settings.heartbeat_seconds)
        store.db.execute(f"UPDATE {table.queue.table.name} SET lease_token = lease_token + 1 WHERE id = ?", (row,))
        assert lost.wait(10)  # another claim's token: the next beat is refused
    assert not any(t.name == f"heartbeat-{ctx.what}" for t in threading.enumerate())  # stopped with the block


# -- the job queue's own writes ------------------------------------------------------------------------

def test_every_job_write_is_fenced(store, queue, clock):
    add_job(store, "ftjob-a")
    old = queue.claim("w1")
    queue.update(old, status="running")
    clock.t += 11
    new = queue.claim("w2")
    for stale_write in (lambda: queue.add_event(old, "info", "stale"),
                        lambda: queue.record_step(old, 3, 10, "Step 3/10", {"step": 3}, None),
                        lambda: queue.add_checkpoint(old, 3, store.files.files_dir, {}, "ft:x:ckpt-step-3"),
                        lambda: queue.forget_pruned_checkpoints(old),
                        lambda: queue.finish(old, "succeeded")):
        with pytest.raises(errors.FencedOutError):
            stale_write()
    job = store.jobs.get("ftjob-a")
    assert job.status == "running" and job.lease_owner == "w2"
    assert not any(e.message == "stale" for e in store.events.all_for("ftjob-a"))
    assert store.checkpoints.all_for("ftjob-a") == []

    queue.add_event(new, "info", "fresh")  # the current holder writes fine
    queue.finish(new, "succeeded", message="done")
    job = store.jobs.get("ftjob-a")
    assert job.status == "succeeded" and job.lease_owner is None and job.finished_at == clock.t
    assert [e.message for e in store.events.all_for("ftjob-a")][-2:] == ["fresh", "done"]


def test_finished_job_is_never_claimed_again(store, queue, clock):
    add_job(store, "ftjob-a")
    lease = queue.claim("w1")
    queue.finish(lease, "succeeded")
    clock.t += 1000
    assert queue.claim("w2") is None
    with pytest.raises(errors.FencedOutError):
        queue.update(lease, status="running")  # released: even its own worker is fenced


def test_checkpoint_rows_follow_the_disk(store, queue, tmp_path):
    add_job(store, "ftjob-a")
    lease = queue.claim("w1")
    dirs = [tmp_path / f"step-{n}" for n in (1, 2)]
    for n, d in enumerate(dirs, start=1):
        d.mkdir()
        queue.add_checkpoint(lease, n, d, {"step": n, "train_loss": 1.0 / n}, f"ft:x:ckpt-step-{n}")
    assert [c.step_number for c in store.checkpoints.all_for("ftjob-a")] == [1, 2]
    dirs[0].rmdir()  # pruned by training
    queue.forget_pruned_checkpoints(lease)
    assert [c.step_number for c in store.checkpoints.all_for("ftjob-a")] == [2]
    assert store.checkpoints.by_model_name("ft:x:ckpt-step-2").path == str(dirs[1])


def test_a_checkpoint_resets_the_count_of_worker_losses(store, queue, clock, tmp_path):
    """reclaims counts worker losses since the newest checkpoint: a job that keeps making progress
    survives any number of crashes; one that crashes before every checkpoint is given up on."""
    add_job(store, "ftjob-a")
    lease = queue.claim("w1")
    queue.update(lease, status="running")
    for n in (1, 2):
        clock.t += 11  # the worker died: its lease expires unrenewed
        lease = queue.claim(f"w{n + 1}")
        assert store.jobs.get("ftjob-a").reclaims == n
    queue.add_checkpoint(lease, 4, tmp_path, {}, "ft:x:ckpt-step-4")
    assert store.jobs.get("ftjob-a").reclaims == 0
    clock.t += 11
    queue.claim("w9")
    assert store.jobs.get("ftjob-a").reclaims == 1


def test_worker_gives_up_after_max_worker_losses_in_a_row(store, settings):
    from dataclasses import replace

    from modelmill.service.worker.loop import Worker

    add_job(store, "ftjob-z")
    store.db.execute("UPDATE jobs SET status = 'running', reclaims = 2 WHERE id = 'ftjob-z'")
    Worker(replace(settings, max_worker_losses=2), store).run_once()  # this claim is the 3rd loss in a row
    job = store.jobs.get("ftjob-z")
    assert job.status == "failed" and job.error["code"] == "worker_lost"
    assert "3 times in a row without saving a checkpoint" in job.error["message"]


def test_resumed_steps_replace_the_abandoned_attempts_metrics(store, queue, clock):
    """Issue 17.9: a worker died after step 4; its successor resumed from the checkpoint at step 2
    and trained steps 3 and 4 again. Each step keeps one metrics event: the resumed attempt's."""
    job_id = add_job(store, "ftjob-resume")
    first = queue.claim("w1", job_id)
    for step in (1, 2, 3, 4):
        queue.record_step(first, step, 6, f"Step {step}/6", {"step": step, "train_loss": 1.0, "attempt": 1}, None)
    clock.t += 60  # w1 is gone; its lease runs out
    second = queue.claim("w2", job_id)
    for step in (3, 4, 5):
        queue.record_step(second, step, 6, f"Step {step}/6", {"step": step, "train_loss": 0.5, "attempt": 2}, None)
    metrics = store.events.all_for(job_id, type="metrics")
    assert [(e.data["step"], e.data["attempt"]) for e in metrics] == [(1, 1), (2, 1), (3, 2), (4, 2), (5, 2)]
    assert store.jobs.get(job_id).step == 5
