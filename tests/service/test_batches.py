"""The Batch API on modelmill-tiny: create refuses bad requests and bad input lines (400 naming the
line and field), a worker answers the lines through the batched sampler and writes OpenAI's output
and error files, cancel (unclaimed and mid-run), expiry, shutdown hand-back, and a worker that dies
mid-batch: the next one resumes without answering any line twice."""

from __future__ import annotations

import json
import threading

import pytest

from modelmill.service.batches import runner as batch_run
from modelmill.service.models.sampler import shared_sampler
from modelmill.service.store.batches import BatchQueue
from modelmill.service.worker.loop import Worker
from tests.service.conftest import upload
from tests.spec_check import assert_matches

CHAT = "/v1/chat/completions"


def chat_line(custom_id: str, content: str = "hi", **body) -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": CHAT,
            "body": {"model": "modelmill-tiny", "messages": [{"role": "user", "content": content}], "max_tokens": 3,
                     "temperature": 0, **body}}


def jsonl(lines: list) -> bytes:
    return ("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n").encode()


def create(client, lines: list, endpoint: str = CHAT, **extra):
    f = upload(client, jsonl(lines), purpose="batch", filename="in.jsonl")
    return client.post("/v1/batches", json={"input_file_id": f["id"], "endpoint": endpoint,
                                            "completion_window": "24h", **extra})


def created(client, lines: list, **extra) -> dict:
    r = create(client, lines, **extra)
    assert r.status_code == 200, r.text
    return r.json()


def file_lines(client, file_id: str) -> list[dict]:
    meta = client.get(f"/v1/files/{file_id}").json()
    assert_matches(meta, "OpenAIFile")
    assert meta["purpose"] == "batch_output"
    return [json.loads(line) for line in client.get(f"/v1/files/{file_id}/content").text.splitlines()]


def test_create_refuses_bad_fields(client):
    f = upload(client, jsonl([chat_line("a")]), purpose="batch")
    base = {"input_file_id": f["id"], "endpoint": CHAT, "completion_window": "24h"}
    cases = [({"endpoint": "/v1/embeddings"}, "endpoint"), ({"endpoint": "/v2/x"}, "endpoint"),
             ({"completion_window": "1h"}, "completion_window"), ({"metadata": {"k": 1}}, "metadata"),
             ({"output_expires_after": {"anchor": "created_at", "seconds": 10}}, "output_expires_after.seconds"),
             ({"output_expires_after": {"anchor": "now", "seconds": 3600}}, "output_expires_after.anchor"),
             ({"input_file_id": 5}, "input_file_id"), ({"priority": 1}, "priority")]
    for change, param in cases:
        r = client.post("/v1/batches", json={**base, **change})
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (change, r.text)
    r = client.post("/v1/batches", json={**base, "input_file_id": "file-nope"})
    assert r.status_code == 404 and r.json()["error"]["param"] == "input_file_id"
    tuning = upload(client, jsonl([chat_line("a")]), purpose="fine-tune")
    r = client.post("/v1/batches", json={**base, "input_file_id": tuning["id"]})
    assert r.status_code == 400 and "purpose 'batch'" in r.json()["error"]["message"]
    assert client.get("/v1/batches").json()["data"] == []


