"""/v1/fine_tuning/alpha/graders/{run,validate}: every grader type through the API, each
response checked against OpenAI's RunGraderResponse; malformed graders are 400s naming the field."""

from __future__ import annotations

import pytest

from tests.spec_check import assert_matches

RUN = "/v1/fine_tuning/alpha/graders/run"
VALIDATE = "/v1/fine_tuning/alpha/graders/validate"

STRING_CHECK = {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
                "reference": "{{item.label}}", "operation": "eq"}
FUZZY = {"type": "text_similarity", "name": "fuzzy", "input": "{{sample.output_text}}",
         "reference": "{{item.label}}", "evaluation_metric": "fuzzy_match"}
PYTHON = {"type": "python", "name": "py", "source": (
    "def grade(sample, item):\n"
    "    return 1.0 if sample['output_text'].strip() == item['label'] else 0.25\n")}
SCORE_TINY = {"type": "score_model", "name": "tiny judge", "model": "modelmill-tiny", "range": [0, 1],
              "sampling_params": {"temperature": 0, "max_completions_tokens": 4, "seed": 1},
              "input": [{"role": "user", "content": "Score {{sample.output_text}} vs {{item.label}} from 0 to 1."}]}


def run(client, grader: dict, sample: str = "kitchen on", item: dict | None = None) -> dict:
    r = client.post(RUN, json={"grader": grader, "model_sample": sample,
                               "item": {"label": "kitchen on"} if item is None else item})
    assert r.status_code == 200, r.text
    body = r.json()
    assert_matches(body, "RunGraderResponse")
    return body


def flags(body: dict) -> set[str]:
    return {k for k, v in body["metadata"]["errors"].items() if v is True}


def test_string_check(client):
    hit = run(client, STRING_CHECK)
    assert hit["reward"] == 1.0 and not flags(hit)
    assert hit["metadata"]["name"] == "exact" and hit["metadata"]["type"] == "string_check"
    assert hit["metadata"]["sampled_model_name"] is None and hit["metadata"]["execution_time"] >= 0
    assert run(client, STRING_CHECK, sample="kitchen off")["reward"] == 0.0


def test_text_similarity_fuzzy_match(client):
    near = run(client, FUZZY, sample="kitchen onn")["reward"]
    assert 0.5 < near < 1.0
    assert run(client, FUZZY)["reward"] == pytest.approx(1.0)


def test_unknown_template_variable_is_a_flag_not_a_400(client):
    body = run(client, {**STRING_CHECK, "reference": "{{item.missing}}"})
    assert body["reward"] == 0.0 and "invalid_variable_error" in flags(body)


def test_multi_combines_sub_rewards(client):
    multi = {"type": "multi", "name": "combo", "calculate_output": "0.5 * exact + 0.5 * fuzzy",
             "graders": {"exact": STRING_CHECK, "fuzzy": FUZZY}}
    body = run(client, multi, sample="kitchen onn")
    assert body["metadata"]["type"] == "multi" and not flags(body)
    assert set(body["sub_rewards"]) == {"exact", "fuzzy"}
    assert body["sub_rewards"]["exact"] == 0.0
    assert body["reward"] == pytest.approx(0.5 * body["sub_rewards"]["fuzzy"])


def test_python_grader_in_the_sandbox(client):
    from modelmill.ml.graders import sandbox

    if not sandbox.available():
        pytest.skip(f"python grader sandbox unavailable here: {sandbox.unavailable_reason()}")
    assert run(client, PYTHON)["reward"] == 1.0
    assert run(client, PYTHON, sample="nope")["reward"] == 0.25
    crash = run(client, {**PYTHON, "source": "def grade(sample, item):\n    raise ValueError('boom')\n"})
    assert "python_grader_runtime_error" in flags(crash)
    assert "boom" in (crash["metadata"]["errors"]["python_grader_runtime_error_details"] or "")


def test_score_model_with_tiny_judge(client):
    """modelmill-tiny is random: its reply is usually not a number (a parse error flag); either way
    the judge ran and its tokens are counted."""
    body = run(client, SCORE_TINY)
    assert flags(body) <= {"model_grader_parse_error"}
    if not flags(body):
        assert 0.0 <= body["reward"] <= 1.0
    assert body["metadata"]["token_usage"] > 0
    assert "modelmill-tiny" in body["model_grader_token_usage_per_model"]


