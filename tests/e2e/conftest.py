"""End-to-end fixtures: a real `modelmill serve` on 127.0.0.1 driven by the official openai SDK."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tools.datasets import short_dataset
from tools.servers import Server

REPO = Path(__file__).resolve().parents[2]
SMART_HOME = REPO / "examples" / "smart_home"


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    with Server(tmp_path_factory.mktemp("home")) as s:  # stopped however the session ends
        yield s


@pytest.fixture(scope="session")
def client(server):
    return server.client


@pytest.fixture
def split_server(tmp_path):
    """A server of its own with no worker inside (tests start and kill workers), short leases."""
    s = Server(tmp_path / "home", worker=False, env={"MODELMILL_LEASE_SECONDS": "3",
                                                     "MODELMILL_HEARTBEAT_SECONDS": "0.5"})
    yield s
    s.stop()


@pytest.fixture(scope="session")
def train_file(client):
    return client.files.create(file=("train.jsonl", short_dataset(48)), purpose="fine-tune")


@pytest.fixture(scope="session")
def valid_file(client):
    return client.files.create(file=("valid.jsonl", short_dataset(12, seed=1)), purpose="fine-tune")


@pytest.fixture(scope="session")
def sft_model(client, train_file) -> str:
    """The fine_tuned_model of one finished SFT job on train_file (1 epoch), for the tests that train on
    top of a fine-tuned model (SFT again, DPO): one base job for all of them, not one each."""
    job = wait_for(client, tiny_job(client, train_file.id, suffix="base1").id, {"succeeded", "failed", "cancelled"})
    assert job.status == "succeeded", job.error
    return job.fine_tuned_model


def wait_for(client, job_id: str, statuses: set[str], timeout: float = 180.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in statuses:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} still {job.status} after {timeout}s (wanted {statuses})")


def wait_stopped(client, job_id: str, timeout: float = 60.0) -> None:
    """Until the worker has honoured a pause or cancel: the API answers the requested status at once
    (as OpenAI does), and the trainer's own stop at its next step boundary shows only as the
    "Job paused" / "Job cancelled" event."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = client.fine_tuning.jobs.list_events(job_id, limit=20).data
        if any(e.message.startswith(("Job paused", "Job cancelled")) for e in events):
            return
        if client.fine_tuning.jobs.retrieve(job_id).status in ("succeeded", "failed"):
            return
        time.sleep(0.2)
    raise AssertionError(f"job {job_id}: the worker did not stop within {timeout}s")


def tiny_job(client, training_file: str, n_epochs: int = 1, batch_size: int = 8, **kw):
    return client.fine_tuning.jobs.create(
        training_file=training_file, model="modelmill-tiny", seed=3,
        method={"type": "supervised", "supervised": {"hyperparameters": {
            "n_epochs": n_epochs, "batch_size": batch_size, "learning_rate_multiplier": 2.0}}}, **kw)
