"""Fixtures for the reliability tests: the malformed-file corpus (generated once per session) and
an in-process service (TestClient, the official openai SDK over it, a worker run by hand)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from openai import OpenAI

from modelmill.settings import Settings
from modelmill.service.api.app import create_app
from modelmill.service.store import open_store
from tools.reliability.malformed import generate

MAX_UPLOAD_BYTES = 8 * 1024 * 1024  # room for the 4 MB over-long lines; the 413 check sends more


@pytest.fixture(scope="session")
def malformed_cases():
    return generate()


@pytest.fixture(scope="module")
def bad_input_service(tmp_path_factory):
    """(settings, store, TestClient, OpenAI SDK client on that TestClient)."""
    home = tmp_path_factory.mktemp("reliability-home")
    settings = Settings(home=home, lease_seconds=30.0, heartbeat_seconds=5.0, poll_seconds=0.05,
                        max_upload_bytes=MAX_UPLOAD_BYTES).ensure_dirs()
    store = open_store(settings)
    with TestClient(create_app(settings, store=store)) as http:
        sdk = OpenAI(base_url=str(http.base_url) + "/v1", api_key="unused", http_client=http, max_retries=0)
        yield settings, store, http, sdk
    store.close()
