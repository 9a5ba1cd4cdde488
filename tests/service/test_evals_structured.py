"""Eval runs honour the completions data source's sampling_params.response_format (as OpenAI's Evals
API allows): every sample the random modelmill-tiny writes is JSON valid under the schema, because
the sampler decodes it under that grammar (ml/constraints.py)."""

from __future__ import annotations

import json

import jsonschema

from modelmill.service.worker.loop import Worker
from tests.service.test_evals_api import bad, create_run, get_run, make_eval

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["label"],
          "properties": {"label": {"type": "string", "enum": ["a", "b", "c"]}}}
CHECK = {"type": "string_check", "name": "exact", "input": "{{sample.output_json.label}}",
         "reference": "{{item.label}}", "operation": "eq"}


def completions(**sampling) -> dict:
    return {"type": "completions", "model": "modelmill-tiny",
            "input_messages": {"type": "template", "template": [{"role": "user", "content": "Say {{item.label}}"}]},
            "sampling_params": {"temperature": 0, "max_completion_tokens": 20, **sampling},
            "source": {"type": "file_content", "content": [{"item": {"label": x}} for x in "abc"]}}


def test_completions_run_samples_under_the_response_format(client, settings, store):
    ev = make_eval(client, testing_criteria=[CHECK])
    fmt = {"type": "json_schema", "json_schema": {"name": "label", "schema": SCHEMA, "strict": True}}
    run = create_run(client, ev["id"], completions(response_format=fmt))
    Worker(settings, store).run_once()
    done = get_run(client, ev["id"], run["id"])
    assert done["status"] == "completed" and done["result_counts"]["errored"] == 0, done
    items = client.get(f"/v1/evals/{ev['id']}/runs/{run['id']}/output_items").json()["data"]
    assert len(items) == 3
    for item in items:
        jsonschema.validate(json.loads(item["sample"]["output"][0]["content"]), SCHEMA)


def test_a_bad_response_format_is_a_400_naming_it(client):
    ev = make_eval(client, testing_criteria=[CHECK])
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strin"}}}
    err = bad(client, "POST", f"/v1/evals/{ev['id']}/runs", {"data_source": completions(response_format=fmt)},
              "data_source.sampling_params.response_format")
    assert "Invalid schema" in err["message"]


def test_a_strict_tool_whose_schema_cannot_compile_is_a_400_naming_it(client):
    ev = make_eval(client, testing_criteria=[CHECK])
    tool = {"type": "function", "function": {"name": "f", "strict": True,
                                             "parameters": {"type": "object", "properties": {"a": {"type": 7}}}}}
    err = bad(client, "POST", f"/v1/evals/{ev['id']}/runs", {"data_source": completions(tools=[tool])},
              "data_source.sampling_params.tools[0].function.parameters")
    assert "Invalid schema for function 'f'" in err["message"]
