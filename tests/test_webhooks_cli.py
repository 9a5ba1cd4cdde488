"""`modelmill webhooks add|list|delete` against a real app behind the openai SDK (a TestClient, no
network): the secret printed once on stdout, the list with each endpoint's newest delivery, a bad URL
reported as the server's 400 message, and delete."""

from __future__ import annotations

import json

import pytest

from modelmill import cli
from tests.cli_app import sdk, store  # noqa: F401 - pytest fixtures


def test_add_list_delete(sdk, store, capsys):
    assert cli.main(["webhooks", "add", "http://8.8.8.8/hook", "--events", "fine_tuning.job.succeeded"]) == 0
    out = capsys.readouterr()
    secret = out.out.strip()
    assert secret.startswith("whsec_") and secret not in out.err and "not shown again" in out.err
    [endpoint] = store.webhooks.list_endpoints()
    assert endpoint.secret == secret and endpoint.events == ["fine_tuning.job.succeeded"]

    with store.db.transaction() as c:
        from modelmill.service.webhooks.outbox import enqueue

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