@pytest.mark.parametrize("path", [RUN, VALIDATE])
@pytest.mark.parametrize("grader,param", [
    ({**SCORE_TINY, "model": "gpt-4.1-not-configured"}, "grader.model"),
    ({"type": "multi", "name": "m", "calculate_output": "j", "graders": {
        "j": {**SCORE_TINY, "model": "gpt-4.1-not-configured"}}}, "grader.graders.j.model"),
])
def test_unknown_judge_model_is_a_400_naming_the_field(client, path, grader, param):
    """A judge nobody serves (no MODELMILL_JUDGES entry, not a model of ModelMill's) is refused at
    request time, not reported as a failure on every sample later."""
    r = client.post(path, json={"grader": grader, "model_sample": "x", "item": {}} if path == RUN
                    else {"grader": grader})
    assert r.status_code == 400, r.text
    assert_matches(r.json(), "ErrorResponse")
    assert r.json()["error"]["param"] == param and "gpt-4.1-not-configured" in r.json()["error"]["message"]


@pytest.mark.parametrize("body,param", [
    ({"grader": STRING_CHECK, "model_sample": "x", "item": {}, "sample": {}}, "sample"),
    ({"grader": {**STRING_CHECK, "refrence": "x"}, "model_sample": "x"}, "grader.refrence"),
])
def test_unknown_fields_are_refused(client, body, param):
    r = client.post(RUN, json=body)
    assert r.status_code == 400 and r.json()["error"] == {
        "message": f"Unrecognized request argument supplied: {param}", "type": "invalid_request_error",
        "param": param, "code": None}


def test_graders_template_item_messages(client):
    """OpenAI's RFT cookbook graders read the training line's messages as {{item.messages}}."""
    grader = {"type": "python", "name": "asks", "source": (
        "def grade(sample, item):\n"
        "    return 1.0 if item['messages'][-1]['content'] in sample['output_text'] else 0.0\n")}
    item = {"messages": [{"role": "user", "content": "ping"}], "answer": "pong"}
    assert run(client, grader, sample="ping pong", item=item)["reward"] == 1.0
    check = {"type": "string_check", "name": "t", "input": "{{item.messages[0].content}}", "reference": "ping",
             "operation": "eq"}
    assert run(client, check, item=item)["reward"] == 1.0


def test_label_model_only_inside_multi(client):
    label = {"type": "label_model", "name": "mood", "model": "modelmill-tiny",
             "input": [{"role": "user", "content": "Label: {{sample.output_text}}"}],
             "labels": ["good", "bad"], "passing_labels": ["good"]}
    r = client.post(RUN, json={"grader": label, "model_sample": "x"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "grader.type"
    r = client.post(VALIDATE, json={"grader": label})
    assert r.status_code == 400 and r.json()["error"]["param"] == "grader.type"
    multi = {"type": "multi", "name": "m", "calculate_output": "mood", "graders": {"mood": label}}
    assert client.post(VALIDATE, json={"grader": multi}).status_code == 200


def test_validate_returns_the_grader(client):
    r = client.post(VALIDATE, json={"grader": STRING_CHECK})
    assert r.status_code == 200, r.text
    assert_matches(r.json(), "ValidateGraderResponse")
    assert r.json()["grader"] == STRING_CHECK


@pytest.mark.parametrize("grader, param", [
    ({**STRING_CHECK, "operation": "contains"}, "grader.operation"),
    ({k: v for k, v in STRING_CHECK.items() if k != "reference"}, "grader.reference"),
    ({**FUZZY, "evaluation_metric": "levenshtein"}, "grader.evaluation_metric"),
    ({"type": "telepathy", "name": "x"}, "grader.type"),
    ({"type": "multi", "name": "m", "calculate_output": "a", "graders": {"a": {**STRING_CHECK, "operation": "in"}}},
     "grader.graders.a.operation"),
])
def test_malformed_grader_names_the_field(client, grader, param):
    for path, body in ((VALIDATE, {"grader": grader}), (RUN, {"grader": grader, "model_sample": "x"})):
        r = client.post(path, json=body)
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["type"] == "invalid_request_error" and err["param"] == param, err


def test_missing_fields_are_400s(client):
    r = client.post(RUN, json={"grader": STRING_CHECK})
    assert r.status_code == 400 and r.json()["error"]["param"] == "model_sample"
    r = client.post(VALIDATE, json={})
    assert r.status_code == 400 and r.json()["error"]["param"] == "grader"
