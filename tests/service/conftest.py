"""Fixtures for service tests: a Settings on a temp MODELMILL_HOME, its store, a TestClient.

Base models are built once per session into a shared directory that every test home
links to as its `models/`, so modelmill-tiny is materialised once, not per test.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from modelmill.settings import Settings
from modelmill.service.api.app import create_app
from modelmill.service.store import open_store
from tools.pg_cluster import PgCluster, PgUnavailable


@pytest.fixture(scope="session")
def shared_models_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def pg_cluster():
    """A throwaway Postgres cluster for the session (tools/pg_cluster.py). Where it can't start, its
    tests fail with the reason when MODELMILL_REQUIRE_POSTGRES=1 (make test, CI), else skip with it."""
    try:
        cluster = PgCluster.start()
    except PgUnavailable as e:
        if os.environ.get("MODELMILL_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"Postgres is required (MODELMILL_REQUIRE_POSTGRES=1) but did not start: {e}")
        pytest.skip(f"Postgres did not start: {e}")
    yield cluster
    cluster.stop()


@pytest.fixture
def pg_database(pg_cluster):
    """The URL of a fresh, empty database in the session's cluster, dropped after the test."""
    url = pg_cluster.create_database()
    yield url
    pg_cluster.drop_database(url)


@pytest.fixture
def dialect() -> str:
    """The store's database in this test: "sqlite" (the embedded default), or MODELMILL_TEST_DIALECT
    (=postgres runs any service suite on Postgres). The store and queue suites override it with
    DIALECTS, so they always run on both."""
    return os.environ.get("MODELMILL_TEST_DIALECT", "sqlite")


DIALECTS = ["sqlite", "postgres"]


@pytest.fixture
def settings(tmp_path, shared_models_dir, monkeypatch, dialect, request) -> Settings:
    home = tmp_path / "home"
    home.mkdir()
    (home / "models").symlink_to(shared_models_dir, target_is_directory=True)
    monkeypatch.setenv("MODELMILL_HOME", str(home))
    database_url = request.getfixturevalue("pg_database") if dialect == "postgres" else None
    return Settings(home=home, lease_seconds=5.0, heartbeat_seconds=0.2, poll_seconds=0.05,
                    max_upload_bytes=64 * 1024, database_url=database_url).ensure_dirs()


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
