"""Bad structured-output input over HTTP (issue 16): malformed response_format schemas, tool schemas
llguidance cannot compile and tool_choice naming no tool are each a 400 in OpenAI's envelope whose
`param` names the field, streamed or not, never a 5xx, and none holds a generation slot.
(That good structured requests are served: tests/e2e/test_structured_outputs.py.)"""

from __future__ import annotations

import json

import pytest

from tests.spec_check import assert_matches

MESSAGES = [{"role": "user", "content": "hi"}]
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}


def schema_format(schema) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "s", "schema": schema, "strict": True}}


def nested(depth: int, leaf: dict) -> dict:
    node = leaf
    for _ in range(depth):
        node = {"type": "array", "items": node}
    return node


def strict_tool(parameters) -> dict:
    return {"type": "function", "function": {"name": "g", "strict": True, "parameters": parameters}}


CASES = [  # (request fields, the param the 400 must name)
    ({"response_format": "json"}, "response_format"),
    ({"response_format": {}}, "response_format"),
    ({"response_format": {"type": "grammar", "grammar": "start: x"}}, "response_format"),
    ({"response_format": {"type": "json_schema"}}, "response_format"),
    ({"response_format": {"type": "json_object", "json_schema": {"name": "s"}}}, "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": {}, "strictt": True}}},
     "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "s"}, "extra": 1}}, "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}}, "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "s", "strict": "yes"}}}, "response_format"),
    ({"response_format": schema_format([1, 2])}, "response_format"),
    ({"response_format": schema_format({"type": "strin"})}, "response_format"),
    ({"response_format": schema_format({"type": "string", "pattern": "(unclosed"})}, "response_format"),
    ({"response_format": schema_format({"$ref": "#/$defs/none"})}, "response_format"),
    ({"response_format": schema_format({"type": "integer", "minimum": 5, "maximum": 1})}, "response_format"),
    ({"response_format": schema_format(nested(300, {"type": "strin"}))}, "response_format"),  # deep, bad leaf
    ({"response_format": schema_format({"allOf": [{"type": "string"}, {"type": "integer"}]})}, "response_format"),
    ({"response_format": schema_format({"type": "object", "required": ["a"], "additionalProperties": False})},
     "response_format"),
    ({"tools": [TOOL, strict_tool({"type": "object", "properties": {"a": {"type": 3}}})]},
     "tools[1].function.parameters"),
    ({"tools": [TOOL, strict_tool("not a schema")]}, "tools[1].function.parameters"),
    ({"tools": [strict_tool({"type": "string", "format": "no-such-format"})], "tool_choice": "auto"},
     "tools[0].function.parameters"),
    ({"tools": [TOOL, {"type": "function", "function": {"name": "h", "parameters": {"type": "nope"}}}],
      "tool_choice": "required"}, "tools[1].function.parameters"),
    ({"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "missing"}}}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
]


@pytest.mark.parametrize("stream", [False, True])
def test_malformed_structured_requests_are_400_naming_the_field(bad_input_service, stream):
    _, _, http, _ = bad_input_service
    wrong = []
    for fields, param in CASES:
        body = {"model": "modelmill-tiny", "messages": MESSAGES, "max_tokens": 4, "stream": stream, **fields}
        r = http.post("/v1/chat/completions", json=body)
        got = r.json().get("error", {}).get("param") or "" if r.status_code == 400 else None
        if got != param and not (got or "").startswith(param + "."):  # the field, or a path inside it
            wrong.append((json.dumps(fields)[:120], r.status_code, r.text[:200]))
            continue
        assert_matches(r.json(), "ErrorResponse")
    assert not wrong, wrong


def test_no_generation_slot_is_held_after_the_bad_requests(bad_input_service):
    """Every case above is refused before it reaches the chat executor (service/core/limits.py): none
    runs, none waits."""
    _, _, http, _ = bad_input_service
    for fields, _ in CASES[:3]:
        http.post("/v1/chat/completions", json={"model": "modelmill-tiny", "messages": MESSAGES, **fields})
    executor = getattr(http.app.state, "chat_executor", None)
    if executor is not None:
        stats = executor.stats()
        assert stats["running"] == 0 and stats["queued"] == 0, stats
