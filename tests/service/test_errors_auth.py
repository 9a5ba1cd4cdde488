"""Error envelopes and API keys."""

from __future__ import annotations

import pytest
from fastapi import APIRouter
from fastapi.testclient import TestClient

from modelmill import errors
from modelmill.service.api.app import create_app
from modelmill.service.core.auth import create_key, is_loopback
from tests.spec_check import assert_matches


@pytest.mark.parametrize("method,path,status", [
    ("GET", "/v1/no/such/route", 404),
    ("GET", "/v1/fine_tuning/jobs/ftjob-nope", 404),
    ("GET", "/v1/models/no-such-model", 404),
    ("GET", "/v1/models/ft:nope:x::y", 404),
    ("DELETE", "/v1/models/modelmill-tiny", 400),
    ("PUT", "/v1/files", 405),
])
def test_errors_use_openai_envelope(client, method, path, status):
    r = client.request(method, path)
    assert r.status_code == status, r.text
    assert_matches(r.json(), "ErrorResponse")
    assert r.json()["error"]["message"]


def test_invalid_json_and_types_are_400_not_422(client):
    r = client.post("/v1/fine_tuning/jobs", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = client.post("/v1/chat/completions", json={"model": "modelmill-tiny", "messages": "nope"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    r = client.post("/v1/chat/completions", json={"model": "modelmill-tiny", "temperature": "hot",
                                                  "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "temperature"
    r = client.post("/v1/chat/completions", json={"model": "modelmill-tiny",
                                                  "messages": [{"role": "bot", "content": "x"}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages[0].role"
    r = client.get("/v1/fine_tuning/jobs", params={"limit": "lots"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "limit"
    for resp in (r,):
        assert_matches(resp.json(), "ErrorResponse")


def test_unexpected_exception_is_500_in_envelope(settings, store):
    app = create_app(settings, store=store)
    boom = APIRouter()

    @boom.get("/v1/boom")
    def explode():
        raise RuntimeError("secret detail")

    app.include_router(boom)
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.get("/v1/boom")
    assert r.status_code == 500
    assert_matches(r.json(), "ErrorResponse")
    assert r.json()["error"]["type"] == "server_error" and "secret" not in r.json()["error"]["message"]


def test_keys_required_once_one_exists(client, store):
    assert client.get("/v1/models").status_code == 200  # no keys, loopback: open
    key = create_key(store, "ci")
    r = client.get("/v1/models")
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key"
    assert_matches(r.json(), "ErrorResponse")
    r = client.get("/v1/models", headers={"Authorization": "Bearer mm-wrong"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert client.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    assert client.get("/v1/no/route", headers={"Authorization": f"Bearer {key}"}).status_code == 404


def test_non_loopback_host_needs_a_key(settings, store):
    public = settings.with_(host="0.0.0.0")
    with pytest.raises(errors.AuthenticationError):
        create_app(public, store=store)
    key = create_key(store, "ops")
    with TestClient(create_app(public, store=store)) as c:
        assert c.get("/v1/models").status_code == 401
        assert c.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200
        store.keys.revoke(store.keys.list()[0].id)  # every key revoked while serving publicly:
        r = c.get("/v1/models", headers={"Authorization": f"Bearer {key}"})  # refuse, don't open up
        assert r.status_code == 401 and r.json()["error"]["code"] == "no_api_keys"


def test_loopback_detection():
    assert all(is_loopback(h) for h in ("127.0.0.1", "localhost", "::1", "127.0.0.2", "[::1]"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.4", "example.com"))
