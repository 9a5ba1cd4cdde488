"""SIGKILL the worker in the middle of training: the next worker resumes from the
last checkpoint and the job succeeds, with no step recorded twice."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.e2e.conftest import tiny_job, wait_for
from tools.datasets import short_dataset


def wait_for_checkpoint(client, job_id: str, worker, timeout: float) -> None:
    """Until the job has a checkpoint, with the worker process still running."""
    deadline = time.monotonic() + timeout
    while not client.fine_tuning.jobs.checkpoints.list(job_id).data:
        assert time.monotonic() < deadline, "no checkpoint before the deadline"
        assert worker.poll() is None
        time.sleep(0.05)


def test_sigkill_worker_resumes_from_checkpoint(split_server):
    client = split_server.client
    # 12 examples (the 10 a file needs, and a few): every step is one more the test waits for, twice.
    train = client.files.create(file=("train.jsonl", short_dataset(12)), purpose="fine-tune")
    # 2 epochs: the checkpoint at the end of the first is where the kill lands; the second is the resumed part.
    job = tiny_job(client, train.id, n_epochs=2, batch_size=1)
    worker = split_server.start_worker()
    try:
        wait_for_checkpoint(client, job.id, worker, timeout=120)
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait()
        killed_at = client.fine_tuning.jobs.retrieve(job.id)
        assert killed_at.status == "running"
        first_ckpt = min(c.step_number for c in client.fine_tuning.jobs.checkpoints.list(job.id).data)

        worker = split_server.start_worker()
        done = wait_for(client, job.id, {"succeeded", "failed"}, timeout=180)
        assert done.status == "succeeded", done.error
        events = client.fine_tuning.jobs.list_events(job.id, limit=1000).data
        assert any("resum" in e.message.lower() for e in events), [e.message for e in events]
        metrics = [e.data for e in events if e.type == "metrics"]
        steps = [m["step"] for m in metrics]
        assert max(steps) == metrics[0]["total_steps"] == 2 * 12  # 12 examples, batch 1, 2 epochs
        # The second worker started from the checkpoint, not from step 1: steps before the
        # checkpoint were recorded once, by the first worker.
        assert steps.count(1) == 1 and first_ckpt >= 12
    finally:
        worker.kill()
        worker.wait()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie (exited, not yet reaped by init) is not alive
        return f.read().split(") ", 1)[1][0] != "Z"


def test_sigkill_of_a_two_rank_worker_takes_its_ranks_down_and_the_job_resumes(split_server):
    """MODELMILL_TRAIN_PROCESSES=2 (ml/distributed.py): killing the worker kills its ranks too (no orphan
    keeps writing into the job's directory), and the next worker resumes from the checkpoint."""
    client = split_server.client
    train = client.files.create(file=("train.jsonl", short_dataset(16)), purpose="fine-tune")
    job = tiny_job(client, train.id, n_epochs=2, batch_size=2)
    before = set(Path("/tmp").glob("mm-ranks-*"))
    worker = subprocess.Popen([sys.executable, "-m", "modelmill.cli", "worker"],
                              env=dict(split_server.env, MODELMILL_TRAIN_PROCESSES="2"))
    try:
        wait_for_checkpoint(client, job.id, worker, timeout=240)
        ranks = [int(p.read_text()) for d in set(Path("/tmp").glob("mm-ranks-*")) - before
                 for p in d.glob("rank-*.pid")]
        assert len(ranks) == 2
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait()
        deadline = time.monotonic() + 30
        while any(_alive(pid) for pid in ranks):
            assert time.monotonic() < deadline, "a rank outlived its worker"
            time.sleep(0.1)
        first_ckpt = min(c.step_number for c in client.fine_tuning.jobs.checkpoints.list(job.id).data)

        worker = split_server.start_worker()  # one process this time: a checkpoint is the same either way
        done = wait_for(client, job.id, {"succeeded", "failed"}, timeout=240)
        assert done.status == "succeeded", done.error
        steps = [e.data["step"] for e in client.fine_tuning.jobs.list_events(job.id, limit=1000).data
                 if e.type == "metrics"]
        assert max(steps) == 2 * 16 // 2 and steps.count(1) == 1 and first_ckpt >= 8
    finally:
        worker.kill()
        worker.wait()
        for d in set(Path("/tmp").glob("mm-ranks-*")) - before:  # the killed run's rank directory
            shutil.rmtree(d, ignore_errors=True)
