"""The whole user flow through the official openai SDK against a live server:
upload -> job -> events -> checkpoints -> chat with the fine-tuned model and a checkpoint."""

from __future__ import annotations

import base64
import json

import httpx
import pytest

from tests.e2e.conftest import SMART_HOME, wait_for
from tools.datasets import short_dataset
from tests.spec_check import assert_matches


def raw_json(raw) -> dict:
    return json.loads(raw.http_response.text)


def test_models_list_has_builtin_bases(client):
    raw = client.models.with_raw_response.list()
    body = raw_json(raw)
    assert_matches(body, "ListModelsResponse")
    ids = {m["id"] for m in body["data"]}
    assert {"SmolLM2-135M-Instruct", "modelmill-tiny"} <= ids


def test_file_roundtrip(client, train_file):
    assert_matches(client.files.with_raw_response.retrieve(train_file.id).http_response.json(), "OpenAIFile")
    assert train_file.filename == "train.jsonl" and train_file.purpose == "fine-tune"
    assert train_file.id != "train.jsonl"  # the stored name is a server id
    content = client.files.content(train_file.id).read()
    assert content == short_dataset(48)
    listed = client.files.with_raw_response.list(purpose="fine-tune").http_response.json()
    assert_matches(listed, "ListFilesResponse")
    assert train_file.id in {f["id"] for f in listed["data"]}


def test_sft_job_end_to_end(client, train_file, valid_file):
    raw = client.fine_tuning.jobs.with_raw_response.create(
        training_file=train_file.id, validation_file=valid_file.id, model="modelmill-tiny",
        suffix="e2e", seed=1, metadata={"suite": "e2e"},
        method={"type": "supervised", "supervised": {"hyperparameters": {
            "n_epochs": 2, "batch_size": 8, "learning_rate_multiplier": "auto"}}})
    created = raw_json(raw)
    assert_matches(created, "FineTuningJob")
    assert created["status"] in ("validating_files", "queued")
    job = wait_for(client, created["id"], {"succeeded", "failed", "cancelled"})
    assert job.status == "succeeded", job.error
    body = client.fine_tuning.jobs.with_raw_response.retrieve(job.id).http_response.json()
    assert_matches(body, "FineTuningJob")
    hp = body["method"]["supervised"]["hyperparameters"]
    assert hp["n_epochs"] == 2 and hp["batch_size"] == 8
    assert isinstance(hp["learning_rate_multiplier"], (int, float))  # "auto" resolved and shown
    assert body["trained_tokens"] > 0 and body["finished_at"] >= body["created_at"]
    assert body["fine_tuned_model"].startswith("ft:modelmill-tiny:") and ":e2e:" in body["fine_tuned_model"]

    events = client.fine_tuning.jobs.with_raw_response.list_events(job.id, limit=100).http_response.json()
    assert_matches(events, "ListFineTuningJobEventsResponse")
    metrics = [e["data"] for e in events["data"] if e.get("type") == "metrics"]
    assert metrics, "no metrics events"
    assert all("train_loss" in m and "step" in m for m in metrics)
    assert any("valid_loss" in m for m in metrics) and any("full_valid_loss" in m for m in metrics)

    ckpts = client.fine_tuning.jobs.checkpoints.with_raw_response.list(job.id).http_response.json()
    assert_matches(ckpts, "ListFineTuningJobCheckpointsResponse")
    assert 1 <= len(ckpts["data"]) <= 3
    for c in ckpts["data"]:
        assert c["fine_tuned_model_checkpoint"] == f"{body['fine_tuned_model']}:ckpt-step-{c['step_number']}"

    listed = client.fine_tuning.jobs.list(metadata={"suite": "e2e"})
    assert [j.id for j in listed.data] == [job.id]

    # What OpenAI's cookbook reads: the result file is base64-encoded CSV, and job.eval_id is the
    # job's before/after eval (there from the create response on), whose runs hold the scores.
    csv_text = base64.b64decode(client.files.content(job.result_files[0]).text).decode()
    header, *rows = csv_text.splitlines()
    assert header.startswith("step,train_loss,") and len(rows) == len(metrics)
    assert created["eval_id"] and job.eval_id == created["eval_id"]
    runs = client.evals.runs.list(job.eval_id).data
    assert {r.name for r in runs} >= {f"{job.id} base", f"{job.id} final"}

    messages = [{"role": "user", "content": "Turn on the kitchen lights"}]
    for model in (body["fine_tuned_model"], ckpts["data"][0]["fine_tuned_model_checkpoint"]):
        chat = client.chat.completions.with_raw_response.create(model=model, messages=messages, max_tokens=8,
                                                                temperature=0)
        out = chat.http_response.json()
        assert_matches(out, "CreateChatCompletionResponse")
        assert out["model"] == model and out["usage"]["completion_tokens"] >= 1

    ids = {m.id for m in client.models.list().data}
    assert body["fine_tuned_model"] in ids


def test_chat_streaming_and_tools(client):
    stream = client.chat.completions.create(model="modelmill-tiny", stream=True, max_tokens=6, temperature=0,
                                            messages=[{"role": "user", "content": "hi"}],
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1
    for ch in chunks:
        assert_matches(ch.to_dict(), "CreateChatCompletionStreamResponse")
    tools = json.loads((SMART_HOME / "test.jsonl").read_text().splitlines()[0])["tools"]
    resp = client.chat.completions.create(model="modelmill-tiny", tools=tools, n=2, max_tokens=4, seed=5,
                                          messages=[{"role": "user", "content": "lights on"}])
    assert len(resp.choices) == 2 and resp.usage.total_tokens > resp.usage.prompt_tokens


def test_ft_model_continues_training(client, train_file, sft_model):
    second = client.fine_tuning.jobs.create(training_file=train_file.id, model=sft_model,
                                            method={"type": "supervised", "supervised": {
                                                "hyperparameters": {"n_epochs": 1, "batch_size": 8}}})
    second = wait_for(client, second.id, {"succeeded", "failed"})
    assert second.status == "succeeded", second.error
    assert second.fine_tuned_model.startswith("ft:modelmill-tiny:")


@pytest.mark.parametrize("path,body", [
    ("/fine_tuning/jobs/ftjob-nope", None),
    ("/files/file-nope", None),
    ("/models/no-such-model", None),
    ("/no/such/route", None),
])
def test_not_found_envelope(server, path, body):
    r = httpx.get(server.base_url + path)
    assert r.status_code == 404
    err = r.json()["error"]
    assert_matches(r.json(), "ErrorResponse")
    assert err["message"] and err["type"]


def test_unknown_model_for_chat_and_job(client, train_file):
    import openai

    with pytest.raises(openai.NotFoundError) as ei:
        client.chat.completions.create(model="ft:nope:x::y", messages=[{"role": "user", "content": "x"}])
    assert ei.value.body["message"]
    with pytest.raises(openai.APIStatusError) as ei:
        client.fine_tuning.jobs.create(training_file=train_file.id, model="gpt-17")
    assert ei.value.status_code in (400, 404) and ei.value.body["param"] == "model"
