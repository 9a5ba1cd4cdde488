"""/v1/responses on modelmill-tiny (create, stream, read, input items, delete, previous_response_id),
the function-call round trip with a stub sampler that answers with a call, and the 400s that name
each refused field. Every object and streamed event is checked against OpenAI's schemas."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from modelmill.ml.sampling import Choice, GenerationResult, Sampler, StreamEvent
from modelmill.service.api.app import create_app
from tests.spec_check import RESPONSE_EVENT_SCHEMAS, assert_matches

TINY = {"model": "modelmill-tiny", "max_output_tokens": 4, "temperature": 0}
TOOL = {"type": "function", "name": "set_lights", "description": "Lights on or off.", "strict": True,
        "parameters": {"type": "object", "properties": {"room": {"type": "string"}}, "required": ["room"],
                       "additionalProperties": False}}


def sse_events(text: str) -> list[dict]:
    """The stream's events, each checked against its schema and its `event:` line."""
    out = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        event = json.loads(lines["data"])
        assert lines["event"] == event["type"]
        assert_matches(event, RESPONSE_EVENT_SCHEMAS[event["type"]])
        out.append(event)
    assert [e["sequence_number"] for e in out] == list(range(len(out)))
    return out


def ok(r, status: int = 200) -> dict:
    assert r.status_code == status, r.text
    return r.json()


def test_text_response_read_list_delete(client):
    resp = ok(client.post("/v1/responses", json={**TINY, "input": "hi", "instructions": "Be terse.",
                                                 "metadata": {"team": "a"}}))
    assert_matches(resp, "Response")
    assert resp["status"] in ("completed", "incomplete") and resp["instructions"] == "Be terse."
    message = resp["output"][0]
    assert message["type"] == "message" and message["content"][0]["type"] == "output_text"
    assert 1 <= resp["usage"]["output_tokens"] <= 4 and resp["metadata"] == {"team": "a"}
    assert ok(client.get(f"/v1/responses/{resp['id']}")) == resp
    items = ok(client.get(f"/v1/responses/{resp['id']}/input_items"))
    assert_matches(items, "ResponseItemList")
    assert [(i["role"], i["content"][0]["text"]) for i in items["data"]] == [("user", "hi")]
    deleted = ok(client.delete(f"/v1/responses/{resp['id']}"))
    assert deleted == {"id": resp["id"], "object": "response.deleted", "deleted": True}
    assert client.get(f"/v1/responses/{resp['id']}").status_code == 404


def test_previous_response_id_carries_the_conversation_and_store_false_is_not_kept(client):
    first = ok(client.post("/v1/responses", json={**TINY, "input": "Name a colour.", "instructions": "Be terse."}))
    second = ok(client.post("/v1/responses", json={**TINY, "input": "Another.", "previous_response_id": first["id"]}))
    alone = ok(client.post("/v1/responses", json={**TINY, "input": "Another.", "store": False}))
    assert second["previous_response_id"] == first["id"]
    # The second prompt holds the first turn (its input and output; not its instructions).
    assert second["usage"]["input_tokens"] > alone["usage"]["input_tokens"] + first["usage"]["output_tokens"]
    assert client.get(f"/v1/responses/{alone['id']}").status_code == 404
    r = client.post("/v1/responses", json={**TINY, "input": "x", "previous_response_id": alone["id"]})
    assert r.status_code == 404 and r.json()["error"]["param"] == "previous_response_id"


