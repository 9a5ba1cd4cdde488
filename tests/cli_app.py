"""The CLI's commands against a real app: fixtures shared by the CLI test files (test_cli_output.py,
test_webhooks_cli.py). Import them by name into a test module:

    from tests.cli_app import sdk, store  # noqa: F401 - pytest fixtures

`sdk` is an openai client on a TestClient (no network) that every CLI module's client function returns,
so a command's output can be checked with capsys."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from openai import OpenAI

from modelmill import webhooks_cli
from modelmill.commands import evals, jobs
from modelmill.service.api.app import create_app
from modelmill.service.store import open_store
from modelmill.settings import Settings

# The modules whose commands build their client through their own client function, and its name.
CLIENT_MODULES = ((jobs, "client"), (evals, "client"), (webhooks_cli, "_client"))


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("MODELMILL_HOME", str(tmp_path))
    s = open_store(Settings(home=tmp_path).ensure_dirs())
    yield s
    s.close()


@pytest.fixture
def sdk(tmp_path, store, monkeypatch):
    """An openai client talking to a real app; the CLI's commands use it."""
    with TestClient(create_app(Settings(home=tmp_path), store=store)) as http:
        client = OpenAI(base_url="http://testserver/v1", api_key="local", http_client=http, max_retries=0)
        for module, name in CLIENT_MODULES:
            monkeypatch.setattr(module, name, lambda args: client)
        yield client