def test_each_bad_line_is_named_with_its_field(client):
    lines = [chat_line("ok"),
             {**chat_line("b"), "url": "/v1/embeddings"},
             chat_line("c", model="no-such-model"),
             chat_line("ok"),
             "{not json",
             chat_line("f", temprature=0.5),
             chat_line("g", stream=True),
             '{"custom_id": "h\\u0000", "method": "POST", "url": "/v1/chat/completions", "body": {}}']
    r = create(client, lines)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == "input_file_id" and err["code"] == "invalid_url"
    message = err["message"]
    assert "7 invalid lines" in message
    assert "line 2: url: The url '/v1/embeddings' does not match the batch's endpoint" in message
    assert "line 3: body.model:" in message and "no-such-model" in message
    assert "line 4: custom_id: The custom_id 'ok' is a duplicate of line 1's" in message
    assert "line 5: line: This line is not parseable as valid JSON" in message
    assert "line 6: body.temprature: Unrecognized request argument supplied: temprature" in message
    assert "and 2 more" in message  # line 7's stream: true, line 8's NUL
    from modelmill.service.batches import lines as batch_lines

    with pytest.raises(batch_lines.LineError, match="NUL character"):
        batch_lines.parse(8, lines[7], CHAT)
    r = create(client, [chat_line("a")], endpoint="/v1/responses")  # a chat line in a responses batch
    assert r.status_code == 400 and "line 1: url" in r.json()["error"]["message"]
    r = create(client, ["", "  "])
    assert r.status_code == 400 and r.json()["error"]["code"] == "empty_file"


def test_a_batch_runs_through_the_batched_sampler_to_openai_files(client, store, settings):
    store.webhooks.create_endpoint("proj_default", "http://127.0.0.1:9/hook", None, "whsec_test")
    lines = [chat_line(f"req-{i}", f"Say {i}") for i in range(4)]
    lines.append(chat_line("bad-bias", logit_bias={"99999999": 5}))  # refused when it runs: an error line
    lines.append(chat_line("kept", store=True, metadata={"from": "batch"}))
    batch = created(client, lines, metadata={"nightly": "yes"},
                    output_expires_after={"anchor": "created_at", "seconds": 3600})
    assert_matches(batch, "Batch")
    assert batch["status"] == "validating" and batch["model"] == "modelmill-tiny"
    assert batch["request_counts"] == {"total": 6, "completed": 0, "failed": 0}
    assert batch["expires_at"] - batch["created_at"] == 24 * 3600 and batch["metadata"] == {"nightly": "yes"}

    before = len(shared_sampler(settings).batch_history)
    assert Worker(settings, store).run_once() == batch["id"]
    history = shared_sampler(settings).batch_history[before:]
    assert max(requests for requests, _ in history) >= 2, history  # lines were decoded together

    done = client.get(f"/v1/batches/{batch['id']}").json()
    assert_matches(done, "Batch")
    assert done["status"] == "completed" and done["request_counts"] == {"total": 6, "completed": 5, "failed": 1}
    assert done["in_progress_at"] and done["finalizing_at"] and done["completed_at"]
    assert done["usage"]["input_tokens"] > 0 and done["usage"]["output_tokens"] > 0
    out = file_lines(client, done["output_file_id"])
    assert [o["custom_id"] for o in out] == ["req-0", "req-1", "req-2", "req-3", "kept"]
    for o in out:
        assert o["error"] is None and o["id"].startswith("batch_req_")
        assert o["response"]["status_code"] == 200 and o["response"]["request_id"].startswith("req_")
        assert_matches(o["response"]["body"], "CreateChatCompletionResponse")
    errs = file_lines(client, done["error_file_id"])
    assert [e["custom_id"] for e in errs] == ["bad-bias"]
    assert errs[0]["response"]["status_code"] == 400 and errs[0]["response"]["body"]["error"]["param"]
    stored = client.get(f"/v1/chat/completions/{out[-1]['response']['body']['id']}")
    assert stored.status_code == 200 and stored.json()["metadata"] == {"from": "batch"}
    assert store.files.get(done["output_file_id"]).expires_at is not None
    assert [e["type"] for e in store.webhooks.events(project_id="proj_default")] == ["batch.completed"]


