"""Bad input through the HTTP API: a stratified sample of the malformed corpus (a few files of
every category, every method) is uploaded with the official openai SDK (purpose fine-tune, as
OpenAI does: content is checked when a job uses the file), a job is created for each, and the
worker's validation must fail every job with OpenAI's error shape naming the line and field,
never a 5xx. The uploaded bytes come back unchanged (nothing lost), and the dashboard's file
report lists the exact (line, field, code) problem (that last check, and every file rather than
a sample, in `make reliability`: tools/reliability/figures.py)."""

from __future__ import annotations

import openai
import pytest

from tests.reliability.conftest import MAX_UPLOAD_BYTES
from tests.spec_check import assert_matches
from tools.reliability.malformed import sample
from tools.reliability.malformed_http import GRADER, check_job, run_worker, submit

PER_CATEGORY = 6  # 115 files: every category, spread over methods and kinds


def test_sample_of_malformed_files_fails_jobs_with_line_and_field(bad_input_service, malformed_cases):
    settings, store, http, sdk = bad_input_service
    statuses: list[int] = []
    http.event_hooks["response"].append(lambda r: statuses.append(r.status_code))
    picked = sample(malformed_cases, PER_CATEGORY, max_bytes=MAX_UPLOAD_BYTES)
    assert len(picked) >= 100 and len({c.category for c in picked}) == len({c.category for c in malformed_cases})
    submitted = [(case, *submit(sdk, case)) for case in picked]
    assert run_worker(settings, store) == len(picked)

    problems = {case.name: w for case, f, j in submitted
                if (w := check_job(sdk, http, case, f, j, check_shape=assert_matches))}
    assert not problems, problems
    assert statuses and max(statuses) < 500


def test_upload_rejections_are_400_or_413_in_openai_envelope(bad_input_service):
    _, _, http, sdk = bad_input_service
    rejected = [
        http.post("/v1/files", files={"file": ("a.jsonl", b"{}\n")}, data={"purpose": "fine-tuning"}),
        http.post("/v1/files", files={"file": ("a.jsonl", b"{}\n")}),
        http.post("/v1/files", data={"purpose": "fine-tune"}),
        http.post("/v1/files", content=b'{"messages": []}', headers={"content-type": "application/json"}),
        http.post("/v1/files", content=b"--x\r\nbroken", headers={"content-type": "multipart/form-data; boundary=x"}),
        http.post("/v1/files", files={"file": ("big.jsonl", b"x" * (MAX_UPLOAD_BYTES + 1))},
                  data={"purpose": "fine-tune"}),
        http.post("/v1/fine_tuning/jobs", json={"model": "modelmill-tiny", "training_file": "file-nope"}),
    ]
    for r in rejected:
        assert r.status_code in (400, 404, 413), (r.request.url, r.status_code, r.text)
        assert_matches(r.json(), "ErrorResponse")
        assert r.json()["error"]["message"]
    assert rejected[0].json()["error"]["param"] == "purpose"
    assert rejected[5].status_code == 413
    with pytest.raises(openai.BadRequestError) as e:  # what the SDK makes of the same 400
        sdk.files.create(file=("a.jsonl", b"{}\n"), purpose="not-a-purpose")
    assert e.value.status_code == 400 and e.value.body["param"] == "purpose"


# -- fields that are not OpenAI's: OpenAI's own 400 on every endpoint -------------------------------

ITEM_SCHEMA = {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}
EVAL = {"name": "e", "data_source_config": {"type": "custom", "item_schema": ITEM_SCHEMA},
        "testing_criteria": [{"type": "string_check", "name": "c", "input": "{{sample.output_text}}",
                              "reference": "{{item.q}}", "operation": "eq"}]}
JUDGE = {"type": "score_model", "name": "judge", "model": "gpt-4.1-unserved", "range": [0, 1],
         "input": [{"role": "user", "content": "Score {{sample.output_text}}"}]}


