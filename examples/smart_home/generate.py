"""Generate the smart-home function-calling dataset from the function schemas.

The seed talk's recipe: take the function schemas, enumerate the enum values where
the combinations are few, sample where they explode, and phrase each call several
ways. Train, validation and test are split by *argument combination*, so the test
set asks for calls the model never saw verbatim. `modelmill data synth TOOLS.json --split`
does the same for any list of tools (docs/data.md); this script keeps the demo's hand-written
phrasings.

    python examples/smart_home/generate.py        # rewrites the three .jsonl files
"""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

from modelmill.datagen.output import split_groups

HERE = Path(__file__).parent
ROOMS = ["kitchen", "bedroom", "living room", "bathroom", "office", "garage"]

TOOLS = [
    {"type": "function", "function": {
        "name": "set_lights", "description": "Turn a room's lights on or off.",
        "parameters": {"type": "object", "properties": {
            "room": {"type": "string", "enum": ROOMS},
            "state": {"type": "string", "enum": ["on", "off"]}},
            "required": ["room", "state"]}}},
    {"type": "function", "function": {
        "name": "set_thermostat", "description": "Set a room's target temperature in Celsius.",
        "parameters": {"type": "object", "properties": {
            "room": {"type": "string", "enum": ROOMS},
            "celsius": {"type": "integer", "minimum": 15, "maximum": 28}},
            "required": ["room", "celsius"]}}},
    {"type": "function", "function": {
        "name": "lock_door", "description": "Lock or unlock a door.",
        "parameters": {"type": "object", "properties": {
            "door": {"type": "string", "enum": ["front", "back", "garage"]},
            "locked": {"type": "boolean"}},
            "required": ["door", "locked"]}}},
]

LIGHT_PHRASES = {
    "on": ["Turn on the {room} lights", "Switch the lights on in the {room}", "Lights on in the {room}, please",
           "Can you put the {room} lights on?", "It's dark in the {room}, turn the lights on"],
    "off": ["Turn off the {room} lights", "Switch the lights off in the {room}", "Lights off in the {room}, please",
            "Can you kill the lights in the {room}?", "Nobody's in the {room}, turn the lights off"],
}
THERMO_PHRASES = ["Set the {room} to {c} degrees", "Make the {room} {c}°C", "I want the {room} at {c} degrees",
                  "Change the {room} thermostat to {c}", "Heat or cool the {room} to {c} Celsius"]
LOCK_PHRASES = {
    True: ["Lock the {door} door", "Make sure the {door} door is locked", "Please lock up the {door} door"],
    False: ["Unlock the {door} door", "Open the lock on the {door} door", "Let me in, unlock the {door} door"],
}


def _call(name: str, args: dict) -> dict:
    return {"name": name, "arguments": args}


def all_cases(rng: random.Random) -> list[tuple[str, dict]]:
    """(user text, expected call) pairs. Enumerate lights and locks; sample the thermostat."""
    cases = []
    for room, state in itertools.product(ROOMS, ["on", "off"]):
        for phrase in LIGHT_PHRASES[state]:
            cases.append((phrase.format(room=room), _call("set_lights", {"room": room, "state": state})))
    for door, locked in itertools.product(["front", "back", "garage"], [True, False]):
        for phrase in LOCK_PHRASES[locked]:
            cases.append((phrase.format(door=door), _call("lock_door", {"door": door, "locked": locked})))
    # 6 rooms x 14 temperatures x 5 phrasings explodes; sample 48 of them instead.
    for _ in range(48):
        room, c = rng.choice(ROOMS), rng.randint(15, 28)
        phrase = rng.choice(THERMO_PHRASES)
        cases.append((phrase.format(room=room, c=c), _call("set_thermostat", {"room": room, "celsius": c})))
    return cases


def to_line(text: str, call: dict, i: int) -> dict:
    return {
        "messages": [
            {"role": "user", "content": text},
            {"role": "assistant", "tool_calls": [{
                "id": f"call_{i}", "type": "function",
                "function": {"name": call["name"], "arguments": json.dumps(call["arguments"])}}]},
        ],
        "tools": TOOLS,
    }


def main(seed: int = 7) -> None:
    rng = random.Random(seed)
    groups: dict[str, list] = {}
    for text, call in all_cases(rng):
        group = groups.setdefault(json.dumps(call, sort_keys=True), [])
        if text not in [t for t, _ in group]:
            group.append((text, call))
    # Whole argument combinations go to one split only (the same split `modelmill data synth --split` makes).
    train, valid, test = split_groups(groups, rng, test_size=30, valid_size=12)
    for name, rows in (("train", train), ("valid", valid), ("test", test)):
        with open(HERE / f"{name}.jsonl", "w") as f:
            for i, (text, call) in enumerate(rows):
                f.write(json.dumps(to_line(text, call, i)) + "\n")
        print(f"{name}: {len(rows)} examples")


if __name__ == "__main__":
    main()