def test_responses_batch(client, store, settings):
    lines = [{"custom_id": f"r{i}", "method": "POST", "url": "/v1/responses",
              "body": {"model": "modelmill-tiny", "input": f"Say {i}", "max_output_tokens": 3, "temperature": 0}}
             for i in range(2)]
    batch = created(client, lines, endpoint="/v1/responses")
    Worker(settings, store).run_once()
    done = client.get(f"/v1/batches/{batch['id']}").json()
    assert done["status"] == "completed" and done["request_counts"]["completed"] == 2
    out = file_lines(client, done["output_file_id"])
    for o in out:
        body = o["response"]["body"]
        assert_matches(body, "Response")
        assert client.get(f"/v1/responses/{body['id']}").status_code == 200  # stored, as /v1/responses does


def test_cancel_of_a_batch_nobody_holds_is_immediate(client, store, settings):
    batch = created(client, [chat_line("a"), chat_line("b")])
    r = client.post(f"/v1/batches/{batch['id']}/cancel")
    assert r.status_code == 200, r.text
    body = r.json()
    assert_matches(body, "Batch")
    assert body["status"] == "cancelled" and body["cancelling_at"] and body["cancelled_at"]
    assert body["output_file_id"] is None
    errs = file_lines(client, body["error_file_id"])
    assert [(e["custom_id"], e["error"]["code"]) for e in errs] == [("a", "batch_cancelled"), ("b", "batch_cancelled")]
    assert Worker(settings, store).run_once() is None  # nothing left to claim
    assert client.post(f"/v1/batches/{batch['id']}/cancel").status_code == 409


def test_cancel_mid_run_stops_and_keeps_what_was_answered(client, store, settings, monkeypatch):
    from modelmill.service.batches import lines as batch_lines

    monkeypatch.setattr(batch_run, "CONCURRENCY", 1)
    monkeypatch.setattr(batch_run, "RECORD_EVERY_S", 0.05)
    batch = created(client, [chat_line(f"c{i}") for i in range(5)])
    answer, record, asked, answers = batch_lines.answer, BatchQueue.record_in, threading.Event(), []

    def record_then_cancel(self, c, lease, results):
        record(self, c, lease, results)
        if not answers:  # the API cancels while the batch runs (its worker holds it)
            answers.append(None)
            threading.Thread(target=lambda: (answers.append(client.post(f"/v1/batches/{batch['id']}/cancel").json()),
                                             asked.set())).start()

    def later_lines_wait_for_the_cancel(prepared, line, *args):
        if line.number > 1:
            asked.wait(10)
        return answer(prepared, line, *args)

    monkeypatch.setattr(BatchQueue, "record_in", record_then_cancel)
    monkeypatch.setattr(batch_lines, "answer", later_lines_wait_for_the_cancel)
    Worker(settings, store).run_once()
    assert answers[1]["status"] == "cancelling"  # held by the worker: asked, then honoured
    done = client.get(f"/v1/batches/{batch['id']}").json()
    assert done["status"] == "cancelled" and 1 <= done["request_counts"]["completed"] < 5
    out = file_lines(client, done["output_file_id"])
    errs = file_lines(client, done["error_file_id"])
    assert sorted(o["custom_id"] for o in out + errs) == [f"c{i}" for i in range(5)]  # each line once
    assert all(e["error"]["code"] == "batch_cancelled" for e in errs)


class WorkerDied(BaseException):
    """Stands for SIGKILL: nothing in the worker catches it."""


