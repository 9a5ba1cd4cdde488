"""Cancel, pause and resume through the SDK, each taking effect within a step or so."""

from __future__ import annotations

from tests.e2e.conftest import tiny_job, wait_for, wait_stopped


def wait_running_with_metrics(client, job_id: str):
    import time

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        events = client.fine_tuning.jobs.list_events(job_id, limit=5).data
        if any(e.type == "metrics" for e in events):
            return
        time.sleep(0.1)
    raise AssertionError("no metrics event")


def test_cancel(client, train_file):
    job = tiny_job(client, train_file.id, n_epochs=30, batch_size=2)
    wait_running_with_metrics(client, job.id)
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    # OpenAI answers the state the request put the job in, not the one it was in.
    assert cancelled.status == "cancelled"
    wait_stopped(client, job.id, timeout=30)
    job = client.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "cancelled" and job.fine_tuned_model is None


def test_pause_then_resume(client, train_file):
    # 2 epochs of 12 steps: the pause lands a step or two in, and the resumed run still crosses an epoch end
    # (more epochs only add steps to wait for).
    job = tiny_job(client, train_file.id, n_epochs=2, batch_size=4, suffix="pausable")
    wait_running_with_metrics(client, job.id)
    assert client.fine_tuning.jobs.pause(job.id).status == "paused"
    wait_stopped(client, job.id, timeout=30)  # the trainer checkpointed at its step boundary
    paused = client.fine_tuning.jobs.retrieve(job.id)
    assert paused.status == "paused"
    steps_before = max(e.data["step"] for e in client.fine_tuning.jobs.list_events(job.id, limit=1000).data
                       if e.type == "metrics")
    resumed = client.fine_tuning.jobs.resume(job.id)
    assert resumed.status in ("queued", "running")
    done = wait_for(client, job.id, {"succeeded", "failed"}, timeout=180)
    assert done.status == "succeeded", done.error
    steps = [e.data["step"] for e in client.fine_tuning.jobs.list_events(job.id, limit=1000).data
             if e.type == "metrics"]
    # Resumed from the pause checkpoint: steps continue past where it paused rather than restart.
    assert max(steps) > steps_before
    assert len(steps) == len(set(steps)), "a step was trained twice"
