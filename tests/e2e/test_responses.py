"""The Responses API and stored chat completions through the official openai SDK against a real
`modelmill serve` on modelmill-tiny: responses.create / retrieve / input_items / delete, the
responses.stream helper, responses.parse (text.format json_schema, enforced by chat's constraint
path), a function call and its output, previous_response_id; chat.completions.create(store=True)
with list / retrieve / messages.list / update / delete. Every object and streamed event is checked
against OpenAI's spec. Short max tokens keep each call well under a second after the first."""

from __future__ import annotations

import json
from typing import Literal

import pytest
from pydantic import BaseModel

from tests.spec_check import RESPONSE_EVENT_SCHEMAS, assert_matches

TINY = {"model": "modelmill-tiny", "max_output_tokens": 4, "temperature": 0}
TOOL = {"type": "function", "name": "set_lights", "description": "Turn the lights of a room on or off.",
        "strict": True, "parameters": {"type": "object", "properties": {
            "room": {"type": "string", "enum": ["hall", "kitchen"]}, "on": {"type": "boolean"}},
            "required": ["room", "on"], "additionalProperties": False}}


def raw_create(client, **kw) -> dict:
    """The wire JSON of responses.create, checked against the spec (the SDK object is built from it)."""
    body = client.responses.with_raw_response.create(**kw).http_response.json()
    assert_matches(body, "Response")
    return body


def test_create_retrieve_input_items_delete(client):
    body = raw_create(client, input="Say hi.", instructions="Be terse.", metadata={"case": "e2e"}, **TINY)
    resp = client.responses.retrieve(body["id"])
    assert resp.id == body["id"] and resp.status in ("completed", "incomplete")
    assert resp.output_text == body["output"][0]["content"][0]["text"] and resp.metadata == {"case": "e2e"}
    assert 1 <= resp.usage.output_tokens <= 4
    items = client.responses.input_items.list(body["id"])
    assert_matches(items.model_dump(exclude_unset=True), "ResponseItemList")
    assert [(i.role, i.content[0].text) for i in items.data] == [("user", "Say hi.")]
    follow = raw_create(client, input="Again.", previous_response_id=body["id"], **TINY)
    assert follow["previous_response_id"] == body["id"]
    deleted = client.responses.delete(body["id"])
    assert deleted is None  # the SDK returns nothing for a 2xx delete
    with pytest.raises(Exception) as e:
        client.responses.retrieve(body["id"])
    assert getattr(e.value, "status_code", None) == 404