def unknown_field_requests(http, file_id: str, eval_id: str) -> list[tuple[str, object]]:
    """(dotted param, response) for one unknown or misspelled field per endpoint and nesting level."""
    job = {"model": "modelmill-tiny", "training_file": file_id}
    chat = {"model": "modelmill-tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    run = {"data_source": {"type": "jsonl", "source": {"type": "file_content", "content": [{"item": {"q": "a"}}]}}}
    post = http.post
    return [
        ("test_file", post("/v1/fine_tuning/jobs", json={**job, "test_file": file_id})),
        ("hyperparameters.n_epoch", post("/v1/fine_tuning/jobs", json={**job, "hyperparameters": {"n_epoch": 2}})),
        ("method.supervised.hyperparameters.n_epoch", post("/v1/fine_tuning/jobs", json={
            **job, "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epoch": 2}}}})),
        ("method.reinforcement.grader.modle", post("/v1/fine_tuning/jobs", json={
            **job, "method": {"type": "reinforcement", "reinforcement": {"grader": {**GRADER, "modle": "x"}}}})),
        ("purpse", post("/v1/files", files={"file": ("a.jsonl", b"{}\n")}, data={"purpose": "fine-tune",
                                                                                  "purpse": "x"})),
        ("grader.pass_treshold", post("/v1/fine_tuning/alpha/graders/validate",
                                      json={"grader": {**GRADER, "pass_treshold": 1}})),
        ("sample", post("/v1/fine_tuning/alpha/graders/run", json={"grader": GRADER, "model_sample": "x",
                                                                   "sample": "x"})),
        ("descripton", post("/v1/evals", json={**EVAL, "descripton": "x"})),
        ("data_source_config.schema", post("/v1/evals", json={**EVAL, "data_source_config": {
            **EVAL["data_source_config"], "schema": {}}})),
        ("testing_criteria[0].threshold", post("/v1/evals", json={**EVAL, "testing_criteria": [
            {**EVAL["testing_criteria"][0], "threshold": 1}]})),
        ("tags", post(f"/v1/evals/{eval_id}", json={"name": "n", "tags": ["x"]})),
        ("model", post(f"/v1/evals/{eval_id}/runs", json={**run, "model": "modelmill-tiny"})),
        ("data_source.source.path", post(f"/v1/evals/{eval_id}/runs", json={"data_source": {
            "type": "jsonl", "source": {**run["data_source"]["source"], "path": "x"}}})),
        ("max_token", post("/v1/chat/completions", json={**chat, "max_token": 5})),
        ("messages[0].rol", post("/v1/chat/completions", json={**chat, "messages": [
            {"role": "user", "content": "hi", "rol": "user"}]})),
        ("stream_options.include_usages", post("/v1/chat/completions", json={
            **chat, "stream": True, "stream_options": {"include_usages": True}})),
        ("project_id", post("/v1/fine_tuning/checkpoints/ft:modelmill-tiny:x::y/permissions",
                            json={"project_ids": ["p"], "project_id": "p"})),
        # query parameters (service/api/query_params.py): a misspelt one would list the default page
        ("limt", http.get("/v1/files", params={"limt": 5})),
        ("status", http.get("/v1/fine_tuning/jobs", params={"status": "failed"})),
        ("statu", http.get(f"/v1/evals/{eval_id}/runs", params={"statu": "failed"})),
    ]


def test_unknown_request_fields_are_openais_400_on_every_endpoint(bad_input_service):
    """A field OpenAI does not have is never silently ignored (a misspelled hyperparameters.n_epoch
    would train with the default; a top-level test_file would train without validation): 400
    "Unrecognized request argument supplied: <dotted path>", param that path, code null."""
    _, _, http, sdk = bad_input_service
    file_id = sdk.files.create(file=("t.jsonl", b'{"messages": []}\n'), purpose="fine-tune").id
    eval_id = http.post("/v1/evals", json=EVAL).json()["id"]
    jobs_before = http.get("/v1/fine_tuning/jobs").json()["data"]
    for param, r in unknown_field_requests(http, file_id, eval_id):
        assert r.status_code == 400, (param, r.status_code, r.text)
        assert r.json() == {"error": {"message": f"Unrecognized request argument supplied: {param}",
                                      "type": "invalid_request_error", "param": param, "code": None}}, r.text
    assert http.get("/v1/fine_tuning/jobs").json()["data"] == jobs_before  # nothing was made
    # The official SDK gets the same 400 for a field it passes through (extra_body, a misspelled key).
    with pytest.raises(openai.BadRequestError) as e:
        sdk.fine_tuning.jobs.create(training_file=file_id, model="modelmill-tiny", hyperparameters={"n_epoch": 3})
    assert e.value.body["param"] == "hyperparameters.n_epoch"
    with pytest.raises(openai.BadRequestError) as e:
        sdk.chat.completions.create(model="modelmill-tiny", messages=[{"role": "user", "content": "x"}],
                                    extra_body={"top_k": 5})
    assert e.value.body["param"] == "top_k" and "Unrecognized request argument" in e.value.body["message"]