def test_stream_events_in_openai_order(client):
    r = client.post("/v1/responses", json={**TINY, "input": "hi", "stream": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    kinds = [e["type"] for e in events]
    deltas = kinds.count("response.output_text.delta")
    assert kinds == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.content_part.added"] + ["response.output_text.delta"] * deltas + [
        "response.output_text.done", "response.content_part.done", "response.output_item.done", kinds[-1]]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    final = events[-1]["response"]
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert final["output"][0]["content"][0]["text"] == text == events[-4]["text"]
    assert ok(client.get(f"/v1/responses/{final['id']}")) == final


def test_logprobs_through_chats_path(client):
    """include message.output_text.logprobs + top_logprobs: each output token with its logprob and
    alternatives, the same numbers chat completions gives for the same greedy tokens."""
    body = {**TINY, "input": "hi", "include": ["message.output_text.logprobs"], "top_logprobs": 2}
    resp = ok(client.post("/v1/responses", json=body))
    assert_matches(resp, "Response")
    part = resp["output"][0]["content"][0]
    assert len(part["logprobs"]) == resp["usage"]["output_tokens"]
    assert "".join(lp["token"] for lp in part["logprobs"]) == part["text"]
    assert all(len(lp["top_logprobs"]) == 2 for lp in part["logprobs"])
    chat = ok(client.post("/v1/chat/completions", json={
        "model": "modelmill-tiny", "max_tokens": 4, "temperature": 0, "logprobs": True, "top_logprobs": 2,
        "messages": [{"role": "user", "content": "hi"}]}))
    assert [lp["logprob"] for lp in part["logprobs"]] == pytest.approx(
        [lp["logprob"] for lp in chat["choices"][0]["logprobs"]["content"]], abs=1e-4)
    events = sse_events(client.post("/v1/responses", json={**body, "stream": True}).text)
    streamed = [lp for e in events if e["type"] == "response.output_text.delta" for lp in e["logprobs"]]
    assert [lp["token"] for lp in streamed] == [lp["token"] for lp in part["logprobs"]]
    assert events[-1]["response"]["output"][0]["content"][0]["logprobs"] == streamed


def test_prompt_past_the_context_fails_in_band_once_streaming(client):
    """Found only when generation starts: an `error` event naming `input`, then response.failed."""
    long_input = "lights " * 40_000
    r = client.post("/v1/responses", json={**TINY, "input": long_input})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input", r.text
    r = client.post("/v1/responses", json={**TINY, "input": long_input, "stream": True})
    if r.status_code == 400:  # refused before streaming (a request-size bound): named all the same
        assert r.json()["error"]["param"] == "input", r.text
        return
    events = sse_events(r.text)
    assert [e["type"] for e in events] == ["response.created", "response.in_progress", "error", "response.failed"]
    assert events[2]["param"] == "input" and events[3]["response"]["status"] == "failed"


class CallingSampler(Sampler):
    """The real Sampler with generation replaced: the model 'answers' with one call of set_lights."""

    CALL = {"id": "call_abc", "type": "function", "function": {"name": "set_lights", "arguments": '{"room": "hall"}'}}

    def generate(self, ref, messages, tools=None, params=None, tool_choice=None, **kw):
        self.seen = messages
        if messages[-1]["role"] == "tool":
            return GenerationResult([Choice(0, "Done.", "Done.", [], "stop", 2)], 30, 2)
        return GenerationResult([Choice(0, "<tool_call>..</tool_call>", None, [self.CALL], "tool_calls", 9)], 20, 9)

    def stream(self, ref, messages, tools=None, params=None, tool_choice=None, **kw):
        yield StreamEvent(index=0, finish_reason="tool_calls", tool_calls=[self.CALL],
                          usage={"prompt_tokens": 20, "completion_tokens": 9, "total_tokens": 29})


@pytest.fixture
def calling(settings, store):
    sampler = CallingSampler()
    with TestClient(create_app(settings, store=store, sampler=sampler)) as c:
        yield c, sampler


def test_function_call_and_its_output_round_trip(calling):
    client, sampler = calling
    resp = ok(client.post("/v1/responses", json={"model": "modelmill-tiny", "input": "hall lights", "tools": [TOOL],
                                                 "tool_choice": {"type": "function", "name": "set_lights"}}))
    assert_matches(resp, "Response")
    (call,) = resp["output"]
    assert call["type"] == "function_call" and call["call_id"] == "call_abc" and call["name"] == "set_lights"
    assert resp["tools"] == [TOOL] and resp["tool_choice"] == {"type": "function", "name": "set_lights"}
    answer = ok(client.post("/v1/responses", json={
        "model": "modelmill-tiny", "previous_response_id": resp["id"], "tools": [TOOL],
        "input": [{"type": "function_call_output", "call_id": "call_abc", "output": "ok"}]}))
    assert answer["output"][0]["content"][0]["text"] == "Done."
    assert [m["role"] for m in sampler.seen] == ["user", "assistant", "tool"]
    assert sampler.seen[1]["tool_calls"] == [CallingSampler.CALL]
    items = ok(client.get(f"/v1/responses/{answer['id']}/input_items"))
    assert_matches(items, "ResponseItemList")
    assert items["data"][0]["type"] == "function_call_output"

    events = sse_events(client.post("/v1/responses", json={"model": "modelmill-tiny", "input": "hall", "stream": True,
                                                           "tools": [TOOL]}).text)
    assert [e["type"] for e in events] == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.function_call_arguments.delta", "response.function_call_arguments.done",
        "response.output_item.done", "response.completed"]
    assert events[4]["arguments"] == CallingSampler.CALL["function"]["arguments"]


