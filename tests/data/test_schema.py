"""The schema sampler behind `modelmill data synth`: enumeration, budgets, bounds, nesting,
optional arguments, and bad schemas named by function and field."""

from __future__ import annotations

import json
import random

import pytest
from jsonschema import Draft202012Validator, FormatChecker

from modelmill.datagen.schema import SchemaError, load_tools, plan_arguments, sample_value
from modelmill.datagen.synth import SynthConfig, split, synthesize
from modelmill.ml.data.methods import validate_supervised_line


def tool(name, properties, required=None, description="Do a thing."):
    params = {"type": "object", "properties": properties, "required": list(required or properties)}
    return {"type": "function", "function": {"name": name, "description": description, "parameters": params}}


def test_small_products_are_enumerated_in_full():
    fn = tool("lock", {"door": {"type": "string", "enum": ["front", "back", "garage"]},
                       "locked": {"type": "boolean"}})["function"]
    plan = plan_arguments(fn, budget=10, rng=random.Random(0))
    assert plan.enumerated and plan.combinations == 6
    combos = {(c["door"], c["locked"]) for c in plan.calls}
    assert combos == {(d, b) for d in ("front", "back", "garage") for b in (True, False)}
    assert len(plan.calls) == 10  # every combination once, then again up to the budget


def test_large_products_are_sampled_up_to_the_budget():
    big = [f"v{i}" for i in range(10)]
    fn = tool("f", {"a": {"type": "string", "enum": big}, "b": {"type": "string", "enum": big},
                    "c": {"type": "boolean"}})["function"]
    plan = plan_arguments(fn, budget=20, rng=random.Random(1))
    assert not plan.enumerated and plan.combinations == 200
    keys = [json.dumps(c, sort_keys=True) for c in plan.calls]
    assert len(keys) == 20 and len(set(keys)) == 20  # distinct combinations


def test_numbers_respect_bounds_and_multiples():
    schemas = [{"type": "integer", "minimum": 15, "maximum": 28}, {"type": "integer", "exclusiveMinimum": 0,
               "exclusiveMaximum": 3}, {"type": "number", "minimum": -1.5, "maximum": 1.5},
               {"type": "integer", "minimum": 0, "maximum": 100, "multipleOf": 5}, {"type": "integer", "maximum": -50}]
    rng = random.Random(2)
    for schema in schemas:
        values = [sample_value(schema, rng) for _ in range(200)]
        assert all(Draft202012Validator(schema).is_valid(v) for v in values), schema
    assert {sample_value(schemas[1], rng) for _ in range(100)} == {1, 2}


def test_strings_come_from_examples_formats_descriptions_and_names():
    rng = random.Random(3)
    from_examples = [sample_value({"type": "string", "examples": ["EUR", "JPY"]}, rng, "code") for _ in range(50)]
    assert from_examples.count("EUR") + from_examples.count("JPY") >= 30  # mostly the examples, some invented
    dates = [sample_value({"type": "string", "format": "date"}, rng) for _ in range(20)]
    assert all(Draft202012Validator({"type": "string", "format": "date"},
                                    format_checker=FormatChecker()).is_valid(d) for d in dates)
    described = {sample_value({"type": "string", "description": "Ticker symbol, e.g. 'ACME'"}, rng) for _ in range(10)}
    assert described == {"ACME"}
    city = sample_value({"type": "string"}, rng, "destination_city")
    assert city in ("Paris", "Tokyo", "Lagos", "Lima", "Oslo", "Toronto", "Mumbai", "Denver")
    short = sample_value({"type": "string", "minLength": 30, "maxLength": 40}, rng, "note")
    assert 30 <= len(short) <= 40


def test_nested_objects_and_arrays_validate():
    schema = {"type": "object", "properties": {
        "order": {"type": "object", "properties": {
            "items": {"type": "array", "minItems": 2, "maxItems": 4, "uniqueItems": True, "items": {
                "type": "object", "properties": {"sku": {"type": "string", "examples": ["A1", "B2", "C3", "D4"]},
                                                 "qty": {"type": "integer", "minimum": 1, "maximum": 9}},
                "required": ["sku", "qty"]}},
            "gift": {"type": "boolean"}, "note": {"type": ["string", "null"]}},
            "required": ["items"]},
        "tags": {"type": "array", "items": {"type": "string", "enum": ["a", "b"]}}}, "required": ["order"]}
    fn = {"name": "order", "parameters": schema}
    load_tools([{"type": "function", "function": fn}])
    plan = plan_arguments(fn, budget=30, rng=random.Random(4))
    validator = Draft202012Validator(schema)
    assert all(validator.is_valid(c) for c in plan.calls)
    assert all(2 <= len(c["order"]["items"]) <= 4 for c in plan.calls)


