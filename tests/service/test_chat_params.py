"""Chat completions parameters on the wire (modelmill-tiny, the official openai SDK over the app):
logprobs / top_logprobs in completions and streams, logit_bias and the penalties, and every
OpenAI parameter ModelMill does not honour refused with a 400 naming it (service/chat/params.py,
docs/api-parameters.md). Every body is checked against OpenAI's spec."""

from __future__ import annotations

import json

import openai
import pytest
from fastapi.testclient import TestClient
from openai import OpenAI

from modelmill.service.api.app import create_app
from tests.spec_check import assert_matches

USER = [{"role": "user", "content": "hi"}]
TOOLS = [{"type": "function", "function": {"name": "set_lights", "parameters": {
    "type": "object", "properties": {"room": {"type": "string"}}, "required": ["room"]}}}]


@pytest.fixture
def sdk(client):
    return OpenAI(base_url="http://testserver/v1", api_key="x", http_client=client, max_retries=0)


def chunks_of(client, body: dict) -> list[dict]:
    r = client.post("/v1/chat/completions", json={**body, "stream": True})
    assert r.status_code == 200, r.text
    lines = [line[len("data: "):] for line in r.text.split("\n") if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    chunks = [json.loads(line) for line in lines[:-1]]
    for ch in chunks:
        assert_matches(ch, "CreateChatCompletionStreamResponse")
    return chunks


def test_logprobs_in_completion_and_stream(client, sdk):
    body = {"model": "modelmill-tiny", "messages": USER, "max_tokens": 8, "temperature": 0,
            "logprobs": True, "top_logprobs": 2}
    raw = client.post("/v1/chat/completions", json=body)
    assert raw.status_code == 200, raw.text
    assert_matches(raw.json(), "CreateChatCompletionResponse")
    resp = sdk.chat.completions.create(**body)
    entries = resp.choices[0].logprobs.content
    assert entries and all(len(e.top_logprobs) == 2 and e.logprob <= 0 for e in entries)
    assert "".join(e.token for e in entries) == resp.choices[0].message.content
    assert entries[0].top_logprobs[0].token == entries[0].token  # greedy picks the most likely token

    streamed = [e for ch in chunks_of(client, body) for c in ch["choices"] for e in (c.get("logprobs") or {}).get(
        "content") or []]
    assert streamed == [e.model_dump() for e in entries]
    sdk_stream = sdk.chat.completions.create(**body, stream=True)
    assert [e.token for ch in sdk_stream for c in ch.choices for e in (c.logprobs.content if c.logprobs else [])] \
        == [e.token for e in entries]


def test_no_logprobs_unless_asked(client):
    r = client.post("/v1/chat/completions", json={"model": "modelmill-tiny", "messages": USER, "max_tokens": 3})
    assert r.json()["choices"][0]["logprobs"] is None


def test_logprobs_cover_tool_call_text(client):
    """A forced call: its tokens (the call's text after the prefill) carry logprobs, in the
    completion and, after the tool_calls chunk, in the stream."""
    body = {"model": "modelmill-tiny", "messages": USER, "max_tokens": 40, "temperature": 0, "tools": TOOLS,
            "tool_choice": "required", "logprobs": True}
    r = client.post("/v1/chat/completions", json=body).json()
    assert_matches(r, "CreateChatCompletionResponse")
    entries = r["choices"][0]["logprobs"]["content"]
    assert entries
    text, message = "".join(e["token"] for e in entries), r["choices"][0]["message"]
    if message["content"] is not None:  # the random model did not close the call within max_tokens
        assert message["content"].endswith(text) and "set_lights" in text  # the generated part, prefill not
    else:
        assert message["tool_calls"][0]["function"]["arguments"] in text
    streamed = [e for ch in chunks_of(client, body) for c in ch["choices"]
                for e in (c.get("logprobs") or {}).get("content") or []]
    assert streamed == entries


def test_logit_bias_forces_a_token_over_the_sdk(sdk):
    # 260 is " the" in modelmill-tiny's (SmolLM2's) tokenizer
    resp = sdk.chat.completions.create(model="modelmill-tiny", messages=USER, max_tokens=5, temperature=0.8,
                                       seed=2, logit_bias={"260": 100})
    assert resp.choices[0].message.content == " the" * 5


def test_penalties_are_accepted_and_change_output(sdk):
    base = dict(model="modelmill-tiny", messages=USER, max_tokens=24, temperature=0)
    plain = sdk.chat.completions.create(**base).choices[0].message.content
    penalised = sdk.chat.completions.create(**base, frequency_penalty=2.0, presence_penalty=1.0)
    assert penalised.choices[0].message.content != plain


REFUSED = [
    ({"audio": {"voice": "alloy", "format": "wav"}, "modalities": ["text", "audio"]}, "audio"),
    ({"modalities": ["text", "audio"]}, "modalities"),
    ({"prediction": {"type": "content", "content": "x"}}, "prediction"),
    ({"web_search_options": {}}, "web_search_options"),
    ({"service_tier": "flex"}, "service_tier"),
    ({"service_tier": "priority"}, "service_tier"),
    ({"reasoning_effort": "high"}, "reasoning_effort"),
    ({"verbosity": "low"}, "verbosity"),
    ({"moderation": {"model": "omni-moderation-latest"}}, "moderation"),
    ({"functions": [{"name": "f"}]}, "functions"),
    ({"function_call": "auto"}, "function_call"),
    ({"prompt_cache_retention": "24h"}, "prompt_cache_retention"),
    ({"prompt_cache_options": {"ttl": "30m"}}, "prompt_cache_options"),
    ({"stream": True, "stream_options": {"include_obfuscation": True}}, "stream_options.include_obfuscation"),
    ({"tools": [{"type": "custom", "custom": {"name": "grep"}}]}, "tools[0].type"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
    ({"n": 17}, "n"),
    ({"n": 129}, "n"),
    ({"top_logprobs": 3}, "top_logprobs"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"logit_bias": {"abc": 3}}, "logit_bias"),
    ({"logit_bias": {"7": 150}}, "logit_bias"),
    ({"logit_bias": {"99999999": 3}}, "logit_bias"),
    ({"presence_penalty": 3}, "presence_penalty"),
    ({"frequency_penalty": -2.5}, "frequency_penalty"),
    ({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "a"}, {"role": "user", "content": [
        {"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]},
     "messages[2].content[1]"),
    ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]}]},
     "messages[0].content[0]"),
    ({"messages": [{"role": "user", "content": [{"type": "file", "file": {"file_id": "file-x"}}]}]},
     "messages[0].content[0]"),
    ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages[0].content[0]"),
    ({"messages": [{"role": "assistant", "audio": {"id": "a"}}, *USER]}, "messages[0].audio"),
]