def test_function_call_items_in_input(calling):
    client, sampler = calling
    body = {"model": "modelmill-tiny", "tools": [TOOL], "input": [
        {"role": "user", "content": [{"type": "input_text", "text": "hall"}]},
        {"type": "function_call", "call_id": "c1", "name": "set_lights", "arguments": "{}"},
        {"type": "function_call", "call_id": "c2", "name": "set_lights", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "ok"},
        {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "ok"}]}]}
    ok(client.post("/v1/responses", json=body))
    assert [m["role"] for m in sampler.seen] == ["user", "assistant", "tool", "tool"]
    assert [c["id"] for c in sampler.seen[1]["tool_calls"]] == ["c1", "c2"]


@pytest.mark.parametrize("extra, param", [
    ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"tools": [TOOL, {"type": "code_interpreter", "container": {"type": "auto"}}]}, "tools[1].type"),
    ({"tools": [TOOL], "tool_choice": {"type": "function", "name": "nope"}}, "tool_choice.name"),
    ({"tool_choice": {"type": "file_search"}}, "tool_choice.type"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"input": [{"type": "reasoning", "summary": []}]}, "input[0].type"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "http://x"}]}]},
     "input[0].content[0]"),
    ({"input": [{"role": "wizard", "content": "x"}]}, "input[0].role"),
    ({"input": [{"type": "function_call_output", "call_id": "nope", "output": "x"}]}, "input[0].call_id"),
    ({"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}, "input[0].call_id"),
    ({"input": [{"role": "user", "content": "x", "colour": 1}]}, "input[0].colour"),
    ({"input": []}, "input"),
    ({"reasoning": {"effort": "high"}}, "reasoning"),
    ({"background": True}, "background"),
    ({"include": ["file_search_call.results"]}, "include[0]"),
    ({"top_logprobs": 21}, "top_logprobs"),
    ({"truncation": "auto"}, "truncation"),
    ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema"),
    ({"text": {"format": {"type": "xml"}}}, "text.format.type"),
    ({"temperature": 3}, "temperature"),
    ({"max_output_tokens": 0}, "max_output_tokens"),
    ({"metadata": {"k": 1}}, "metadata"),
    ({"frobnicate": True}, "frobnicate"),
])
def test_bad_requests_are_400_naming_the_field(client, extra, param):
    r = client.post("/v1/responses", json={"model": "modelmill-tiny", "input": "hi", **extra})
    assert r.status_code == 400, r.text
    assert_matches(r.json(), "ErrorResponse")
    assert r.json()["error"]["param"] == param, r.text


def test_unknown_response_and_model_are_404(client):
    for path in ("/v1/responses/resp_nope", "/v1/responses/resp_nope/input_items"):
        r = client.get(path)
        assert r.status_code == 404 and r.json()["error"]["param"] == "response_id"
    r = client.post("/v1/responses", json={"model": "no-such-model", "input": "hi"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
