"""OpenAI's response headers: `openai-processing-ms` and `x-request-id` on every response (successes,
errors, 404s), and the SDK reads the request id from it."""

from __future__ import annotations

import re

from openai import OpenAI

from .conftest import training_jsonl, upload


def check(headers) -> str:
    assert re.fullmatch(r"\d+", headers["openai-processing-ms"]), headers
    assert re.fullmatch(r"req_[0-9a-f]{32}", headers["x-request-id"]), headers
    return headers["x-request-id"]


def test_every_response_has_processing_time_and_a_fresh_request_id(client):
    ids = {check(client.get("/v1/models").headers), check(client.get("/v1/files/file-nope").headers)}
    r = client.post("/v1/fine_tuning/jobs", json={"model": "modelmill-tiny"})  # no training_file: a 400
    assert r.status_code == 400
    ids.add(check(r.headers))
    ids.add(check(client.get("/v1/files").headers))
    assert len(ids) == 4


def test_processing_time_counts_the_handler(client, monkeypatch):
    import time

    from modelmill.service.store import files as store_files

    upload(client, training_jsonl())
    fast = int(client.get("/v1/files").headers["openai-processing-ms"])
    original = store_files.FileRepo.list

    def slow_list(self, *args, **kwargs):
        time.sleep(0.12)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(store_files.FileRepo, "list", slow_list)
    assert int(client.get("/v1/files").headers["openai-processing-ms"]) >= fast + 100


def test_the_sdk_sees_the_request_id(client):
    sdk = OpenAI(base_url="http://testserver/v1", api_key="x", http_client=client, max_retries=0)
    model = sdk.models.retrieve("modelmill-tiny")
    assert re.fullmatch(r"req_[0-9a-f]{32}", model._request_id or "")
