"""The Batch API through the official openai SDK: files.create(purpose="batch") -> batches.create ->
retrieve / list -> the output file's content; cancel; and a worker SIGKILLed mid-batch: the next
worker finishes it and no line is answered twice."""

from __future__ import annotations

import json
import signal
import time

import pytest

from tests.spec_check import assert_matches


def batch_file(n: int, max_tokens: int = 4) -> bytes:
    lines = [{"custom_id": f"task-{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": "modelmill-tiny", "max_tokens": max_tokens, "temperature": 0,
                       "messages": [{"role": "user", "content": f"Count to {i}"}]}} for i in range(n)]
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def wait_batch(client, batch_id: str, statuses: set[str], timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        if batch.status in statuses:
            return batch
        time.sleep(0.1)
    raise AssertionError(f"batch {batch_id} still {batch.status} after {timeout}s (wanted {statuses})")


def output_lines(client, file_id: str) -> list[dict]:
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


def test_batch_with_the_sdk(client):
    f = client.files.create(file=("requests.jsonl", batch_file(5)), purpose="batch")
    batch = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h",
                                  metadata={"run": "e2e"})
    assert batch.status == "validating" and batch.request_counts.total == 5
    done = wait_batch(client, batch.id, {"completed", "failed", "expired", "cancelled"})
    assert done.status == "completed", done.errors
    assert done.request_counts.completed == 5 and done.request_counts.failed == 0
    assert_matches(client.batches.with_raw_response.retrieve(batch.id).http_response.json(), "Batch")
    out = output_lines(client, done.output_file_id)
    assert sorted(o["custom_id"] for o in out) == [f"task-{i}" for i in range(5)]
    assert all(o["response"]["status_code"] == 200 and o["response"]["body"]["choices"] for o in out)
    assert batch.id in [b.id for b in client.batches.list(limit=100).data]

    other = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    cancelled = client.batches.cancel(other.id)
    assert cancelled.status in ("cancelling", "cancelled")
    assert wait_batch(client, other.id, {"cancelled", "completed"}, timeout=60).status == "cancelled"


def test_bad_batch_file_is_a_400_naming_the_line(client):
    import openai

    bad = batch_file(2).decode().replace('"modelmill-tiny"', '"no-such-model"', 1).encode()
    f = client.files.create(file=("bad.jsonl", bad), purpose="batch")
    with pytest.raises(openai.BadRequestError) as e:
        client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert "line 1: body.model" in str(e.value) and e.value.body["param"] == "input_file_id"


def test_sigkill_mid_batch_answers_every_line_once(split_server):
    """The first worker SIGKILLs itself in the middle of its second recording of answers
    (MODELMILL_CRASH_AT, modelmill/faults.py): the first recording committed, the second lost with it."""
    client = split_server.client
    n = 256  # seconds of decoding on a CPU: more than one recording (every 0.5 s)
    f = client.files.create(file=("requests.jsonl", batch_file(n, max_tokens=16)), purpose="batch")
    batch = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    worker = split_server.start_worker(env={"MODELMILL_CRASH_AT": "batch_record:2"})
    try:
        deadline = time.monotonic() + 180
        while worker.poll() is None:
            assert time.monotonic() < deadline, "the worker did not reach its crash point"
            assert client.batches.retrieve(batch.id).status != "completed", "done before the crash: make it longer"
            time.sleep(0.1)
        assert worker.returncode == -signal.SIGKILL
        killed = client.batches.retrieve(batch.id)
        assert killed.status == "in_progress" and 0 < killed.request_counts.completed < n, killed.request_counts

        worker = split_server.start_worker()
        done = wait_batch(client, batch.id, {"completed", "failed"}, timeout=180)
        assert done.status == "completed", done.errors
        assert done.request_counts.completed == n and done.request_counts.failed == 0
        out = output_lines(client, done.output_file_id)
        ids = [o["custom_id"] for o in out]
        assert len(ids) == n and set(ids) == {f"task-{i}" for i in range(n)}  # every line, none twice
    finally:
        worker.kill()
        worker.wait()