def test_a_dead_workers_batch_resumes_without_answering_a_line_twice(client, store, settings, monkeypatch):
    monkeypatch.setattr(batch_run, "CONCURRENCY", 2)
    monkeypatch.setattr(batch_run, "RECORD_EVERY_S", 0.05)
    batch = created(client, [chat_line(f"k{i}", f"Count to {i}") for i in range(6)])
    original, calls = BatchQueue.record_in, []

    def die_on_second_record(self, c, lease, results):
        calls.append(len(results))
        if len(calls) == 2:
            raise WorkerDied()
        original(self, c, lease, results)

    monkeypatch.setattr(BatchQueue, "record_in", die_on_second_record)
    with pytest.raises(WorkerDied):
        Worker(settings, store, worker_id="dead").run_once()
    mid = client.get(f"/v1/batches/{batch['id']}").json()
    assert mid["status"] == "in_progress" and mid["request_counts"]["completed"] == calls[0]

    store.db.execute("UPDATE batches SET lease_expires_at = 0 WHERE id = ?", (batch["id"],))  # the lease runs out
    monkeypatch.setattr(BatchQueue, "record_in", original)
    assert Worker(settings, store, worker_id="next").run_once() == batch["id"]
    done = client.get(f"/v1/batches/{batch['id']}").json()
    assert done["status"] == "completed" and done["request_counts"] == {"total": 6, "completed": 6, "failed": 0}
    lines = [r[0] for r in store.db.all("SELECT line FROM batch_results WHERE batch_id = ?", (batch["id"],))]
    assert sorted(lines) == [1, 2, 3, 4, 5, 6]
    assert [o["custom_id"] for o in file_lines(client, done["output_file_id"])] == [f"k{i}" for i in range(6)]
    assert store.batches.by_id(batch["id"]).attempts == 2


def test_shutdown_hands_the_batch_back_and_expiry_ends_it(client, store, settings, monkeypatch):
    monkeypatch.setattr(batch_run, "CONCURRENCY", 1)
    monkeypatch.setattr(batch_run, "RECORD_EVERY_S", 0.05)
    from modelmill.service.batches import lines as batch_lines

    batch = created(client, [chat_line(f"s{i}") for i in range(4)])
    stop, original, answer = threading.Event(), BatchQueue.record_in, batch_lines.answer

    def record_then_stop(self, c, lease, results):
        original(self, c, lease, results)
        stop.set()

    def first_line_then_wait(prepared, line, sampler, settings, cancel):
        if line.number > 1:  # still in flight when the worker stops (so never all four, however fast)
            cancel.wait(10)
        return answer(prepared, line, sampler, settings, cancel)

    monkeypatch.setattr(BatchQueue, "record_in", record_then_stop)
    monkeypatch.setattr(batch_lines, "answer", first_line_then_wait)
    Worker(settings, store, stop_event=stop).run_once()
    mid = store.batches.by_id(batch["id"])
    assert mid.status == "in_progress" and mid.lease_owner is None and mid.completed == 1

    monkeypatch.setattr(BatchQueue, "record_in", original)
    monkeypatch.setattr(batch_lines, "answer", answer)
    store.db.execute("UPDATE batches SET expires_at = 0 WHERE id = ?", (batch["id"],))
    Worker(settings, store).run_once()
    done = client.get(f"/v1/batches/{batch['id']}").json()
    assert done["status"] == "expired" and done["expired_at"] and done["request_counts"]["completed"] == mid.completed
    errs = file_lines(client, done["error_file_id"])
    assert [e["error"]["code"] for e in errs] == ["batch_expired"] * (4 - mid.completed)
    assert len(file_lines(client, done["output_file_id"])) == mid.completed


def test_list_is_newest_first_with_a_cursor_and_scoped(client):
    ids = [created(client, [chat_line("x")])["id"] for _ in range(3)]
    page = client.get("/v1/batches", params={"limit": 2}).json()
    assert_matches(page, "ListBatchesResponse")
    assert [b["id"] for b in page["data"]] == ids[::-1][:2] and page["has_more"]
    rest = client.get("/v1/batches", params={"after": page["last_id"]}).json()
    assert [b["id"] for b in rest["data"]] == [ids[0]] and not rest["has_more"]
    assert client.get("/v1/batches/batch_nope").status_code == 404