def test_unserved_judge_model_is_a_400_at_request_time(bad_input_service):
    """A judge model ModelMill does not serve (no MODELMILL_JUDGES entry) is refused when the grader
    is given, naming the field, instead of failing every sample of a job or eval later."""
    _, _, http, sdk = bad_input_service
    file_id = sdk.files.create(file=("r.jsonl", b'{"messages": [{"role": "user", "content": "q"}]}\n'),
                               purpose="fine-tune").id
    multi = {"type": "multi", "name": "m", "calculate_output": "j", "graders": {"j": JUDGE}}
    cases = [
        ("grader.model", http.post("/v1/fine_tuning/alpha/graders/validate", json={"grader": JUDGE})),
        ("grader.graders.j.model", http.post("/v1/fine_tuning/alpha/graders/run",
                                             json={"grader": multi, "model_sample": "x"})),
        ("testing_criteria[0].model", http.post("/v1/evals", json={**EVAL, "testing_criteria": [JUDGE]})),
        ("method.reinforcement.grader.model", http.post("/v1/fine_tuning/jobs", json={
            "model": "modelmill-tiny", "training_file": file_id,
            "method": {"type": "reinforcement", "reinforcement": {"grader": JUDGE}}})),
    ]
    for param, r in cases:
        assert r.status_code == 400, (param, r.text)
        assert_matches(r.json(), "ErrorResponse")
        assert r.json()["error"]["param"] == param and "gpt-4.1-unserved" in r.json()["error"]["message"]
    served = {**JUDGE, "model": "modelmill-tiny"}  # a model ModelMill serves is a judge
    assert http.post("/v1/fine_tuning/alpha/graders/validate", json={"grader": served}).status_code == 200


CHAT_BAD_INPUT = [  # (extra request fields, the param the 400 must name): issue 16's "nothing silently ignored"
    ({"logprobs": True, "top_logprobs": 99}, "top_logprobs"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"logit_bias": {"not-a-token": 5}}, "logit_bias"),
    ({"logit_bias": {"1": 1e9}}, "logit_bias"),
    ({"logit_bias": {str(2 ** 40): 1}}, "logit_bias"),
    ({"logit_bias": "260:100"}, "logit_bias"),
    ({"presence_penalty": "high"}, "presence_penalty"),
    ({"frequency_penalty": 1e300}, "frequency_penalty"),
    ({"n": 10_000}, "n"),
    ({"audio": {"voice": "alloy", "format": "mp3"}}, "audio"),
    ({"prediction": {"type": "content", "content": "x" * 1000}}, "prediction"),
    ({"web_search_options": {"search_context_size": "high"}}, "web_search_options"),
    ({"service_tier": "flex"}, "service_tier"),
    ({"reasoning_effort": "xhigh"}, "reasoning_effort"),
    ({"functions": [{"name": "f", "parameters": {}}], "function_call": {"name": "f"}}, "functions"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": [
        {"type": "text", "text": "b"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]},
     "messages[1].content[1]"),
    ({"messages": [{"role": "user", "content": [{"type": "video", "video": "x"}]}]}, "messages[0].content[0]"),
    ({"messages": [{"role": "user", "content": ["just a string part"]}]}, "messages[0].content"),
]


@pytest.mark.parametrize("extra, param", CHAT_BAD_INPUT, ids=[p for _, p in CHAT_BAD_INPUT])
def test_chat_parameters_not_honoured_are_400_naming_them(bad_input_service, extra, param):
    _, _, http, _ = bad_input_service
    for stream in (False, True):  # a stream is refused before it starts, with the same 400
        r = http.post("/v1/chat/completions", json={"model": "modelmill-tiny", "max_tokens": 2, "stream": stream,
                                                    "messages": [{"role": "user", "content": "hi"}], **extra})
        assert r.status_code == 400, (extra, r.status_code, r.text)
        assert_matches(r.json(), "ErrorResponse")
        assert r.json()["error"]["param"] == param, r.json()


# -- the Responses API and stored completions (issue 16.4/16.5) ------------------------------------

