"""Structured outputs and forced tool calls through the official openai SDK against a live server.

modelmill-tiny has random weights: it only writes JSON (or a parseable tool call) because the
grammar (ml/constraints.py) allows nothing else. Every wire object is checked against OpenAI's spec."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from tests.spec_check import assert_matches

MESSAGES = [{"role": "user", "content": "What is the weather in Oslo?"}]


class Weather(BaseModel):
    city: Literal["Paris", "Oslo"]
    celsius: int = Field(ge=-50, le=50)
    sunny: bool
    note: str = Field(max_length=12)


class LockDoor(BaseModel):
    door: Literal["front", "back"]


TOOLS = [openai.pydantic_function_tool(LockDoor, name="lock_door"),
         {"type": "function", "function": {"name": "get_weather", "parameters": {
             "type": "object", "properties": {"city": {"type": "string", "maxLength": 10}}, "required": ["city"]}}}]


def test_parse_with_a_pydantic_model_returns_the_parsed_object(client):
    completion = client.chat.completions.parse(model="modelmill-tiny", messages=MESSAGES, response_format=Weather,
                                               temperature=0.7, seed=11, max_completion_tokens=80)
    message = completion.choices[0].message
    assert completion.choices[0].finish_reason == "stop"
    assert isinstance(message.parsed, Weather) and message.parsed == Weather.model_validate_json(message.content)


def test_json_object_and_json_schema_raw_responses_match_the_spec(client):
    raw = client.chat.completions.with_raw_response.create(
        model="modelmill-tiny", messages=MESSAGES, temperature=0, max_tokens=60, response_format={"type": "json_object"})
    body = raw.http_response.json()
    assert_matches(body, "CreateChatCompletionResponse")
    assert isinstance(json.loads(body["choices"][0]["message"]["content"]), dict)
    schema = {**Weather.model_json_schema(), "additionalProperties": False}
    chunks = list(client.chat.completions.create(
        model="modelmill-tiny", messages=MESSAGES, temperature=0, max_tokens=80, stream=True,
        response_format={"type": "json_schema", "json_schema": {"name": "weather", "schema": schema}}))
    for chunk in chunks:
        assert_matches(chunk.to_dict(), "CreateChatCompletionStreamResponse")
    jsonschema.validate(json.loads("".join(c.choices[0].delta.content or "" for c in chunks if c.choices)), schema)


@pytest.mark.parametrize("tool_choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
def test_forced_tool_calls_are_valid_parsed_calls(client, tool_choice):
    raw = client.chat.completions.with_raw_response.create(
        model="modelmill-tiny", messages=MESSAGES, tools=TOOLS, tool_choice=tool_choice, temperature=1, seed=4,
        max_tokens=60)
    body = raw.http_response.json()
    assert_matches(body, "CreateChatCompletionResponse")
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
    assert tool_choice == "required" or call["function"]["name"] == "get_weather"
    jsonschema.validate(json.loads(call["function"]["arguments"]), schemas[call["function"]["name"]])


def test_pydantic_function_tool_parses_through_the_sdk(client):
    completion = client.chat.completions.parse(model="modelmill-tiny", messages=MESSAGES, tools=TOOLS[:1],
                                               tool_choice="required", temperature=0, max_tokens=40)
    (call,) = completion.choices[0].message.tool_calls
    assert isinstance(call.function.parsed_arguments, LockDoor)


@pytest.mark.parametrize("body, param", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "strin"}}}},
     "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "object"}}}}, "response_format"),
    ({"response_format": {"type": "yaml"}}, "response_format"),
    ({"tools": [TOOLS[1], {"type": "function", "function": {"name": "f", "strict": True, "parameters": {
        "type": "object", "properties": {"a": {"$ref": "#/$defs/nowhere"}}}}}]}, "tools[1].function.parameters"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "unknown"}}}, "tool_choice"),
])
@pytest.mark.parametrize("stream", [False, True])
def test_bad_schemas_are_400_naming_the_field(client, body, param, stream):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="modelmill-tiny", messages=MESSAGES, max_tokens=5, stream=stream, **body)
    assert e.value.status_code == 400 and e.value.body["param"] == param
    assert_matches({"error": e.value.body}, "ErrorResponse")


def test_structured_and_plain_requests_batch_together(client):
    """8 concurrent requests, half structured: each structured answer validates; a plain greedy
    answer is the same as when it is sent alone (the grammar is per row)."""
    def structured(i):
        return client.chat.completions.parse(model="modelmill-tiny", messages=MESSAGES, response_format=Weather,
                                             temperature=1, seed=i, max_tokens=80)

    def plain(i):
        return client.chat.completions.create(model="modelmill-tiny", messages=[{"role": "user", "content": f"hi {i}"}],
                                              temperature=0, max_tokens=8)

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(structured if i % 2 else plain, i) for i in range(8)]
        results = [f.result() for f in futures]
    for i, r in enumerate(results):
        if i % 2:
            assert isinstance(r.choices[0].message.parsed, Weather)
        else:
            assert r.choices[0].message.content == plain(i).choices[0].message.content
