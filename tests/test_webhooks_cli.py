"""`modelmill webhooks add|list|delete` against a real app behind the openai SDK (a TestClient, no
network): the secret printed once on stdout, the list with each endpoint's newest delivery, a bad URL
reported as the server's 400 message, and delete."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from openai import OpenAI

from modelmill import cli, webhooks_cli
from modelmill.service.api.app import create_app
from modelmill.service.store import open_store
from modelmill.settings import Settings


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("MODELMILL_HOME", str(tmp_path))
    s = open_store(Settings(home=tmp_path).ensure_dirs())
    yield s
    s.close()


@pytest.fixture
def sdk(tmp_path, store, monkeypatch):
    with TestClient(create_app(Settings(home=tmp_path), store=store)) as http:
        client = OpenAI(base_url="http://testserver/v1", api_key="local", http_client=http, max_retries=0)
        monkeypatch.setattr(webhooks_cli, "_client", lambda args: client)
        yield client


def test_add_list_delete(sdk, store, capsys):
    assert cli.main(["webhooks", "add", "http://8.8.8.8/hook", "--events", "fine_tuning.job.succeeded"]) == 0
    out = capsys.readouterr()
    secret = out.out.strip()
    assert secret.startswith("whsec_") and secret not in out.err and "not shown again" in out.err
    [endpoint] = store.webhooks.list_endpoints()
    assert endpoint.secret == secret and endpoint.events == ["fine_tuning.job.succeeded"]

    with store.db.transaction() as c:
        from modelmill.service.webhooks import enqueue

        enqueue(c, endpoint.project_id, "fine_tuning.job.succeeded", {"id": "ftjob-1"})
    assert cli.main(["webhooks", "list"]) == 0
    line = capsys.readouterr().out
    assert endpoint.id in line and "fine_tuning.job.succeeded pending" in line and secret not in line
    assert cli.main(["webhooks", "list", "--json"]) == 0
    [listed] = json.loads(capsys.readouterr().out)
    assert listed["last_delivery"]["status"] == "pending" and "secret" not in listed

    assert cli.main(["webhooks", "delete", endpoint.id]) == 0
    assert store.webhooks.list_endpoints() == []
    with pytest.raises(SystemExit) as e:
        cli.main(["webhooks", "delete", endpoint.id])
    assert e.value.code == 1 and "No such webhook endpoint" in capsys.readouterr().err


def test_a_refused_url_prints_the_servers_reason(sdk, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["webhooks", "add", "http://127.0.0.1:9/hook"])
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert "non-public address" in err and "Traceback" not in err