RESPONSE_BAD_INPUT = [
    ({"input": [{"type": "message"}]}, "input[0].role"),
    ({"input": [{"role": "user", "content": 5}]}, "input[0].content"),
    ({"input": [{"role": "user", "content": [{"type": "input_text"}]}]}, "input[0].content[0].text"),
    ({"input": [{"type": "function_call", "call_id": "c", "name": "f"}]}, "input[0].arguments"),
    ({"input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
    ({"input": ["just a string in a list"]}, "input[0]"),
    ({"input": {"role": "user"}}, "input"),
    ({"tools": [{"type": "function", "name": "f"}], "tool_choice": {"type": "function", "name": "g"}},
     "tool_choice.name"),
    ({"tools": [{"type": "function", "name": "f"}], "tool_choice": {"type": "allowed_tools", "mode": "auto",
                                                                    "tools": [{"type": "function", "name": "g"}]}},
     "tool_choice.tools[0]"),
    ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"tools": [{"type": "function", "name": "f", "parameters": "not a schema"}]}, "tools[0].parameters"),
    ({"text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}, "strict": "yes"}}},
     "text.format"),
    ({"previous_response_id": 7}, "previous_response_id"),
    ({"stream_options": {"include_obfuscation": True}}, "stream_options.include_obfuscation"),
]


@pytest.mark.parametrize("extra, param", RESPONSE_BAD_INPUT, ids=[p for _, p in RESPONSE_BAD_INPUT])
def test_malformed_responses_requests_are_400_naming_the_field(bad_input_service, extra, param):
    _, _, http, _ = bad_input_service
    for stream in (False, True):
        r = http.post("/v1/responses", json={"model": "modelmill-tiny", "input": "hi", "max_output_tokens": 2,
                                             "stream": stream, **extra})
        assert r.status_code == 400, (extra, r.status_code, r.text)
        assert_matches(r.json(), "ErrorResponse")
        assert r.json()["error"]["param"] == param, r.json()


def test_another_projects_previous_response_is_a_404_like_a_missing_one(tmp_path):
    """Its own service: API keys, once any exists, are required of every caller."""
    from fastapi.testclient import TestClient

    from modelmill.service.api.app import create_app
    from modelmill.service.store import open_store
    from modelmill.settings import Settings

    settings = Settings(home=tmp_path).ensure_dirs()
    store = open_store(settings)
    keys = {p: store.keys.create(f"key {p}", store.projects.ensure(f"responses-{p}").id)[1] for p in "AB"}
    with TestClient(create_app(settings, store=store)) as http:
        _check_previous_response_404(store, http, keys)
    store.close()


def _check_previous_response_404(store, http, keys: dict) -> None:
    response = {"id": "resp_OwnedByProjectA00000000", "object": "response", "created_at": 1_700_000_000,
                "model": "modelmill-tiny", "metadata": {}, "output": []}
    store.responses.add(store.keys.verify(keys["A"]).project_id, response, [], [{"role": "user", "content": "a"}])

    def as_b(previous: str):
        return http.post("/v1/responses", headers={"Authorization": f"Bearer {keys['B']}"},
                         json={"model": "modelmill-tiny", "input": "hi", "previous_response_id": previous})

    foreign, missing = as_b(response["id"]), as_b("resp_NeverMadeByAnyone0000000")
    assert foreign.status_code == missing.status_code == 404
    assert foreign.json()["error"]["param"] == "previous_response_id"
    assert foreign.text.replace(response["id"], "resp_NeverMadeByAnyone0000000") == missing.text  # nothing leaks


def test_a_stream_the_client_drops_halfway_closes_cleanly(bad_input_service):
    """The client reads the first events of a Responses stream and of a stored chat stream, then
    hangs up; nothing fails, and the next requests are served at once (no slot or row leaked)."""
    _, store, http, sdk = bad_input_service
    statuses: list[int] = []
    for path, body in (("/v1/responses", {"input": "Count to fifty.", "max_output_tokens": 64}),
                       ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Count to fifty."}],
                                                 "max_tokens": 64, "store": True})):
        with http.stream("POST", path, json={"model": "modelmill-tiny", "stream": True, **body}) as r:
            statuses.append(r.status_code)
            lines = r.iter_lines()
            first = [next(lines, "") for _ in range(4)]
            assert any(line.startswith("data: ") for line in first), (path, r.status_code, first)
    after = sdk.responses.create(model="modelmill-tiny", input="hi", max_output_tokens=2)
    assert after.status in ("completed", "incomplete") and statuses == [200, 200]
    with pytest.raises(openai.NotFoundError) as e:
        sdk.chat.completions.retrieve("chatcmpl-NoSuchCompletion0000")
    assert e.value.body["param"] == "completion_id"
