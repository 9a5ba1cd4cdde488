"""Grammar-constrained decoding (ml/constraints.py) through the transformers sampler on modelmill-tiny.

modelmill-tiny has random weights: left alone it never writes JSON, so every parse below is the
grammar's doing. Schemas bound every value (enums, integer ranges, maxLength) so a random model
also finishes within its budget."""

from __future__ import annotations

import json
import threading

import jsonschema
import pytest

from modelmill.errors import InvalidRequestError
from modelmill.ml import constraints
from modelmill.ml.sampling import Sampler, SamplingParams
from modelmill.ml.types import ModelRef

USER = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER = {"type": "object", "additionalProperties": False, "required": ["city", "celsius", "sunny", "note"],
           "properties": {"city": {"type": "string", "enum": ["Paris", "Oslo"]},
                          "celsius": {"type": "integer", "minimum": -50, "maximum": 50},
                          "sunny": {"type": "boolean"}, "note": {"type": "string", "maxLength": 12}}}
SCHEMA_FORMAT = {"type": "json_schema", "json_schema": {"name": "weather", "schema": WEATHER, "strict": True}}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
             "type": "object", "properties": {"city": {"type": "string", "maxLength": 10}}, "required": ["city"]}}},
         {"type": "function", "function": {"name": "lock_door", "parameters": {
             "type": "object", "properties": {"door": {"type": "string", "enum": ["front", "back"]}},
             "required": ["door"]}}}]


@pytest.fixture(scope="module")
def sampler():
    return Sampler()


@pytest.fixture(scope="module")
def ref(tiny_model_dir):
    return ModelRef(tiny_model_dir)


def params(**kw) -> SamplingParams:
    return SamplingParams(**{"temperature": 0, "max_tokens": 60, **kw})


@pytest.mark.parametrize("temperature", [0, 1.0])
def test_json_schema_output_parses_and_validates(sampler, ref, temperature):
    result = sampler.generate(ref, USER, params=params(temperature=temperature, seed=5, n=2,
                                                       response_format=SCHEMA_FORMAT))
    for choice in result.choices:
        assert choice.finish_reason == "stop"
        jsonschema.validate(json.loads(choice.content), WEATHER)


def test_json_object_output_is_an_object(sampler, ref):
    (choice,) = sampler.generate(ref, USER, params=params(response_format={"type": "json_object"})).choices
    assert choice.finish_reason == "stop" and isinstance(json.loads(choice.content), dict)


def test_without_a_constraint_the_tiny_model_writes_no_json(sampler, ref):
    (choice,) = sampler.generate(ref, USER, params=params(max_tokens=20)).choices
    with pytest.raises(ValueError):
        json.loads(choice.content)


@pytest.mark.parametrize("tool_choice", ["required", {"type": "function", "function": {"name": "lock_door"}}])
@pytest.mark.parametrize("temperature", [0, 1.0])
def test_forced_tool_calls_are_valid_calls(sampler, ref, tool_choice, temperature):
    result = sampler.generate(ref, USER, tools=TOOLS, params=params(temperature=temperature, seed=7),
                              tool_choice=tool_choice)
    (choice,) = result.choices
    assert choice.finish_reason == "tool_calls" and choice.content is None
    (call,) = choice.tool_calls
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
    if isinstance(tool_choice, dict):
        assert call["function"]["name"] == "lock_door"
    jsonschema.validate(json.loads(call["function"]["arguments"]), schemas[call["function"]["name"]])


def test_stream_of_a_structured_output(sampler, ref):
    events = list(sampler.stream(ref, USER, params=params(response_format=SCHEMA_FORMAT)))
    text = "".join(e.delta for e in events)
    jsonschema.validate(json.loads(text), WEATHER)
    assert events[-1].finish_reason == "stop"


