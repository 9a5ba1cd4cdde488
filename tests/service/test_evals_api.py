"""/v1/evals through the app (TestClient) with runs executed by a real Worker on modelmill-tiny:
shapes against OpenAI's spec, pagination, 4xx errors that name the field, the HTML report."""

from __future__ import annotations

import json

import pytest

from modelmill.service.worker.loop import Worker
from tests.service.conftest import upload
from tests.service.tenancy_world import cookie
from tests.spec_check import assert_matches

EXACT = {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}", "reference": "{{item.label}}",
         "operation": "eq"}
FUZZY = {"type": "text_similarity", "name": "fuzzy", "input": "{{sample.output_text}}", "reference": "{{item.label}}",
         "evaluation_metric": "fuzzy_match", "pass_threshold": 0.5}
ITEM_SCHEMA = {"type": "object", "properties": {"q": {"type": "string"}, "label": {"type": "string"}},
               "required": ["label"]}


def make_eval(client, **extra) -> dict:
    body = {"name": "labels", "data_source_config": {"type": "custom", "item_schema": ITEM_SCHEMA,
                                                     "include_sample_schema": True},
            "testing_criteria": [EXACT, FUZZY], "metadata": {"team": "a"}, **extra}
    r = client.post("/v1/evals", json=body)
    assert r.status_code == 200, r.text
    assert_matches(r.json(), "Eval")
    return r.json()


def inline(*pairs) -> dict:
    return {"type": "file_content", "content": [{"item": {"label": label}, "sample": {"output_text": out}}
                                                for label, out in pairs]}


def create_run(client, eval_id: str, data_source: dict, **extra) -> dict:
    r = client.post(f"/v1/evals/{eval_id}/runs", json={"data_source": data_source, **extra})
    assert r.status_code == 200, r.text
    assert_matches(r.json(), "EvalRun")
    return r.json()


def get_run(client, eval_id: str, run_id: str) -> dict:
    body = client.get(f"/v1/evals/{eval_id}/runs/{run_id}").json()
    assert_matches(body, "EvalRun")
    return body


