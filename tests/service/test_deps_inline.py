"""The app's own dependencies run on the event loop, not in the thread pool (api/deps.py: with 50
clients each pool round trip waited for the GIL, and a /v1 GET made 7 of them), and they still
authenticate and scope exactly as before."""

from __future__ import annotations

import anyio.to_thread
import pytest
from fastapi import Request
from fastapi.testclient import TestClient

from modelmill.service.core import auth
from modelmill.service.api import deps
from modelmill.service.api.app import create_app

from .conftest import create_job, training_jsonl, upload


@pytest.fixture
def pool_calls(monkeypatch):
    """The names of the callables each request sends to anyio's thread pool (FastAPI's sync routes
    and dependencies, run_in_threadpool and to_thread all go through anyio.to_thread.run_sync)."""
    calls: list[str] = []
    original = anyio.to_thread.run_sync

    async def counting(func, *args, **kwargs):
        inner = getattr(func, "keywords", {}).get("function") or getattr(func, "func", func)  # FastAPI's partials
        calls.append(getattr(inner, "__name__", repr(inner)))
        return await original(func, *args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", counting)
    return calls


def test_a_v1_get_goes_to_the_thread_pool_for_the_key_lookup_and_the_route_only(client, pool_calls):
    upload(client, training_jsonl())
    for path in ("/v1/files", "/v1/fine_tuning/jobs", "/v1/models"):
        pool_calls.clear()
        assert client.get(path).status_code == 200
        # the key lookup, the route, and FastAPI's check of the route's dict answer
        assert pool_calls == ["require_api_key", pool_calls[1], "validate"], (path, pool_calls)


def test_a_post_authenticated_by_the_edge_is_not_looked_up_again(client, pool_calls):
    file_id = upload(client, training_jsonl())["id"]
    pool_calls.clear()
    create_job(client, file_id)
    assert pool_calls.count("identify") == 1 and "require_api_key" not in pool_calls, pool_calls


def test_the_dependencies_still_authenticate_and_scope_to_the_callers_project(settings, store):
    key_a = auth.create_key(store, "a", project="alpha")
    key_b = auth.create_key(store, "b", project="beta")
    with TestClient(create_app(settings, store=store)) as c:
        assert c.get("/v1/files").status_code == 401
        assert c.get("/v1/files", headers={"Authorization": "Bearer nope"}).status_code == 401
        a = {"Authorization": f"Bearer {key_a}"}
        r = c.post("/v1/files", headers=a, files={"file": ("t.jsonl", training_jsonl())}, data={"purpose": "fine-tune"})
        assert r.status_code == 200, r.text
        assert [f["id"] for f in c.get("/v1/files", headers=a).json()["data"]] == [r.json()["id"]]
        assert c.get("/v1/files", headers={"Authorization": f"Bearer {key_b}"}).json()["data"] == []
        assert c.get(f"/v1/files/{r.json()['id']}", headers={"Authorization": f"Bearer {key_b}"}).status_code == 404
        assert c.get("/dashboard/api/jobs").status_code == 401  # the dashboard's API router too


def test_the_plain_accessors_still_work_for_code_holding_a_request(client):
    app = client.app
    request = Request({"type": "http", "app": app, "method": "GET", "path": "/", "headers": [], "query_string": b""})
    assert deps.store(request) is app.state.store
    assert deps.settings(request) is app.state.settings
    assert deps.project(request) == "proj_default"  # keyless loopback: the default project