def check_events(events) -> list[str]:
    for ev in events:
        if ev.type in RESPONSE_EVENT_SCHEMAS:
            assert_matches(ev.to_dict(warnings=False), RESPONSE_EVENT_SCHEMAS[ev.type])
    kinds = [e.type for e in events if e.type in RESPONSE_EVENT_SCHEMAS]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:-1] == ["response.output_text.done", "response.content_part.done", "response.output_item.done"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    return kinds


def test_stream_hits_max_output_tokens(client):
    """A plain text stream on random weights runs into max_output_tokens: response.incomplete."""
    events = list(client.responses.create(input="Count: 1, 2,", stream=True, **TINY))
    kinds = check_events(events)
    assert kinds[-1] == "response.incomplete"
    final = events[-1].response
    assert final.incomplete_details.reason == "max_output_tokens"
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert final.output_text == text == client.responses.retrieve(final.id).output_text


class Lights(BaseModel):
    room: Literal["hall", "kitchen"]  # short, closed values: the JSON ends well within max_output_tokens
    on: bool


def test_stream_helper_with_text_format(client):
    """responses.stream with a pydantic text_format: the constrained JSON closes, so the stream
    completes, and the helper parses it. (The tiny model's random weights can only produce this
    JSON through the constraint.)"""
    with client.responses.stream(model="modelmill-tiny", input="Hall lights on.", text_format=Lights,
                                 max_output_tokens=40) as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert check_events(events)[-1] == "response.completed"
    assert isinstance(final.output_parsed, Lights) and final.id == events[0].response.id
    assert client.responses.retrieve(final.id).output_text == final.output_text


def test_parse_text_format_json_schema(client):
    parsed = client.responses.parse(model="modelmill-tiny", input="Hall lights on.", text_format=Lights,
                                    max_output_tokens=40)
    assert isinstance(parsed.output_parsed, Lights)
    assert_matches(client.responses.retrieve(parsed.id).to_dict(), "Response")


def test_function_call_round_trip(client):
    first = raw_create(client, model="modelmill-tiny", input="Turn on the hall lights.", tools=[TOOL],
                       tool_choice={"type": "function", "name": "set_lights"}, max_output_tokens=40)
    calls = [o for o in first["output"] if o["type"] == "function_call"]
    assert len(calls) == 1 and calls[0]["name"] == "set_lights"
    args = json.loads(calls[0]["arguments"])  # a valid call by the tool's schema (constrained)
    assert args["room"] in ("hall", "kitchen") and isinstance(args["on"], bool)
    second = raw_create(client, model="modelmill-tiny", previous_response_id=first["id"], tools=[TOOL],
                        input=[{"type": "function_call_output", "call_id": calls[0]["call_id"], "output": "done"}],
                        max_output_tokens=4)
    assert second["output"][0]["type"] == "message"
    items = client.responses.input_items.list(second["id"])
    assert items.data[0].type == "function_call_output" and items.data[0].call_id == calls[0]["call_id"]


def test_stored_chat_completions_with_the_sdk(client):
    messages = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "hi"}]
    made = [client.chat.completions.create(model="modelmill-tiny", messages=messages, max_tokens=3, store=True,
                                           metadata={"suite": "e2e-stored", "i": str(i)}) for i in range(2)]
    client.chat.completions.create(model="modelmill-tiny", messages=messages, max_tokens=3)  # not stored
    listed = client.chat.completions.list(metadata={"suite": "e2e-stored"})
    assert [c.id for c in listed.data] == [c.id for c in made]
    assert_matches(listed.model_dump(exclude_unset=True), "ChatCompletionList")
    one = client.chat.completions.list(metadata={"suite": "e2e-stored", "i": "1"}, model="modelmill-tiny")
    assert [c.id for c in one.data] == [made[1].id]
    got = client.chat.completions.retrieve(made[0].id)
    assert got.choices[0].message.content == made[0].choices[0].message.content
    msgs = client.chat.completions.messages.list(made[0].id)
    assert_matches(msgs.model_dump(exclude_unset=True), "ChatCompletionMessageList")
    assert [(m.role, m.content) for m in msgs.data] == [("system", "Be terse."), ("user", "hi")]
    updated = client.chat.completions.update(made[0].id, metadata={"suite": "e2e-stored", "i": "x"})
    assert updated.metadata == {"suite": "e2e-stored", "i": "x"}
    deleted = client.chat.completions.delete(made[0].id)
    assert deleted.deleted and deleted.id == made[0].id
    assert [c.id for c in client.chat.completions.list(metadata={"suite": "e2e-stored"}).data] == [made[1].id]


def test_fine_tuned_and_checkpoint_models(client, train_file):
    """The Responses API serves what fine-tuning made, like chat completions: the ft: model and a
    checkpoint, with previous_response_id across them."""
    from tests.e2e.conftest import tiny_job, wait_for

    job = wait_for(client, tiny_job(client, train_file.id, suffix="resp").id, {"succeeded", "failed"})
    assert job.status == "succeeded", job.error
    ckpt = client.fine_tuning.jobs.checkpoints.list(job.id).data[0].fine_tuned_model_checkpoint
    first = raw_create(client, model=job.fine_tuned_model, input="turn on the hall lights", max_output_tokens=4)
    second = raw_create(client, model=ckpt, input="and the kitchen", previous_response_id=first["id"],
                        max_output_tokens=4)
    assert (first["model"], second["model"]) == (job.fine_tuned_model, ckpt)
    assert second["usage"]["input_tokens"] > first["usage"]["input_tokens"]
