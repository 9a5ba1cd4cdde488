"""Disk full (issue 8): a checkpoint save that hits ENOSPC fails the job with a clear error, the
checkpoint before it stays intact and usable, and the server keeps serving.

The job's output directory is a small tmpfs: one checkpoint of the tiny model fits, the second does
not. Mounting needs root (CAP_SYS_ADMIN); elsewhere the test is skipped.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess

import pytest

from tests.e2e.conftest import tiny_job, wait_for
from tools.datasets import short_dataset
from tools.servers import Server


def _can_mount(tmp_path) -> bool:
    probe = tmp_path / "probe"
    probe.mkdir()
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(probe)],
                        capture_output=True).returncode == 0
    if ok:
        subprocess.run(["umount", str(probe)], check=True)
    return ok


@pytest.fixture
def split_server(tmp_path):
    if os.geteuid() != 0 or not _can_mount(tmp_path):
        pytest.skip("mounting a tmpfs needs root")
    s = Server(tmp_path / "home", worker=False)
    yield s
    s.stop()


def _dir_bytes(path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def test_checkpoint_save_on_a_full_disk_fails_the_job_and_keeps_the_last_checkpoint(split_server):
    client = split_server.client
    train = client.files.create(file=("train.jsonl", short_dataset(16)), purpose="fine-tune")
    job = tiny_job(client, train.id, n_epochs=3, batch_size=8)  # a checkpoint at steps 2, 4, 6
    job_dir = split_server.home / "jobs" / job.id
    job_dir.mkdir(parents=True)
    # A tiny-model checkpoint is ~3.8 MB (mostly the tokenizer); 6 MB holds one, not two.
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(job_dir)], check=True)
    worker = split_server.start_worker()
    try:
        done = wait_for(client, job.id, {"succeeded", "failed"}, timeout=180)
        assert done.status == "failed"
        assert done.error.code == "disk_full", done.error
        assert "No space left on device" in done.error.message
        assert "newest is step 2" in done.error.message, done.error.message
        events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
        assert any(e.level == "error" and "No space left" in e.message for e in events)

        # The checkpoint before the failure is complete, listed, and serves chat.
        ckpts = client.fine_tuning.jobs.checkpoints.list(job.id).data
        assert [c.step_number for c in ckpts] == [2]
        step2 = job_dir / "checkpoints" / "step-2"
        assert (step2 / "adapter_model.safetensors").is_file() and (step2 / "trainer_state.json").is_file()
        assert not (job_dir / ".staging").exists()  # the half-written save was removed
        reply = client.chat.completions.create(model=ckpts[0].fine_tuned_model_checkpoint, max_tokens=4,
                                               temperature=0, messages=[{"role": "user", "content": "hi"}])
        assert reply.choices[0].finish_reason in ("stop", "length")

        # The server keeps serving: uploads, jobs, lists.
        again = client.files.create(file=("t2.jsonl", short_dataset(12)), purpose="fine-tune")
        assert client.files.retrieve(again.id).id == again.id
        assert any(j.id == job.id for j in client.fine_tuning.jobs.list().data)
        assert worker.poll() is None  # the worker survived the failed job
    finally:
        worker.kill()
        worker.wait()
        subprocess.run(["umount", "-l", str(job_dir)])
    con = sqlite3.connect(split_server.home / "modelmill.db")
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()
