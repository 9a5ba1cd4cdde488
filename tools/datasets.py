"""Small training files for the tiny model, shared by the end-to-end tests, the reliability suites and
the probes: each example is a few dozen tokens, so a tiny-model step takes a fraction of a second."""

from __future__ import annotations

import json
import random

# Two function tools (a light switch, a thermometer) and a call of one: training lines with tools, for the
# validator's tests and the malformed corpus.
LIGHT_TOOLS = [
    {"type": "function", "function": {
        "name": "set_light", "description": "Turn a light on or off",
        "parameters": {"type": "object", "properties": {"room": {"type": "string"}, "on": {"type": "boolean"}},
                       "required": ["room"]}}},
    {"type": "function", "function": {"name": "get_temp", "parameters": {"type": "object", "properties": {}}}},
]


def tool_call(id_: str, name: str = "set_light", args: str = '{"room": "kitchen", "on": true}') -> dict:
    return {"id": id_, "type": "function", "function": {"name": name, "arguments": args}}


# An RFT grader for arithmetic_dataset: the sample must equal the item's answer.
STRING_CHECK = {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
                "reference": "{{item.answer}}", "operation": "eq"}


def short_dataset(n: int, seed: int = 0) -> bytes:
    """Short chat examples (~30 tokens) so each tiny-model step takes a fraction of a second;
    the smart-home examples carry ~470 tokens of tool schemas and belong in the demo."""
    rng = random.Random(seed)
    rooms = ["kitchen", "bedroom", "office", "garage", "hall", "attic"]
    lines = []
    for _ in range(n):
        room, state = rng.choice(rooms), rng.choice(["on", "off"])
        lines.append(json.dumps({"messages": [
            {"role": "system", "content": "Reply with the room and the state."},
            {"role": "user", "content": f"turn {state} the {room} lights"},
            {"role": "assistant", "content": f"{room} {state}"}]}))
    return ("\n".join(lines) + "\n").encode()


def short_preference_dataset(n: int, seed: int = 0) -> bytes:
    """Short DPO lines in the style of short_dataset: the right state preferred over the wrong one."""
    rng = random.Random(seed)
    rooms = ["kitchen", "bedroom", "office", "garage", "hall", "attic"]
    lines = []
    for _ in range(n):
        room, state = rng.choice(rooms), rng.choice(["on", "off"])
        wrong = "off" if state == "on" else "on"
        lines.append(json.dumps({
            "input": {"messages": [{"role": "system", "content": "Reply with the room and the state."},
                                   {"role": "user", "content": f"turn {state} the {room} lights"}]},
            "preferred_output": [{"role": "assistant", "content": f"{room} {state}"}],
            "non_preferred_output": [{"role": "assistant", "content": f"{room} {wrong}"}]}))
    return ("\n".join(lines) + "\n").encode()


def arithmetic_dataset(n: int, seed: int = 0, fields=None) -> bytes:
    """RFT lines: a user question "What is a + b?" and the answer as extra fields, visible to graders as
    item.<field>: fields(a + b) -> dict; by default item.answer (the sum) and item.level."""
    fields = fields or (lambda total: {"answer": str(total), "level": "easy"})
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        lines.append(json.dumps({"messages": [{"role": "user", "content": f"What is {a} + {b}?"}], **fields(a + b)}))
    return ("\n".join(lines) + "\n").encode()