def bad(client, method: str, url: str, body: dict, param: str, status: int = 400) -> dict:
    r = client.request(method, url, json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == param, err
    return err


def test_eval_crud_and_pagination(client):
    evs = [make_eval(client, name=f"e{i}") for i in range(3)]
    ev = evs[0]
    assert ev["object"] == "eval" and ev["metadata"] == {"team": "a"}
    schema = ev["data_source_config"]["schema"]
    assert schema["properties"]["item"] == ITEM_SCHEMA and "sample" in schema["properties"]
    assert [c["name"] for c in ev["testing_criteria"]] == ["exact", "fuzzy"]

    page = client.get("/v1/evals", params={"limit": 2}).json()
    assert_matches(page, "EvalList")
    assert [e["id"] for e in page["data"]] == [evs[0]["id"], evs[1]["id"]] and page["has_more"]
    rest = client.get("/v1/evals", params={"limit": 2, "after": page["last_id"]}).json()
    assert [e["id"] for e in rest["data"]] == [evs[2]["id"]] and not rest["has_more"]
    newest = client.get("/v1/evals", params={"order": "desc", "limit": 1}).json()
    assert newest["data"][0]["id"] == evs[2]["id"]

    updated = client.post(f"/v1/evals/{ev['id']}", json={"name": "renamed", "metadata": {"k": "v"}}).json()
    assert_matches(updated, "Eval")
    assert updated["name"] == "renamed" and updated["metadata"] == {"k": "v"}
    by_update = client.get("/v1/evals", params={"order_by": "updated_at", "order": "desc", "limit": 1}).json()
    assert by_update["data"][0]["id"] == ev["id"]

    gone = client.delete(f"/v1/evals/{ev['id']}").json()
    assert gone == {"object": "eval.deleted", "deleted": True, "eval_id": ev["id"]}
    assert client.get(f"/v1/evals/{ev['id']}").status_code == 404


@pytest.mark.parametrize("change, param", [
    ({"data_source_config": None}, "data_source_config"),
    ({"data_source_config": {"type": "logs", "item_schema": {}}}, "data_source_config.item_schema"),
    ({"data_source_config": {"type": "nope"}}, "data_source_config.type"),
    ({"data_source_config": {"type": "custom", "item_schema": {"type": "nope"}}}, "data_source_config.item_schema"),
    ({"testing_criteria": []}, "testing_criteria"),
    ({"testing_criteria": [{**EXACT, "operation": "contains"}]}, "testing_criteria[0].operation"),
    ({"testing_criteria": [EXACT, {**FUZZY, "name": "exact"}]}, "testing_criteria[1].name"),
    ({"testing_criteria": [{k: v for k, v in FUZZY.items() if k != "pass_threshold"}]},
     "testing_criteria[0].pass_threshold"),
    ({"testing_criteria": [{**EXACT, "input": "{{nope.x}}"}]}, "testing_criteria[0].input"),
    ({"metadata": {"k": 3}}, "metadata"),
])
def test_bad_eval_requests_name_the_field(client, change, param):
    body = {"name": "x", "data_source_config": {"type": "custom", "item_schema": ITEM_SCHEMA},
            "testing_criteria": [EXACT], **change}
    bad(client, "POST", "/v1/evals", {k: v for k, v in body.items() if v is not None}, param)


@pytest.mark.parametrize("url", ["/v1/evals", "/v1/fine_tuning/jobs", "/v1/fine_tuning/alpha/graders/run"])
def test_a_request_with_no_body_says_the_body_is_missing(client, url):
    r = client.post(url)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["message"] == "The request body is missing: this endpoint expects a JSON object."
    assert error["code"] == "missing_required_parameter" and error["param"] is None


def test_jsonl_run_counts_items_and_lists_output_items(client, settings, store):
    ev = make_eval(client)
    run = create_run(client, ev["id"], {"type": "jsonl", "source": inline(("a", "a"), ("b", "x"), ("cat", "cats"))},
                     name="inline", metadata={"m": "1"})
    assert run["status"] == "queued" and run["name"] == "inline" and run["error"] is None
    assert run["report_url"] == f"http://testserver/evals/{ev['id']}/runs/{run['id']}"
    assert Worker(settings, store).run_once() == run["id"]

    done = get_run(client, ev["id"], run["id"])
    assert done["status"] == "completed"
    assert done["result_counts"] == {"total": 3, "errored": 0, "failed": 2, "passed": 1}
    assert done["per_testing_criteria_results"] == [{"testing_criteria": "exact", "passed": 1, "failed": 2},
                                                    {"testing_criteria": "fuzzy", "passed": 2, "failed": 1}]

    items = client.get(f"/v1/evals/{ev['id']}/runs/{run['id']}/output_items").json()
    assert_matches(items, "EvalRunOutputItemList")
    assert [i["datasource_item_id"] for i in items["data"]] == [0, 1, 2]
    assert [i["status"] for i in items["data"]] == ["pass", "fail", "fail"]
    first = items["data"][0]
    assert first["results"][0] == {"name": "exact", "type": "string_check", "score": 1.0, "passed": True,
                                   "sample": None}
    assert first["sample"]["output"] == [{"role": "assistant", "content": "a"}]
    failing = client.get(f"/v1/evals/{ev['id']}/runs/{run['id']}/output_items", params={"status": "fail"}).json()
    assert [i["datasource_item_id"] for i in failing["data"]] == [1, 2]
    page = client.get(f"/v1/evals/{ev['id']}/runs/{run['id']}/output_items",
                      params={"limit": 1, "order": "desc"}).json()
    assert page["data"][0]["datasource_item_id"] == 2 and page["has_more"]

    one = client.get(f"/v1/evals/{ev['id']}/runs/{run['id']}/output_items/{first['id']}").json()
    assert_matches(one, "EvalRunOutputItem")
    assert one == first
    runs = client.get(f"/v1/evals/{ev['id']}/runs", params={"status": "completed"}).json()
    assert_matches(runs, "EvalRunList")
    assert [r["id"] for r in runs["data"]] == [run["id"]]


def test_jsonl_file_source_accepts_wrapped_and_bare_lines(client, settings, store):
    ev = make_eval(client)
    lines = [{"item": {"label": "a"}, "sample": {"output_text": "a"}}, {"label": "b"}]
    f = upload(client, "\n".join(json.dumps(x) for x in lines).encode(), purpose="evals", filename="e.jsonl")
    run = create_run(client, ev["id"], {"type": "jsonl", "source": {"type": "file_id", "id": f["id"]}})
    Worker(settings, store).run_once()
    done = get_run(client, ev["id"], run["id"])
    assert done["result_counts"] == {"total": 2, "errored": 0, "failed": 1, "passed": 1}


def test_bad_run_requests_name_the_field(client):
    ev = make_eval(client)
    url = f"/v1/evals/{ev['id']}/runs"
    err = bad(client, "POST", url, {"data_source": {"type": "jsonl", "source": {
        "type": "file_content", "content": [{"item": {"label": "a"}}, {"item": {"q": "no label"}}]}}},
        "data_source.source.content[1].item")
    assert "label" in err["message"]
    bad(client, "POST", url, {}, "data_source")
    # a responses run over file items samples a model: it needs one (stored responses need none)
    bad(client, "POST", url, {"data_source": {"type": "responses", "source": inline(("a", "a"))}}, "data_source.model")
    bad(client, "POST", url, {"data_source": {"type": "chats", "source": inline(("a", "a"))}}, "data_source.type")
    bad(client, "POST", url, {"data_source": {"type": "jsonl", "source": {"type": "file_id", "id": "file-nope"}}},
        "data_source.source.id")
    bad(client, "POST", url, {"data_source": {"type": "jsonl", "source": {"type": "stored_completions"}}},
        "data_source.source.type")
    bad_file = upload(client, b'{"label": "a"}\nnot json\n', purpose="evals")
    err = bad(client, "POST", url, {"data_source": {"type": "jsonl", "source": {"type": "file_id",
                                                                                "id": bad_file["id"]}}},
              "data_source.source.id")
    assert "line 2" in err["message"]
    completions = {"type": "completions", "model": "modelmill-tiny", "source": inline(("a", "a")),
                   "input_messages": {"type": "template", "template": [{"role": "user", "content": "{{item.label}}"}]}}
    bad(client, "POST", url, {"data_source": {**completions, "model": "no-such-model"}}, "data_source.model", 404)
    bad(client, "POST", url, {"data_source": {k: v for k, v in completions.items() if k != "model"}},
        "data_source.model")
    bad(client, "POST", url, {"data_source": {**completions, "input_messages": {"type": "template", "template": [
        {"role": "user", "content": "{{sample.output_text}}"}]}}}, "data_source.input_messages.template[0].content")
    err = bad(client, "POST", url, {"data_source": {**completions, "input_messages": {"type": "template", "template": [
        {"role": "user", "content": "{{item.missing}}"}]}}}, "data_source.input_messages")
    assert "item 0" in err["message"]
    bad(client, "POST", url, {"data_source": {**completions, "sampling_params": {"temperature": 5}}},
        "data_source.sampling_params.temperature")
    bad(client, "POST", url, {"data_source": {**completions, "sampling_params": {"max_completion_tokens": "x"}}},
        "data_source.sampling_params.max_completion_tokens")
    bad(client, "POST", url, {"data_source": {**completions, "sampling_params": {"reasoning_effort": "high"}}},
        "data_source.sampling_params.reasoning_effort")
    assert client.post("/v1/evals/eval_nope/runs", json={"data_source": completions}).status_code == 404


def test_completions_run_samples_the_model(client, settings, store):
    ev = make_eval(client, testing_criteria=[EXACT])
    run = create_run(client, ev["id"], {
        "type": "completions", "model": "modelmill-tiny",
        "input_messages": {"type": "template", "template": [
            {"role": "system", "content": "Answer with one word."},
            {"role": "user", "content": "Say {{item.label}}"}]},
        "sampling_params": {"temperature": 0, "max_completion_tokens": 3, "seed": 7},
        "source": inline(("a", ""), ("b", ""), ("c", ""))})
    assert run["model"] == "modelmill-tiny" and run["name"] == "modelmill-tiny"
    assert run["data_source"]["input_messages"]["template"][1] == {
        "role": "user", "type": "message", "content": {"type": "input_text", "text": "Say {{item.label}}"}}
    Worker(settings, store).run_once()
    done = get_run(client, ev["id"], run["id"])
    assert done["status"] == "completed" and done["result_counts"]["total"] == 3
    usage = done["per_model_usage"]
    assert usage[0]["model_name"] == "modelmill-tiny" and usage[0]["invocation_count"] == 3
    assert usage[0]["completion_tokens"] <= 9 and usage[0]["prompt_tokens"] > 0
    items = client.get(f"/v1/evals/{ev['id']}/runs/{run['id']}/output_items").json()
    assert_matches(items, "EvalRunOutputItemList")
    sample = items["data"][1]["sample"]
    assert sample["input"] == [{"role": "system", "content": "Answer with one word."},
                               {"role": "user", "content": "Say b"}]
    assert sample["model"] == "modelmill-tiny" and sample["max_completion_tokens"] == 3 and sample["seed"] == 7
    assert sample["temperature"] == 0 and sample["error"] is None and len(sample["output"]) == 1


def test_item_reference_input_and_sampling_errors_are_per_item(client, settings, store):
    schema = {"type": "object", "properties": {"chat": {}, "label": {"type": "string"}}, "required": ["label"]}
    ev = make_eval(client, data_source_config={"type": "custom", "item_schema": schema}, testing_criteria=[EXACT])
    long_text = "word " * 9000  # longer than the 8192-token context
    run = create_run(client, ev["id"], {
        "type": "completions", "model": "modelmill-tiny",
        "input_messages": {"type": "item_reference", "item_reference": "item.chat"},
        "sampling_params": {"max_completion_tokens": 2},
        "source": {"type": "file_content", "content": [
            {"item": {"label": "a", "chat": [{"role": "user", "content": "hi"}]}},
            {"item": {"label": "b", "chat": long_text}}]}})
    Worker(settings, store).run_once()
    done = get_run(client, ev["id"], run["id"])
    assert done["status"] == "completed", done["error"]
    assert done["result_counts"]["total"] == 2 and done["result_counts"]["errored"] == 1
    items = client.get(f"/v1/evals/{ev['id']}/runs/{run['id']}/output_items").json()["data"]
    assert items[0]["sample"]["error"] is None
    assert items[1]["status"] == "error" and items[1]["sample"]["error"]["message"]


def test_delete_run_and_eval_cascade(client, settings, store):
    ev = make_eval(client)
    run = create_run(client, ev["id"], {"type": "jsonl", "source": inline(("a", "a"))})
    Worker(settings, store).run_once()
    gone = client.delete(f"/v1/evals/{ev['id']}/runs/{run['id']}").json()
    assert gone == {"object": "eval.run.deleted", "deleted": True, "run_id": run["id"]}
    assert client.get(f"/v1/evals/{ev['id']}/runs/{run['id']}").status_code == 404
    assert store.evals.all_items(run["id"]) == []
    run2 = create_run(client, ev["id"], {"type": "jsonl", "source": inline(("a", "a"))})
    client.delete(f"/v1/evals/{ev['id']}")
    assert client.get(f"/v1/evals/{ev['id']}/runs/{run2['id']}").status_code == 404
    assert store.db.one("SELECT COUNT(*) FROM eval_runs")[0] == 0


def test_report_page_shows_pass_rates_and_failing_items(client, settings, store):
    ev = make_eval(client)
    run = create_run(client, ev["id"], {"type": "jsonl", "source": inline(("a", "a"), ("b", "<b>x</b>"))})
    Worker(settings, store).run_once()
    r = client.get(f"/evals/{ev['id']}/runs/{run['id']}")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in r.headers["content-security-policy"]
    html = r.text
    assert "labels" in html and "exact" in html and "50.0%" in html
    assert "&lt;b&gt;x&lt;/b&gt;" in html and "<b>x</b>" not in html  # escaped
    assert "#1" in html and "#0" not in html  # only the failing item is listed
    assert client.get(f"/evals/{ev['id']}/runs/evalrun_nope").status_code == 404


def test_report_page_needs_a_key_from_header_or_cookie(client, store):
    ev = make_eval(client)
    run = create_run(client, ev["id"], {"type": "jsonl", "source": inline(("a", "a"))})
    key = store.keys.create("k")[1]
    url = f"/evals/{ev['id']}/runs/{run['id']}"
    assert client.get(url).status_code == 401
    assert client.get(url, headers={"Authorization": f"Bearer {key}"}).status_code == 200
    client.cookies.set("modelmill_key", key)  # the old cookie held the raw key: no longer accepted
    try:
        assert client.get(url).status_code == 401
    finally:
        client.cookies.clear()
    session = cookie(client, key)  # a login token from a real POST /login (docs/security.md)
    assert client.get(url, headers=session).status_code == 200
