"""End-to-end fixtures: a real `modelmill serve` on 127.0.0.1 driven by the official openai SDK."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest
from openai import OpenAI

from modelmill.local_server import LocalServer

REPO = Path(__file__).resolve().parents[2]
SMART_HOME = REPO / "examples" / "smart_home"


class Server(LocalServer):
    """A server subprocess (modelmill.local_server: API, optionally with its in-process worker) and the
    official openai SDK on it, without retries so that a test sees every error."""

    def __init__(self, home: Path, worker: bool = True, env: dict | None = None):
        super().__init__(home, worker=worker, env=env)
        self.client = OpenAI(base_url=self.base_url, api_key="test-key", max_retries=0)


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    with Server(tmp_path_factory.mktemp("home")) as s:  # stopped however the session ends
        yield s


@pytest.fixture(scope="session")
def client(server):
    return server.client


def short_dataset(n: int, seed: int = 0) -> bytes:
    """Short chat examples (~30 tokens) so each tiny-model step takes a fraction of a second;
    the smart-home examples carry ~470 tokens of tool schemas and belong in the demo."""
    rng = random.Random(seed)
    rooms = ["kitchen", "bedroom", "office", "garage", "hall", "attic"]
    lines = []
    for _ in range(n):
        room, state = rng.choice(rooms), rng.choice(["on", "off"])
        lines.append(json.dumps({"messages": [
            {"role": "system", "content": "Reply with the room and the state."},
            {"role": "user", "content": f"turn {state} the {room} lights"},
            {"role": "assistant", "content": f"{room} {state}"}]}))
    return ("\n".join(lines) + "\n").encode()


def short_preference_dataset(n: int, seed: int = 0) -> bytes:
    """Short DPO lines in the style of short_dataset: the right state preferred over the wrong one."""
    rng = random.Random(seed)
    rooms = ["kitchen", "bedroom", "office", "garage", "hall", "attic"]
    lines = []
    for _ in range(n):
        room, state = rng.choice(rooms), rng.choice(["on", "off"])
        wrong = "off" if state == "on" else "on"
        lines.append(json.dumps({
            "input": {"messages": [{"role": "system", "content": "Reply with the room and the state."},
                                   {"role": "user", "content": f"turn {state} the {room} lights"}]},
            "preferred_output": [{"role": "assistant", "content": f"{room} {state}"}],
            "non_preferred_output": [{"role": "assistant", "content": f"{room} {wrong}"}]}))
    return ("\n".join(lines) + "\n").encode()


@pytest.fixture(scope="session")
def train_file(client):
    return client.files.create(file=("train.jsonl", short_dataset(48)), purpose="fine-tune")


@pytest.fixture(scope="session")
def valid_file(client):
    return client.files.create(file=("valid.jsonl", short_dataset(12, seed=1)), purpose="fine-tune")


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