@pytest.mark.parametrize("extra, param", REFUSED, ids=[p for _, p in REFUSED])
def test_unhonoured_parameters_are_a_400_naming_them(client, extra, param):
    r = client.post("/v1/chat/completions", json={"model": "modelmill-tiny", "messages": USER, "max_tokens": 2,
                                                  **extra})
    assert r.status_code == 400, r.text
    assert_matches(r.json(), "ErrorResponse")
    assert r.json()["error"]["param"] == param, r.json()


def test_limit_messages_name_the_limit(client):
    n = client.post("/v1/chat/completions", json={"model": "modelmill-tiny", "messages": USER, "n": 17}).json()
    assert "16" in n["error"]["message"] and "MODELMILL_MAX_CHAT_N" in n["error"]["message"]
    image = client.post("/v1/chat/completions", json={"model": "modelmill-tiny", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]}).json()
    assert "text-only" in image["error"]["message"] and "modelmill-tiny" in image["error"]["message"]


def test_deployment_limits_come_from_settings(settings, store):
    with TestClient(create_app(settings.with_(max_top_logprobs=5, max_chat_n=2), store=store)) as c:
        sdk = OpenAI(base_url="http://testserver/v1", api_key="x", http_client=c, max_retries=0)
        with pytest.raises(openai.BadRequestError) as e:
            sdk.chat.completions.create(model="modelmill-tiny", messages=USER, logprobs=True, top_logprobs=6)
        assert e.value.body["param"] == "top_logprobs" and "at most 5" in e.value.body["message"]
        with pytest.raises(openai.BadRequestError) as e:
            sdk.chat.completions.create(model="modelmill-tiny", messages=USER, n=3)
        assert e.value.body["param"] == "n" and "at most 2" in e.value.body["message"]


@pytest.mark.parametrize("extra", [
    {"service_tier": "auto"}, {"service_tier": "default"}, {"reasoning_effort": "none"}, {"modalities": ["text"]},
    {"prompt_cache_key": "k", "safety_identifier": "user-1", "user": "u", "prompt_cache_retention": "in_memory"},
    {"stream_options": {"include_obfuscation": False}, "stream": True},
    {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]},
    {"parallel_tool_calls": False, "tools": TOOLS},
    {"n": None, "stream": None},
])
def test_values_that_ask_for_nothing_missing_are_accepted(client, extra):
    r = client.post("/v1/chat/completions", json={"model": "modelmill-tiny", "messages": USER, "max_tokens": 2,
                                                  **extra})
    assert r.status_code == 200, r.text


def test_every_openai_parameter_is_declared_and_documented():
    """Each property of OpenAI's CreateChatCompletionRequest is a field of the request model (so
    it is honoured or refused by name, never 'Unrecognized') and a row of docs/api-parameters.md."""
    from pathlib import Path

    from modelmill.service.schemas.chat import ChatCompletionRequest
    from tests.spec_check import SPEC_PATH

    schemas = json.loads(SPEC_PATH.read_text())["components"]["schemas"]

    def properties(name: str) -> set[str]:
        schema = schemas[name]
        out: set[str] = set()
        for part in schema.get("allOf", [schema]):
            out |= properties(part["$ref"].split("/")[-1]) if "$ref" in part else set(part.get("properties", {}))
        return out

    params = properties("CreateChatCompletionRequest")
    assert len(params) > 30
    assert params <= set(ChatCompletionRequest.model_fields), params - set(ChatCompletionRequest.model_fields)
    doc = (Path(__file__).resolve().parents[2] / "docs" / "api-parameters.md").read_text()
    assert not [p for p in params if f"`{p}`" not in doc]


def test_logprobs_per_choice_with_n(client):
    body = {"model": "modelmill-tiny", "messages": USER, "max_tokens": 5, "temperature": 0.9, "seed": 4, "n": 2,
            "logprobs": True, "top_logprobs": 1}
    whole = client.post("/v1/chat/completions", json=body).json()
    assert_matches(whole, "CreateChatCompletionResponse")
    for choice in whole["choices"]:
        assert "".join(e["token"] for e in choice["logprobs"]["content"]) == choice["message"]["content"]
        streamed = [e for ch in chunks_of(client, body) for c in ch["choices"] if c["index"] == choice["index"]
                    for e in (c.get("logprobs") or {}).get("content") or []]
        assert streamed == choice["logprobs"]["content"]
