"""Evals through the official openai SDK against a live server on modelmill-tiny: create, runs on
jsonl (file id and inline) and completions sources, output items, cancel, update/delete, 4xx
errors naming the field, the HTML report, and a job's before/after table with `modelmill jobs report`."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import httpx
import openai
import pytest

from tests.e2e.conftest import tiny_job, wait_for
from tools.datasets import short_dataset
from tests.spec_check import assert_matches

EXACT = {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}", "reference": "{{item.label}}",
         "operation": "eq"}
SCHEMA = {"type": "object", "properties": {"label": {"type": "string"}, "q": {"type": "string"}},
          "required": ["label"]}


def raw(call, *args, **kwargs) -> dict:
    """The JSON body of a `with_raw_response` call (to check it against OpenAI's schema)."""
    return json.loads(call(*args, **kwargs).http_response.text)


def wait_run(client, eval_id: str, run_id: str, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = raw(client.evals.runs.with_raw_response.retrieve, run_id, eval_id=eval_id)
        if body["status"] in ("completed", "failed", "canceled"):
            assert_matches(body, "EvalRun")
            return body
        time.sleep(0.2)
    raise AssertionError(f"run {run_id} still {body['status']}")


@pytest.fixture(scope="module")
def ev(client) -> dict:
    body = raw(client.evals.with_raw_response.create, name="labels", metadata={"suite": "e2e"},
               data_source_config={"type": "custom", "item_schema": SCHEMA, "include_sample_schema": True},
               testing_criteria=[EXACT])
    assert_matches(body, "Eval")
    return body


def test_eval_retrieve_list_update_delete(client, ev):
    got = raw(client.evals.with_raw_response.retrieve, ev["id"])
    assert_matches(got, "Eval")
    assert got == ev and got["data_source_config"]["schema"]["properties"]["item"] == SCHEMA
    listed = raw(client.evals.with_raw_response.list, limit=100)
    assert_matches(listed, "EvalList")
    assert ev["id"] in [e["id"] for e in listed["data"]]

    other = client.evals.create(name="tmp", data_source_config={"type": "custom", "item_schema": SCHEMA},
                                testing_criteria=[EXACT])
    updated = raw(client.evals.with_raw_response.update, other.id, name="renamed", metadata={"k": "v"})
    assert_matches(updated, "Eval")
    assert updated["name"] == "renamed" and updated["metadata"] == {"k": "v"}
    deleted = client.evals.delete(other.id)
    assert deleted.deleted and deleted.eval_id == other.id
    with pytest.raises(openai.NotFoundError):
        client.evals.retrieve(other.id)


def test_jsonl_runs_from_a_file_and_inline(client, ev):
    lines = [{"item": {"label": "on"}, "sample": {"output_text": "on"}},
             {"item": {"label": "off"}, "sample": {"output_text": "on"}}]
    f = client.files.create(file=("e.jsonl", "\n".join(map(json.dumps, lines)).encode()), purpose="evals")
    by_file = raw(client.evals.runs.with_raw_response.create, ev["id"], name="file",
                  data_source={"type": "jsonl", "source": {"type": "file_id", "id": f.id}})
    assert_matches(by_file, "EvalRun")
    inline = client.evals.runs.create(ev["id"], data_source={"type": "jsonl", "source": {
        "type": "file_content", "content": lines + [{"item": {"label": "x"}, "sample": {"output_text": "x"}}]}})
    done = wait_run(client, ev["id"], by_file["id"])
    assert done["status"] == "completed"
    assert done["result_counts"] == {"total": 2, "errored": 0, "failed": 1, "passed": 1}
    assert done["per_testing_criteria_results"] == [{"testing_criteria": "exact", "passed": 1, "failed": 1}]
    assert wait_run(client, ev["id"], inline.id)["result_counts"]["passed"] == 2

    items = raw(client.evals.runs.output_items.with_raw_response.list, by_file["id"], eval_id=ev["id"])
    assert_matches(items, "EvalRunOutputItemList")
    assert [i["status"] for i in items["data"]] == ["pass", "fail"]
    failed = client.evals.runs.output_items.list(by_file["id"], eval_id=ev["id"], status="fail").data
    assert [i.datasource_item_id for i in failed] == [1]
    one = raw(client.evals.runs.output_items.with_raw_response.retrieve, items["data"][1]["id"], eval_id=ev["id"],
              run_id=by_file["id"])
    assert_matches(one, "EvalRunOutputItem")
    assert one["datasource_item"] == {"label": "off"} and one["results"][0]["passed"] is False

    runs = raw(client.evals.runs.with_raw_response.list, ev["id"], limit=1)
    assert_matches(runs, "EvalRunList")
    assert runs["has_more"] and runs["data"][0]["id"] == by_file["id"]

    page = httpx.get(done["report_url"], headers={"Authorization": "Bearer test-key"})
    assert page.status_code == 200 and "exact" in page.text and "50.0%" in page.text


def test_completions_run_on_the_tiny_model(client, ev):
    run = client.evals.runs.create(ev["id"], name="tiny", data_source={
        "type": "completions", "model": "modelmill-tiny",
        "input_messages": {"type": "template", "template": [{"role": "user", "content": "Say {{item.label}}"}]},
        "sampling_params": {"temperature": 0, "max_completion_tokens": 3, "seed": 1},
        "source": {"type": "file_content", "content": [{"item": {"label": "on"}}, {"item": {"label": "off"}}]}})
    done = wait_run(client, ev["id"], run.id)
    assert done["status"] == "completed", done["error"]
    assert done["model"] == "modelmill-tiny" and done["result_counts"]["total"] == 2
    assert done["per_model_usage"][0]["invocation_count"] == 2
    items = raw(client.evals.runs.output_items.with_raw_response.list, run.id, eval_id=ev["id"])
    assert_matches(items, "EvalRunOutputItemList")
    assert items["data"][0]["sample"]["input"] == [{"role": "user", "content": "Say on"}]


def test_cancel_a_run(client, ev):
    content = [{"item": {"label": str(i)}} for i in range(64)]
    run = client.evals.runs.create(ev["id"], data_source={
        "type": "completions", "model": "modelmill-tiny",
        "input_messages": {"type": "item_reference", "item_reference": "item.label"},
        "sampling_params": {"max_completion_tokens": 16}, "source": {"type": "file_content", "content": content}})
    cancelled = raw(client.evals.runs.with_raw_response.cancel, run.id, eval_id=ev["id"])
    assert_matches(cancelled, "EvalRun")
    done = wait_run(client, ev["id"], run.id)
    assert done["status"] == "canceled" and done["result_counts"]["total"] < 64
    with pytest.raises(openai.ConflictError):
        client.evals.runs.cancel(run.id, eval_id=ev["id"])
    gone = client.evals.runs.delete(run.id, eval_id=ev["id"])
    assert gone.deleted and gone.run_id == run.id


@pytest.mark.parametrize("data_source, param", [
    ({"type": "jsonl", "source": {"type": "file_content", "content": [{"item": {"q": "no label"}}]}},
     "data_source.source.content[0].item"),
    ({"type": "jsonl", "source": {"type": "file_id", "id": "file-missing"}}, "data_source.source.id"),
    ({"type": "completions", "model": "modelmill-tiny", "source": {"type": "file_content", "content": [
        {"item": {"label": "a"}}]}, "input_messages": {"type": "template", "template": [
            {"role": "user", "content": "{{item.nope}}"}]}}, "data_source.input_messages"),
    ({"type": "completions", "model": "modelmill-tiny", "source": {"type": "file_content", "content": [
        {"item": {"label": "a"}}]}, "input_messages": {"type": "item_reference", "item_reference": "item.label"},
      "sampling_params": {"top_p": 3}}, "data_source.sampling_params.top_p"),
])
def test_bad_runs_are_4xx_naming_the_field(client, ev, data_source, param):
    with pytest.raises(openai.BadRequestError) as e:
        client.evals.runs.create(ev["id"], data_source=data_source)
    assert e.value.status_code == 400 and e.value.param == param


def test_bad_evals_are_4xx_naming_the_field(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.evals.create(data_source_config={"type": "custom", "item_schema": SCHEMA},
                            testing_criteria=[{**EXACT, "operation": "contains"}])
    assert e.value.param == "testing_criteria[0].operation"
    with pytest.raises(openai.BadRequestError) as e:
        client.evals.create(data_source_config={"type": "batch_logs"}, testing_criteria=[EXACT])
    assert e.value.param == "data_source_config.type"
    with pytest.raises(openai.NotFoundError) as e:
        client.evals.runs.create("eval_missing", data_source={"type": "jsonl", "source": {
            "type": "file_content", "content": [{"item": {"label": "a"}}]}})


def test_job_with_validation_file_reports_before_after(server, client):
    train = client.files.create(file=("t.jsonl", short_dataset(16, seed=5)), purpose="fine-tune")
    valid = client.files.create(file=("v.jsonl", short_dataset(3, seed=6)), purpose="fine-tune")
    job = tiny_job(client, train.id, validation_file=valid.id)
    done = wait_for(client, job.id, {"succeeded", "failed", "cancelled"})
    assert done.status == "succeeded", done.error
    events = client.fine_tuning.jobs.list_events(job.id, limit=200).data
    [table] = [e.data["eval_comparison"] for e in events if "eval_comparison" in (e.data or {})]
    assert [r["label"] for r in table["rows"]] == ["base", "final"]
    assert table["rows"][1]["model"] == done.fine_tuned_model and table["rows"][0]["total"] == 3

    out = subprocess.run([sys.executable, "-m", "modelmill.cli", "jobs", "report", job.id, "--base-url",
                          server.base_url, "--api-key", "test-key"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "exact_match" in out.stdout and "base" in out.stdout and done.fine_tuned_model in out.stdout
    base_url = server.base_url.removesuffix("/v1")
    assert f"{base_url}/evals/{table['rows'][0]['eval_id']}/runs/{table['rows'][0]['run_id']}" in out.stdout
