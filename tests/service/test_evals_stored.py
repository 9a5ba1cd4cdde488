"""Evals over what a project stored: a `stored_completions` config with a completions run over
stored chat completions (graded as stored, or re-sampled with another model), and a `logs` config
with a responses run over stored Responses, on modelmill-tiny. Another project's stored objects
are never selected."""

from __future__ import annotations

import threading

from modelmill.service.evals.runner import run_next_eval
from tests.spec_check import assert_matches

SAME_MODEL = {"type": "string_check", "name": "model", "input": "{{item.model}}", "reference": "modelmill-tiny",
              "operation": "eq"}
NON_EMPTY = {"type": "string_check", "name": "said", "input": "{{sample.output_text}}", "reference": "",
             "operation": "ne"}


def ok(r, status: int = 200) -> dict:
    assert r.status_code == status, r.text
    return r.json()


def run_all(client, settings, store, eval_id: str, data_source: dict) -> tuple[dict, list[dict]]:
    run = ok(client.post(f"/v1/evals/{eval_id}/runs", json={"data_source": data_source}))
    while run_next_eval(settings, store, "test-worker", threading.Event()) is not None:
        pass
    run = ok(client.get(f"/v1/evals/{eval_id}/runs/{run['id']}"))
    assert_matches(run, "EvalRun")
    items = ok(client.get(f"/v1/evals/{eval_id}/runs/{run['id']}/output_items", params={"limit": 100}))["data"]
    return run, items


def test_stored_completions_eval_graded_as_stored_and_resampled(client, settings, store):
    body = {"model": "modelmill-tiny", "max_tokens": 3, "temperature": 0, "store": True,
            "messages": [{"role": "user", "content": "hi"}]}
    made = [ok(client.post("/v1/chat/completions", json={**body, "metadata": {"usecase": "greet"}})) for _ in range(2)]
    ok(client.post("/v1/chat/completions", json={**body, "metadata": {"usecase": "other"}}))
    store.stored_completions.add("proj_someone_else", {**made[0], "id": "chatcmpl-foreign"},
                                 {"messages": []}, {"usecase": "greet"})

    ev = ok(client.post("/v1/evals", json={"name": "stored", "testing_criteria": [SAME_MODEL, NON_EMPTY],
                                           "data_source_config": {"type": "stored_completions",
                                                                  "metadata": {"usecase": "greet"}}}))
    assert_matches(ev, "Eval")
    assert ev["data_source_config"]["type"] == "stored_completions"

    source = {"type": "stored_completions", "metadata": {"usecase": "greet"}}
    run, items = run_all(client, settings, store, ev["id"], {"type": "completions", "source": source})
    assert run["status"] == "completed" and run["result_counts"]["total"] == 2
    assert sorted(i["datasource_item"]["id"] for i in items) == sorted(c["id"] for c in made)
    stored_text = {c["id"]: c["choices"][0]["message"]["content"] for c in made}
    for item in items:
        assert item["sample"]["output"][0]["content"] == stored_text[item["datasource_item"]["id"]]
        assert item["datasource_item"]["input"] == [{"role": "user", "content": "hi"}]

    resampled = {"type": "completions", "model": "modelmill-tiny", "source": {**source, "limit": 1},
                 "input_messages": {"type": "item_reference", "item_reference": "item.input"},
                 "sampling_params": {"max_completion_tokens": 2, "temperature": 0}}
    run, items = run_all(client, settings, store, ev["id"], resampled)
    assert run["status"] == "completed" and run["result_counts"]["total"] == 1
    assert items[0]["sample"]["usage"]["completion_tokens"] >= 1  # sampled now, not read back


def test_logs_eval_over_stored_responses(client, settings, store):
    made = [ok(client.post("/v1/responses", json={"model": "modelmill-tiny", "input": f"q{i}", "max_output_tokens": 3,
                                                  "instructions": "Be terse.", "metadata": {"app": "qa"}}))
            for i in range(2)]
    ok(client.post("/v1/responses", json={"model": "modelmill-tiny", "input": "x", "max_output_tokens": 2,
                                          "metadata": {"app": "qa"}, "store": False}))  # not stored: not selected
    ev = ok(client.post("/v1/evals", json={"name": "logs", "testing_criteria": [SAME_MODEL],
                                           "data_source_config": {"type": "logs"}}))
    assert_matches(ev, "Eval")
    run, items = run_all(client, settings, store, ev["id"], {
        "type": "responses", "source": {"type": "responses", "metadata": {"app": "qa"},
                                        "instructions_search": "terse"}})
    assert run["status"] == "completed" and run["result_counts"] == {"total": 2, "errored": 0, "failed": 0,
                                                                      "passed": 2}
    by_id = {i["datasource_item"]["id"]: i for i in items}
    assert set(by_id) == {r["id"] for r in made}
    first = by_id[made[0]["id"]]
    assert first["datasource_item"]["input"] == [{"role": "system", "content": "Be terse."},
                                                 {"role": "user", "content": "q0"}]
    assert first["sample"]["output"][0]["content"] == made[0]["output"][0]["content"][0]["text"]


def test_stored_sources_bad_input(client):
    ev = ok(client.post("/v1/evals", json={"name": "bad", "testing_criteria": [SAME_MODEL],
                                           "data_source_config": {"type": "stored_completions"}}))
    cases = [
        ({"type": "completions", "source": {"type": "stored_completions", "limit": 0}}, "data_source.source.limit"),
        ({"type": "completions", "source": {"type": "stored_completions", "colour": 1}}, "data_source.source.colour"),
        ({"type": "completions", "source": {"type": "responses"}}, "data_source.source.type"),
        ({"type": "responses", "source": {"type": "responses", "reasoning_effort": "high"}},
         "data_source.source.reasoning_effort"),
        ({"type": "completions", "source": {"type": "stored_completions", "metadata": {"none": "match"}}},
         "data_source.source"),
    ]
    for data_source, param in cases:
        r = client.post(f"/v1/evals/{ev['id']}/runs", json={"data_source": data_source})
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    r = client.post("/v1/evals", json={"name": "x", "testing_criteria": [SAME_MODEL],
                                       "data_source_config": {"type": "logs", "item_schema": {}}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "data_source_config.item_schema"
