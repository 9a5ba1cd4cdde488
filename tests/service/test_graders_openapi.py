"""/openapi.json describes graders: the grader fields of graders/run, graders/validate, evals and RFT
jobs are discriminated unions on `type` of every grader type's wire model (ml/graders/registry.py),
and real graders validate against those schemas."""

from __future__ import annotations

import jsonschema
import pytest

from modelmill.ml.graders import GRADERS, validate_grader

from tests.ml.graders.test_validate import CHECK, LABEL, PY, SCORE, SIM

TOP_LEVEL = {"string_check", "text_similarity", "python", "score_model", "multi", "relative_score_model"}
MULTI = {"type": "multi", "name": "mm", "graders": {"a": CHECK, "l": LABEL}, "calculate_output": "a + l"}


@pytest.fixture
def doc(client):
    r = client.get("/openapi.json")
    assert r.status_code == 200
    return r.json()


def _resolve(doc: dict, node: dict) -> dict:
    while "$ref" in node:
        node = doc["components"]["schemas"][node["$ref"].rsplit("/", 1)[-1]]
    return node


def _body_schema(doc: dict, path: str) -> dict:
    return _resolve(doc, doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"])


def _assert_grader_union(doc: dict, union: dict, types: set[str]) -> None:
    assert union["discriminator"]["propertyName"] == "type"
    mapping = union["discriminator"]["mapping"]
    assert set(mapping) == types
    for name, ref in mapping.items():
        model = _resolve(doc, {"$ref": ref})
        assert model["properties"]["type"]["const"] == name
        assert model["additionalProperties"] is False  # unknown fields are refused
        assert set(model["properties"]) == set(GRADERS[name].fields)


def test_graders_run_and_validate_describe_the_top_level_union(doc):
    for path in ("/v1/fine_tuning/alpha/graders/run", "/v1/fine_tuning/alpha/graders/validate"):
        _assert_grader_union(doc, _body_schema(doc, path)["properties"]["grader"], TOP_LEVEL)
    string_check = doc["components"]["schemas"]["StringCheckGrader"]
    assert string_check["properties"]["operation"]["enum"] == ["eq", "ne", "like", "ilike"]
    assert set(string_check["required"]) == {"type", "input", "reference", "operation"}


def test_multi_sub_graders_are_any_other_type(doc):
    multi = doc["components"]["schemas"]["MultiGrader"]["properties"]["graders"]["anyOf"]
    as_map = next(branch for branch in multi if branch.get("type") == "object")["additionalProperties"]
    _assert_grader_union(doc, as_map, set(GRADERS) - {"multi"})


def test_rft_jobs_describe_their_grader(doc):
    method = doc["components"]["schemas"]["ReinforcementMethod"]
    _assert_grader_union(doc, method["properties"]["grader"], TOP_LEVEL)


@pytest.mark.parametrize("grader", [CHECK, SIM, PY, SCORE, MULTI, dict(MULTI, graders=CHECK, calculate_output="c")])
def test_valid_graders_match_the_published_schema(doc, grader):
    schema = {"$ref": "#/components/schemas/RunGraderRequest", "components": doc["components"]}
    jsonschema.Draft202012Validator(schema).validate({"grader": validate_grader(grader), "model_sample": "x"})


def test_the_published_schema_refuses_a_misspelled_field(doc):
    schema = {"$ref": "#/components/schemas/RunGraderRequest", "components": doc["components"]}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(schema).validate({"grader": CHECK | {"operaton": "eq"}, "model_sample": "x"})


def test_eval_bodies_are_described_by_their_models(doc):
    create = _body_schema(doc, "/v1/evals")
    assert set(create["properties"]) == {"name", "data_source_config", "testing_criteria", "metadata"}
    assert create["additionalProperties"] is False
    _assert_grader_union(doc, create["properties"]["testing_criteria"]["items"], set(GRADERS))
    config = create["properties"]["data_source_config"]
    assert set(config["discriminator"]["mapping"]) == {"custom", "stored_completions", "logs"}
    assert set(_body_schema(doc, "/v1/evals/{eval_id}")["properties"]) == {"name", "metadata"}
    run = _body_schema(doc, "/v1/evals/{eval_id}/runs")
    source = run["properties"]["data_source"]
    assert set(source["discriminator"]["mapping"]) == {"jsonl", "completions", "responses"}
    completions = _resolve(doc, {"$ref": source["discriminator"]["mapping"]["completions"]})
    assert set(completions["properties"]["source"]["discriminator"]["mapping"]) == {
        "file_content", "file_id", "stored_completions"}


def test_an_eval_request_matches_the_published_schema(doc):
    body = {"name": "e", "data_source_config": {"type": "custom", "item_schema": {"type": "object"},
                                                "include_sample_schema": True},
            "testing_criteria": [CHECK, LABEL, MULTI], "metadata": {"k": "v"}}
    schema = {"$ref": "#/components/schemas/CreateEvalRequest", "components": doc["components"]}
    jsonschema.Draft202012Validator(schema).validate(body)
    run = {"data_source": {"type": "completions", "model": "m", "source": {"type": "file_content", "content": [
        {"item": {"a": 1}}]}, "input_messages": {"type": "template", "template": [{"role": "user", "content": "x"}]},
        "sampling_params": {"temperature": 0, "max_completion_tokens": 3}}}
    schema = {"$ref": "#/components/schemas/CreateEvalRunRequest", "components": doc["components"]}
    jsonschema.Draft202012Validator(schema).validate(run)
