"""The CLI's commands against a real app: fixtures shared by the CLI test files (test_cli_output.py,
test_webhooks_cli.py). Import them by name into a test module:

    from tests.cli_app import sdk, store  # noqa: F401 - pytest fixtures

`sdk` is an openai client on a TestClient (no network) that every CLI module's `_client` returns,
so a command's output can be checked with capsys."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from openai import OpenAI

from modelmill import cli, webhooks_cli
from modelmill.service.api.app import create_app
from modelmill.service.store import open_store
from modelmill.settings import Settings

# The modules whose commands build their client through their own `_client(args)`.
CLIENT_MODULES = (cli, webhooks_cli)


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
        for module in CLIENT_MODULES:
            monkeypatch.setattr(module, "_client", lambda args: client)
        yield client