def test_constraints_are_per_row_in_a_shared_batch(tiny_model_dir):
    """Structured and plain requests decoded in one batch: each structured row follows its own
    grammar, and a plain greedy row is what it is alone."""
    sampler = Sampler(batch_window_s=0.3)  # a wide window: the 4 threads below land in one batch
    ref = ModelRef(tiny_model_dir)
    plain_alone = sampler.generate(ref, USER, params=params(max_tokens=12)).choices[0].text
    calls = {"schema": lambda: sampler.generate(ref, USER, params=params(response_format=SCHEMA_FORMAT)),
             "object": lambda: sampler.generate(ref, USER, params=params(response_format={"type": "json_object"})),
             "tool": lambda: sampler.generate(ref, USER, tools=TOOLS, params=params(), tool_choice="required"),
             "plain": lambda: sampler.generate(ref, USER, params=params(max_tokens=12))}
    results, start = {}, threading.Barrier(len(calls))

    def run(name):
        start.wait()
        results[name] = calls[name]()

    threads = [threading.Thread(target=run, args=(name,)) for name in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (4, 4) in sampler.batch_history  # all four decoded in one generate()
    jsonschema.validate(json.loads(results["schema"].choices[0].content), WEATHER)
    assert isinstance(json.loads(results["object"].choices[0].content), dict)
    assert results["tool"].choices[0].finish_reason == "tool_calls"
    assert results["plain"].choices[0].text == plain_alone


@pytest.mark.parametrize("response_format, fragment", [
    ("json", "must be an object"),
    ({"type": "xml"}, "type must be"),
    ({"type": "json_schema"}, "json_schema must be an object"),
    ({"type": "json_schema", "json_schema": {"schema": WEATHER}}, "json_schema.name"),
    ({"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "strin"}}}, "Invalid schema"),
    ({"type": "json_schema", "json_schema": {"name": "w", "schema": {"$ref": "#/$defs/missing"}}}, "Invalid schema"),
])
def test_bad_response_formats_name_the_param(response_format, fragment):
    with pytest.raises(InvalidRequestError) as e:
        SamplingParams(response_format=response_format)
    assert e.value.param == "response_format" and fragment in e.value.message


def test_bad_tool_schemas_name_the_tool():
    bad = [TOOLS[0], {"type": "function", "function": {"name": "f", "strict": True,
                                                       "parameters": {"type": "object", "properties": {"a": {"type": 7}}}}}]
    with pytest.raises(InvalidRequestError) as e:
        constraints.check_tools(bad, "auto")  # strict: checked even when the call is not forced
    assert e.value.param == "tools[1].function.parameters"
    loose = [TOOLS[0], {"type": "function", "function": {"name": "f", "parameters": {"type": "nope"}}}]
    constraints.check_tools(loose, "auto")  # neither strict nor forced: nothing to enforce
    with pytest.raises(InvalidRequestError) as e:
        constraints.check_tools(loose, "required")
    assert e.value.param == "tools[1].function.parameters"


@pytest.mark.parametrize("family", ["chatml", "hermes", "llama3", "mistral"])
@pytest.mark.parametrize("forced_name", [None, "lock_door"])
def test_each_familys_forced_call_grammar_accepts_its_own_call_format(tiny_tokenizer, family, forced_name):
    """The grammar continues the family's prefill into exactly the call its parser reads back."""
    import llguidance

    from modelmill.ml.chat_families import FAMILIES

    fam = FAMILIES[family]
    c = constraints.for_tool_call(TOOLS, forced_name, hf_messages=fam.hf_messages, args_key=fam.args_key,
                                  call_suffix=fam.call_suffix)
    prefill = fam.prefill(forced_name)
    head = "" if prefill.endswith(": ") else " " if forced_name else f'lock_door", "{fam.args_key}": '
    rest = head + '{"door": "back"}' + fam.call_suffix
    eos = tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")
    matcher = llguidance.LLMatcher(constraints.ll_tokenizer(tiny_tokenizer, [eos], len(tiny_tokenizer)), c.grammar)
    assert matcher.consume_tokens(tiny_tokenizer(rest, add_special_tokens=False)["input_ids"]), matcher.get_error()
    assert matcher.is_accepting()
    content, calls = fam.parse(prefill + rest)
    assert content is None and calls[0]["function"] == {"name": "lock_door", "arguments": '{"door": "back"}'}
    wrong = llguidance.LLMatcher(constraints.ll_tokenizer(tiny_tokenizer, [eos], len(tiny_tokenizer)), c.grammar)
    bad = rest.replace('"back"', '"side"')
    assert not wrong.consume_tokens(tiny_tokenizer(bad, add_special_tokens=False)["input_ids"])
