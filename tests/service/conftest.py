"""Fixtures for service tests: a Settings on a temp MODELMILL_HOME, its store, a TestClient.

Base models are built once per session into a shared directory that every test home
links to as its `models/`, so modelmill-tiny is materialised once, not per test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from modelmill.settings import Settings
from modelmill.service.api.app import create_app
from modelmill.service.store import open_store


@pytest.fixture(scope="session")
def shared_models_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture
def settings(tmp_path, shared_models_dir, monkeypatch) -> Settings:
    home = tmp_path / "home"
    home.mkdir()
    (home / "models").symlink_to(shared_models_dir, target_is_directory=True)
    monkeypatch.setenv("MODELMILL_HOME", str(home))
    return Settings(home=home, lease_seconds=5.0, heartbeat_seconds=0.2, poll_seconds=0.05,
                    max_upload_bytes=64 * 1024).ensure_dirs()


@pytest.fixture
def store(settings):
    s = open_store(settings)
    yield s
    s.close()


@pytest.fixture
def client(settings, store):
    with TestClient(create_app(settings, store=store)) as c:
        yield c


def chat_line(i: int) -> str:
    return json.dumps({"messages": [{"role": "system", "content": "You are terse."},
                                    {"role": "user", "content": f"What is {i} plus {i}?"},
                                    {"role": "assistant", "content": f"{2 * i}."}]})


def training_jsonl(n: int = 12) -> bytes:
    return ("\n".join(chat_line(i) for i in range(n)) + "\n").encode()


def upload(client, content: bytes, purpose: str = "fine-tune", filename: str = "train.jsonl") -> dict:
    r = client.post("/v1/files", files={"file": (filename, content)}, data={"purpose": purpose})
    assert r.status_code == 200, r.text
    return r.json()


def create_job(client, file_id: str, **extra) -> dict:
    body = {"model": "modelmill-tiny", "training_file": file_id, **extra}
    r = client.post("/v1/fine_tuning/jobs", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def preference_line(i: int) -> str:
    """One DPO line: a short prompt, the right answer preferred over a wrong one."""
    return json.dumps({"input": {"messages": [{"role": "system", "content": "You are terse."},
                                              {"role": "user", "content": f"What is {i} plus {i}?"}]},
                       "preferred_output": [{"role": "assistant", "content": f"{2 * i}."}],
                       "non_preferred_output": [{"role": "assistant", "content": f"{2 * i + 1}."}]})


def preference_jsonl(n: int = 12) -> bytes:
    return ("\n".join(preference_line(i) for i in range(n)) + "\n").encode()