def test_a_waiting_training_job_comes_first(client, store, settings, monkeypatch):
    from modelmill.service.batches import lines as batch_lines
    from tests.service.conftest import create_job, training_jsonl

    monkeypatch.setattr(batch_run, "CONCURRENCY", 1)
    monkeypatch.setattr(batch_run, "RECORD_EVERY_S", 0.05)
    batch = created(client, [chat_line(f"y{i}") for i in range(3)])
    job_file = upload(client, training_jsonl(2))  # too few lines: the job fails fast in validation
    original, jobs = batch_lines.answer, []

    def answer_then_queue_a_job(prepared, line, sampler, settings, cancel):
        if line.number > 1:
            cancel.wait(10)  # still in flight when the batch makes way (then stopped and left for later)
        out = original(prepared, line, sampler, settings, cancel)
        if not jobs:  # while the batch runs, a job arrives
            jobs.append(create_job(client, job_file["id"]))
        return out

    monkeypatch.setattr(batch_lines, "answer", answer_then_queue_a_job)
    worker = Worker(settings, store)
    assert worker.run_once() == batch["id"]
    mid = store.batches.by_id(batch["id"])
    assert mid.status == "in_progress" and mid.lease_owner is None and mid.completed <= 1  # handed back
    assert worker.run_once() == jobs[0]["id"]  # the job first
    monkeypatch.setattr(batch_lines, "answer", original)
    assert worker.run_once() == batch["id"]
    done = store.batches.by_id(batch["id"])
    assert done.status == "completed" and done.completed == 3 and done.reclaims == 0 and done.attempts == 2


@pytest.fixture(scope="module")
def random_adapter(tmp_path_factory, shared_models_dir):
    """A random LoRA on modelmill-tiny (init_lora_weights=False: it changes the outputs), made once."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from modelmill.ml import models

    home = tmp_path_factory.mktemp("adapter-home")
    (home / "models").symlink_to(shared_models_dir, target_is_directory=True)
    out = tmp_path_factory.mktemp("random-adapter")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(11)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(models.ensure_base(home, "modelmill-tiny")),
                               LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False,
                                          task_type="CAUSAL_LM"))
    model.save_pretrained(out, safe_serialization=True)
    return out


def test_ft_models_answer_as_chat_completions_do(client, store, settings, random_adapter):
    """A fine-tuned model (a simulated job's, with a real adapter recorded like the worker's) next to
    the base model in one batch: each line gets exactly the answer /v1/chat/completions gives."""
    import shutil

    from modelmill.service.models import adapters
    from tests.service.conftest import create_job, training_jsonl

    job = create_job(client, upload(client, training_jsonl())["id"])
    queue = store.job_queue(lease_seconds=30)
    lease = queue.claim("simulated-worker")
    adapter_dir = settings.jobs_dir / job["id"] / "adapter"
    shutil.copytree(random_adapter, adapter_dir)
    adapters.record(store, job["id"], adapter_dir)
    ft = store.jobs.get(job["id"]).ft_name
    queue.finish(lease, "succeeded", fine_tuned_model=ft, adapter_dir=str(adapter_dir), trained_tokens=1,
                 result_files=[], message="done")

    lines = [chat_line(f"{name}-{i}", f"Name a colour {i}.", model=model, max_tokens=6)
             for i in range(2) for name, model in (("base", "modelmill-tiny"), ("ft", ft))]
    batch = created(client, lines)
    assert "model" not in batch  # lines name different models
    Worker(settings, store).run_once()
    done = client.get(f"/v1/batches/{batch['id']}").json()
    assert done["status"] == "completed" and done["request_counts"]["completed"] == 4
    said = {}
    for out, line in zip(file_lines(client, done["output_file_id"]), lines):
        direct = client.post(CHAT, json=line["body"]).json()
        answer = out["response"]["body"]
        assert answer["model"] == line["body"]["model"]
        said[out["custom_id"]] = answer["choices"][0]["message"]["content"]
        assert said[out["custom_id"]] == direct["choices"][0]["message"]["content"]
    assert [said["ft-0"], said["ft-1"]] != [said["base-0"], said["base-1"]]  # the adapter was used
