"""Leases, heartbeats and fencing: a stale worker's writes are refused once another holds the job."""

from __future__ import annotations

import pytest

from modelmill import errors
from modelmill.service.queue import JobQueue
from modelmill.service.store import NewJob


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
    return JobQueue(store, lease_seconds=10, clock=clock)


def test_claims_oldest_first_and_never_twice(store, queue):
    add_job(store, "ftjob-a")
    add_job(store, "ftjob-b")
    a = queue.claim("w1")
    b = queue.claim("w2")
    assert (a.job_id, b.job_id) == ("ftjob-a", "ftjob-b")
    assert queue.claim("w3") is None
    assert a.attempt == 1 and a.claimed_status == "validating_files"


def test_expired_lease_is_reclaimed_and_stale_writes_are_fenced(store, queue, clock):
    add_job(store, "ftjob-a")
    old = queue.claim("w1")
    queue.update(old, status="running")
    clock.t += 5
    queue.heartbeat(old)  # renewed: still held at +14
    clock.t += 9
    assert queue.claim("w2") is None
    clock.t += 11  # no heartbeat for longer than the lease
    new = queue.claim("w2")
    assert new.job_id == "ftjob-a" and new.token == old.token + 1 and new.attempt == 2
    assert new.claimed_status == "running"

    for stale_write in (lambda: queue.update(old, status="failed"),
                        lambda: queue.add_event(old, "info", "stale"),
                        lambda: queue.record_step(old, 3, 10, "Step 3/10", {"step": 3}, None),
                        lambda: queue.add_checkpoint(old, 3, store.files.files_dir, {}, "ft:x:ckpt-step-3"),
                        lambda: queue.finish(old, "succeeded"),
                        lambda: queue.heartbeat(old),
                        lambda: queue.requested_action(old)):
        with pytest.raises(errors.FencedOutError):
            stale_write()
    job = store.jobs.get("ftjob-a")
    assert job.status == "running" and job.lease_owner == "w2"
    assert not any(e.message == "stale" for e in store.events.all_for("ftjob-a"))
    assert store.checkpoints.all_for("ftjob-a") == []

    queue.add_event(new, "info", "fresh")  # the current holder writes fine
    queue.finish(new, "succeeded")
    assert store.jobs.get("ftjob-a").status == "succeeded"


def test_finished_job_is_never_claimed_again(store, queue, clock):
    add_job(store, "ftjob-a")
    lease = queue.claim("w1")
    queue.finish(lease, "succeeded")
    clock.t += 1000
    assert queue.claim("w2") is None
    with pytest.raises(errors.FencedOutError):
        queue.update(lease, status="running")  # released: even its own worker is fenced


def test_cancel_is_requested_of_a_live_lease_and_applied_to_a_dead_one(store, queue, clock):
    add_job(store, "ftjob-a")
    lease = queue.claim("w1")
    queue.update(lease, status="running")
    job = store.jobs.cancel("ftjob-a")  # live lease: a request, the worker decides
    assert job.status == "running" and job.requested_action == "cancel"
    assert queue.requested_action(lease) == "cancel"

    add_job(store, "ftjob-b")
    dead = queue.claim("w2")
    queue.update(dead, status="running")
    clock.t += 60  # w2 stopped heartbeating
    job = store.jobs.cancel("ftjob-b")  # nobody holds it: the API cancels it and fences w2 out
    assert job.status == "cancelled" and job.finished_at is not None
    with pytest.raises(errors.FencedOutError):
        queue.add_event(dead, "info", "zombie")
    with pytest.raises(errors.ConflictError):
        store.jobs.cancel("ftjob-b")


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

    from modelmill.service.worker import Worker

    add_job(store, "ftjob-z")
    store.db.execute("UPDATE jobs SET status = 'running', reclaims = 2 WHERE id = 'ftjob-z'")
    Worker(replace(settings, max_worker_losses=2), store).run_once()  # this claim is the 3rd loss in a row
    job = store.jobs.get("ftjob-z")
    assert job.status == "failed" and job.error["code"] == "worker_lost"
    assert "3 times in a row without saving a checkpoint" in job.error["message"]
