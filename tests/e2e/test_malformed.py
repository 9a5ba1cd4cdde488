"""Malformed uploads: each must fail its job with a clear, line-numbered error, never a 5xx."""

from __future__ import annotations

import io
import json
import zipfile

import httpx
import pytest

from tests.e2e.conftest import tiny_job, wait_for
from tools.datasets import short_dataset
from tests.spec_check import assert_matches

GOOD = short_dataset(12).decode().splitlines()


def with_line(i: int, line: str) -> bytes:
    lines = list(GOOD)
    lines[i] = line
    return ("\n".join(lines) + "\n").encode()


def zipped() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("train.jsonl", "\n".join(GOOD))
    return buf.getvalue()


def bad_role() -> str:
    ex = json.loads(GOOD[4])
    ex["messages"][1]["role"] = "bot"
    return json.dumps(ex)


def no_assistant() -> str:
    ex = json.loads(GOOD[2])
    ex["messages"] = ex["messages"][:1]
    return json.dumps(ex)


# (name, file bytes, text the error message must contain)
CASES = [
    ("non_json", with_line(6, "{this is not json"), "line 7"),
    ("wrong_role", with_line(4, bad_role()), "line 5: messages[1].role"),
    ("no_assistant", with_line(2, no_assistant()), "line 3"),
    ("too_few", ("\n".join(GOOD[:5]) + "\n").encode(), "10"),
    ("empty", b"", "empty"),
    ("binary", bytes(range(256)) * 8, "line 1"),
    ("zip", zipped(), "line 1"),
    # an image for the text-only modelmill-tiny (tests/e2e/test_vision.py has the VLM's malformed images)
    ("image_text_only_base", with_line(3, json.dumps({"messages": [
        {"role": "user", "content": [{"type": "text", "text": "?"}, {"type": "image_url", "image_url": {
            "url": "data:image/png;base64,iVBORw0KGgo="}}]}, {"role": "assistant", "content": "a"}]})),
     "line 4: messages[0].content[1].type: image_url parts need a vision-language base model"),
]


@pytest.mark.parametrize("name,data,needle", CASES, ids=[c[0] for c in CASES])
def test_malformed_file_fails_job_with_line_number(client, name, data, needle):
    f = client.files.create(file=(f"{name}.jsonl", data), purpose="fine-tune")
    job = wait_for(client, tiny_job(client, f.id).id, {"failed", "succeeded"}, timeout=60)
    assert job.status == "failed"
    body = client.fine_tuning.jobs.with_raw_response.retrieve(job.id).http_response.json()
    assert_matches(body, "FineTuningJob")
    assert body["error"]["param"] == "training_file"
    assert body["error"]["code"]
    assert needle.lower() in body["error"]["message"].lower(), body["error"]["message"]


def test_bad_requests_are_4xx_in_envelope(server, train_file):
    url = server.base_url
    cases = [
        httpx.post(url + "/fine_tuning/jobs", content=b"{not json", headers={"content-type": "application/json"}),
        httpx.post(url + "/fine_tuning/jobs", json={"model": "modelmill-tiny"}),
        httpx.post(url + "/fine_tuning/jobs", json={"model": "modelmill-tiny", "training_file": "file-nope"}),
        httpx.post(url + "/fine_tuning/jobs", json={"model": "modelmill-tiny", "training_file": train_file.id,
                                                    "method": {"type": "supervised", "supervised": {
                                                        "hyperparameters": {"n_epochs": -3}}}}),
        httpx.post(url + "/files", files={"file": ("a.jsonl", b"{}")}, data={"purpose": "no-such-purpose"}),
        httpx.post(url + "/files", data={"purpose": "fine-tune"}),
        httpx.post(url + "/chat/completions", json={"model": "modelmill-tiny", "messages": "nope"}),
        httpx.post(url + "/chat/completions", json={"model": "modelmill-tiny",
                                                    "messages": [{"role": "user", "content": "x"}],
                                                    "temperature": "hot"}),
    ]
    for r in cases:
        assert 400 <= r.status_code < 500, (r.request.url, r.status_code, r.text)
        assert_matches(r.json(), "ErrorResponse")