def test_optional_arguments_are_sometimes_left_out():
    fn = tool("search", {"query": {"type": "string"}, "limit": {"type": "integer", "minimum": 1, "maximum": 50},
                         "safe": {"type": "boolean"}}, required=["query"])["function"]
    plan = plan_arguments(fn, budget=40, rng=random.Random(5))
    assert all("query" in c for c in plan.calls)
    for key in ("limit", "safe"):
        present = sum(key in c for c in plan.calls)
        assert 0 < present < len(plan.calls), key
    # an optional boolean is enumerated with "left out" as its third choice
    assert plan.combinations == 3 and {c.get("safe", "-") for c in plan.calls} == {True, False, "-"}


@pytest.mark.parametrize("properties, field, words", [
    ({"room": {"type": "strin"}}, "parameters.properties.room", "strin"),
    ({"room": {"type": "string", "enum": []}}, "parameters.properties.room", "enum"),
    ({"t": {"type": "integer", "minimum": 30, "maximum": 10}}, "parameters.properties.t", "minimum 30"),
    ({"x": {"description": "no type"}}, "parameters.properties.x", "no type"),
    ({"code": {"type": "string", "pattern": "^[0-9]{6}$"}}, "parameters.properties.code", "add `examples`"),
    ({"n": {"type": "integer", "maximum": 3, "examples": [7]}}, "parameters.properties.n", "examples[0]"),
    ({"o": {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["b"]}},
     "parameters.properties.o", "'b'"),
])
def test_bad_schema_names_function_and_field(properties, field, words):
    with pytest.raises(SchemaError) as e:
        load_tools([tool("ok_fn", {"a": {"type": "string"}}), tool("broken_fn", properties)])
    assert "function broken_fn" in e.value.message and field in e.value.message and words in e.value.message


@pytest.mark.parametrize("tools, words", [
    ({"type": "function"}, "non-empty JSON list"), ([], "non-empty JSON list"),
    ([{"type": "function", "function": {"name": "bad name!"}}], "tools[0].function.name"),
    ([tool("same", {}), tool("same", {})], "function same: declared more than once"),
    ([{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}],
     "function f: field parameters"),
])
def test_bad_tools_file(tools, words):
    with pytest.raises(SchemaError, match=None) as e:
        load_tools(tools)
    assert words in e.value.message


def smart_home_tools():
    rooms = ["kitchen", "bedroom", "office"]
    return [tool("set_lights", {"room": {"type": "string", "enum": rooms}, "state": {"type": "string",
                                                                                     "enum": ["on", "off"]}},
                 description="Turn a room's lights on or off."),
            tool("set_thermostat", {"room": {"type": "string", "enum": rooms},
                                    "celsius": {"type": "integer", "minimum": 15, "maximum": 28}},
                 description="Set a room's target temperature in Celsius."),
            tool("send_message", {"to": {"type": "string", "format": "email"}, "text": {"type": "string"},
                                  "urgent": {"type": "boolean"}}, required=["to", "text"])]


def test_synth_lines_are_valid_deterministic_and_split_by_combination():
    tools = load_tools(smart_home_tools())
    config = SynthConfig(per_function=12, seed=9)
    report = synthesize(tools, config, progress=False)
    assert len(report.lines) + report.duplicates == 36
    for line in report.lines:
        assert validate_supervised_line(line, 1)[1] == []
        call = line["messages"][1]["tool_calls"][0]["function"]
        fn = next(t["function"] for t in tools if t["function"]["name"] == call["name"])
        assert Draft202012Validator(fn["parameters"]).is_valid(json.loads(call["arguments"]))
        for value in json.loads(call["arguments"]).values():  # the request names every value
            if isinstance(value, str):
                assert value in line["messages"][0]["content"]
    again = synthesize(tools, config, progress=False)
    assert again.lines == report.lines
    parts = split(report, config)
    assert sum(len(p) for p in parts.values()) == len(report.lines) and parts["test"] and parts["valid"]

    def calls(lines):
        return {json.dumps(json.loads(ln["messages"][1]["tool_calls"][0]["function"]["arguments"]), sort_keys=True)
                + ln["messages"][1]["tool_calls"][0]["function"]["name"] for ln in lines}
    assert not calls(parts["test"]) & calls(parts["train"]) and not calls(parts["valid"]) & calls(parts["train"])


def test_datagen_never_imports_service():
    """datagen talks to servers only over HTTP with the openai SDK (it works against OpenAI too)."""
    from pathlib import Path

    from tests.test_layers import imported_modules

    root = Path(__file__).resolve().parents[2] / "src" / "modelmill" / "datagen"
    files = sorted(root.glob("*.py"))
    assert len(files) >= 6
    for path in files:
        assert not {m for m in imported_modules(path) if m.startswith("modelmill.service")}, path.name
