"""/v1/chat/completions on modelmill-tiny (non-stream, stream, tools) plus the wire shape of
tool calls, checked with a stub sampler that returns a parsed call."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from modelmill.ml.sampling import Choice, GenerationResult, Sampler, StreamEvent
from modelmill.service.api.app import create_app
from tests.spec_check import assert_matches

USER = [{"role": "user", "content": "hi"}]
TOOLS = [{"type": "function", "function": {"name": "set_lights", "description": "Lights on or off.",
                                           "parameters": {"type": "object", "properties": {
                                               "room": {"type": "string"}, "state": {"type": "string"}},
                                               "required": ["room", "state"]}}}]


def sse_chunks(text: str) -> list:
    lines = [line[len("data: "):] for line in text.split("\n") if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def test_completion_on_tiny_model(client):
    r = client.post("/v1/chat/completions", json={"model": "modelmill-tiny", "messages": USER, "max_tokens": 5,
                                                  "temperature": 0, "seed": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert_matches(body, "CreateChatCompletionResponse")
    assert body["model"] == "modelmill-tiny" and body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert body["choices"][0]["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert 1 <= usage["completion_tokens"] <= 5
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_stream_on_tiny_model_with_usage(client):
    r = client.post("/v1/chat/completions", json={"model": "modelmill-tiny", "messages": USER, "max_tokens": 6,
                                                  "temperature": 0, "stream": True,
                                                  "stream_options": {"include_usage": True}})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    chunks = sse_chunks(r.text)
    for ch in chunks:
        assert_matches(ch, "CreateChatCompletionStreamResponse")
    assert len({ch["id"] for ch in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-2]["choices"][0]["finish_reason"] in ("stop", "length")
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] >= 1
    assert all(ch["usage"] is None for ch in chunks[:-1])
    streamed = "".join(ch["choices"][0]["delta"].get("content") or "" for ch in chunks if ch["choices"])
    plain = client.post("/v1/chat/completions", json={"model": "modelmill-tiny", "messages": USER,
                                                      "max_tokens": 6, "temperature": 0}).json()
    assert streamed == plain["choices"][0]["message"]["content"]


def test_stream_without_usage_omits_it(client):
    r = client.post("/v1/chat/completions", json={"model": "modelmill-tiny", "messages": USER, "max_tokens": 2,
                                                  "stream": True})
    assert all("usage" not in ch for ch in sse_chunks(r.text))


def test_tools_and_n_on_tiny_model(client):
    r = client.post("/v1/chat/completions", json={"model": "modelmill-tiny", "messages": USER, "tools": TOOLS,
                                                  "tool_choice": "auto", "n": 2, "max_tokens": 4, "seed": 5,
                                                  "stop": ["\n\n"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert_matches(body, "CreateChatCompletionResponse")
    assert [c["index"] for c in body["choices"]] == [0, 1]


def test_unknown_model_is_404_model_not_found(client):
    for model in ("ft:nope:x::y", "no-such-base"):
        r = client.post("/v1/chat/completions", json={"model": model, "messages": USER})
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
        assert_matches(r.json(), "ErrorResponse")


class ToolCallingSampler(Sampler):
    """The real Sampler with generation replaced: the model 'answers' with one tool call."""

    CALL = {"id": "call_abc", "type": "function",
            "function": {"name": "set_lights", "arguments": '{"room": "kitchen", "state": "on"}'}}

    def generate(self, ref, messages, tools=None, params=None, tool_choice=None, **kw):  # kw: cancel=
        assert tools and tools[0]["function"]["name"] == "set_lights"
        return GenerationResult([Choice(0, "<tool_call>...</tool_call>", None, [self.CALL], "tool_calls", 9)], 20, 9)

    def stream(self, ref, messages, tools=None, params=None, tool_choice=None, **kw):  # kw: cancel=
        yield StreamEvent(index=0, finish_reason="tool_calls", tool_calls=[self.CALL],
                          usage={"prompt_tokens": 20, "completion_tokens": 9, "total_tokens": 29})


@pytest.fixture
def tool_client(settings, store):
    with TestClient(create_app(settings, store=store, sampler=ToolCallingSampler())) as c:
        yield c


def test_tool_calls_wire_shape(tool_client):
    body = {"model": "modelmill-tiny", "messages": [{"role": "user", "content": "kitchen lights on"}],
            "tools": TOOLS}
    r = tool_client.post("/v1/chat/completions", json=body).json()
    assert_matches(r, "CreateChatCompletionResponse")
    choice = r["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    assert choice["message"]["tool_calls"] == [ToolCallingSampler.CALL]

    chunks = sse_chunks(tool_client.post("/v1/chat/completions", json={**body, "stream": True}).text)
    for ch in chunks:
        assert_matches(ch, "CreateChatCompletionStreamResponse")
    calls = [tc for ch in chunks for tc in ch["choices"][0]["delta"].get("tool_calls", [])]
    assert calls == [{"index": 0, **ToolCallingSampler.CALL}]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_openai_sdk_parses_tool_calls(tool_client):
    from openai import OpenAI

    sdk = OpenAI(base_url="http://testserver/v1", api_key="x", http_client=tool_client)
    resp = sdk.chat.completions.create(model="modelmill-tiny", tools=TOOLS,
                                       messages=[{"role": "user", "content": "kitchen lights on"}])
    call = resp.choices[0].message.tool_calls[0]
    assert call.function.name == "set_lights" and json.loads(call.function.arguments)["room"] == "kitchen"


@pytest.mark.parametrize("extra", [
    {"seed": 2**70},
    {"max_tokens": 0},
    {"n": 1000},
    {"stop": ["a", "b", "c", "d", "e"]},
    {"top_p": 0},
    {"messages": []},
    {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
    {"messages": [{"role": "user", "content": "x" * 40_000}]},
    {"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": {"type": "function",
                                                                              "function": {"name": "g"}}},
    {"tools": [{"type": "function"}]},
    {"stop": [""], "temperature": 2, "user": "u", "logprobs": True},
    {"stream": True, "n": 2, "max_tokens": 2, "messages": [{"role": "tool", "tool_call_id": "c"}]},
])
def test_odd_requests_never_5xx(client, extra):
    r = client.post("/v1/chat/completions", json={"model": "modelmill-tiny", "messages": USER, "max_tokens": 2,
                                                  **extra})
    assert r.status_code < 500, r.text
    if r.status_code >= 400:
        assert_matches(r.json(), "ErrorResponse")
