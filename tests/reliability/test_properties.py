"""Property tests for training-file validation (hypothesis): a generated valid line of each method
(supervised chat with tools and tool calls, preference, reinforcement) passes ml.data, and the
same line with one mutation, drawn from a set of mutation kinds, fails with the expected code at
the expected field. Derandomized and without an example database, so `make test` is repeatable."""

from __future__ import annotations

import copy
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelmill.ml import data, jsonl
from modelmill.ml.data.messages import ROLES, UNSUPPORTED_MESSAGE_KEYS

PROPERTY = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

text = st.text(min_size=1, max_size=24).filter(lambda s: s.strip())
blank = st.text(alphabet=" \t\n\r", max_size=4)
name = st.from_regex(r"[A-Za-z0-9_-]{1,16}", fullmatch=True)
scalar = (st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False, allow_infinity=False)
          | text)
arguments = st.dictionaries(st.text(max_size=8), scalar, max_size=3).map(json.dumps)
content = text | st.lists(text.map(lambda t: {"type": "text", "text": t}), min_size=1, max_size=3)


def line_problems(obj_or_raw, method: str) -> set[tuple[str, str]]:
    """(field, code) of every problem of one line, as validate_file reports it."""
    raw = obj_or_raw if isinstance(obj_or_raw, bytes) else json.dumps(obj_or_raw).encode()
    obj, problem = jsonl.parse_line(raw, 1)
    if problem is not None:
        return {(problem.field, problem.code)}
    _, problems = data.LINE_VALIDATORS[method](obj, 1)
    return {(p.field, p.code) for p in problems}


@st.composite
def tools_and_names(draw):
    names = draw(st.lists(name, min_size=1, max_size=3, unique=True))
    tools = [{"type": "function", "function": {"name": n, "description": draw(text),
                                               "parameters": {"type": "object", "properties": {}}}}
             for n in names]
    return tools, names


@st.composite
def turns(draw, names: list[str] | None, *, end_with_assistant: bool, ids: list[int]):
    """Alternating user / assistant turns (assistant turns may call tools, answered by tool
    messages); ends with an assistant turn or a user turn."""
    out = []
    for t in range(draw(st.integers(1, 3))):
        out.append({"role": "user", "content": draw(content)})
        if names and draw(st.booleans()):
            calls = []
            for _ in range(draw(st.integers(1, 2))):
                ids[0] += 1
                calls.append({"id": f"call_{ids[0]}", "type": "function",
                              "function": {"name": draw(st.sampled_from(names)), "arguments": draw(arguments)}})
            out.append({"role": "assistant", "content": draw(st.none() | text), "tool_calls": calls})
            out += [{"role": "tool", "tool_call_id": c["id"], "content": draw(text)} for c in calls]
        out.append({"role": "assistant", "content": draw(content)})
    if not end_with_assistant:
        out.append({"role": "user", "content": draw(content)})
    return out


def system_turn(draw) -> list[dict]:
    if not draw(st.booleans()):
        return []
    return [{"role": draw(st.sampled_from(["system", "developer"])), "content": draw(text)}]


@st.composite
def supervised_lines(draw):
    tools, names = draw(st.none() | tools_and_names()) or (None, None)
    messages = system_turn(draw) + draw(turns(names, end_with_assistant=True, ids=[0]))
    for m in messages[:-1]:  # earlier assistant turns may be context only; the last one is trained on
        if m["role"] == "assistant" and draw(st.booleans()):
            m["weight"] = draw(st.sampled_from([0, 1]))
    obj = {"messages": messages}
    if tools:
        obj["tools"] = tools
        if draw(st.booleans()):
            obj["parallel_tool_calls"] = True
    return obj


@st.composite
def preference_lines(draw):
    tools, names = draw(st.none() | tools_and_names()) or (None, None)
    messages = system_turn(draw) + draw(turns(names, end_with_assistant=False, ids=[0]))
    preferred, rejected = draw(st.lists(text, min_size=2, max_size=2, unique_by=str.strip))
    spelling = draw(st.sampled_from([("preferred_output", "non_preferred_output"),
                                     ("preferred_completion", "non_preferred_completion")]))
    obj = {"input": {"messages": messages}, spelling[0]: [{"role": "assistant", "content": preferred}],
           spelling[1]: [{"role": "assistant", "content": rejected}]}
    if tools:
        obj["input"]["tools"] = tools
    return obj


@st.composite
def reinforcement_lines(draw):
    tools, names = draw(st.none() | tools_and_names()) or (None, None)
    obj = {"messages": system_turn(draw) + draw(turns(names, end_with_assistant=False, ids=[0]))}
    if tools:
        obj["tools"] = tools
    reserved = {"messages", "tools"}
    obj.update(draw(st.dictionaries(st.text(max_size=12).filter(lambda k: k not in reserved), scalar, max_size=3)))
    return obj


LINES = {"supervised": supervised_lines(), "preference": preference_lines(), "reinforcement": reinforcement_lines()}
any_line = st.sampled_from(sorted(LINES)).flatmap(lambda m: st.tuples(st.just(m), LINES[m]))


def messages_of(obj: dict, method: str) -> tuple[list, str]:
    return (obj["input"]["messages"], "input.messages") if method == "preference" else (obj["messages"], "messages")


# ------------------------------------------------------------------------------------------- mutations
# Each takes (draw, method, obj) and mutates obj (a deep copy) or returns raw bytes for the line;
# it returns (expected field, expected code, raw bytes or None).


def unknown_role(draw, method, obj):
    msgs, p = messages_of(obj, method)
    i = draw(st.integers(0, len(msgs) - 1))
    msgs[i]["role"] = draw(st.text(max_size=12).filter(lambda r: r not in ROLES and r != "function"))
    return f"{p}[{i}].role", "unknown_role", None


def role_not_string(draw, method, obj):
    msgs, p = messages_of(obj, method)
    i = draw(st.integers(0, len(msgs) - 1))
    msgs[i]["role"] = draw(st.none() | st.integers() | st.lists(st.just("user"), max_size=2))
    return f"{p}[{i}].role", "invalid_type", None


def drop_role(draw, method, obj):
    msgs, p = messages_of(obj, method)
    i = draw(st.integers(0, len(msgs) - 1))
    del msgs[i]["role"]
    return f"{p}[{i}].role", "missing_field", None


def blank_user_content(draw, method, obj):
    msgs, p = messages_of(obj, method)
    i = draw(st.sampled_from([k for k, m in enumerate(msgs) if m["role"] == "user"]))
    msgs[i]["content"] = draw(blank | blank.map(lambda b: [{"type": "text", "text": b}]))
    return f"{p}[{i}].content", "empty_content", None


def user_content_wrong_type(draw, method, obj):
    msgs, p = messages_of(obj, method)
    i = draw(st.sampled_from([k for k, m in enumerate(msgs) if m["role"] == "user"]))
    msgs[i]["content"] = draw(st.none() | st.integers() | st.booleans() | st.dictionaries(text, text, max_size=2))
    return f"{p}[{i}].content", "invalid_type", None


def unknown_message_key(draw, method, obj):
    msgs, p = messages_of(obj, method)
    i = draw(st.integers(0, len(msgs) - 1))
    known = {"role", "content", "name", "tool_calls", "weight", "tool_call_id", *UNSUPPORTED_MESSAGE_KEYS}
    key = draw(st.text(min_size=1, max_size=10).filter(lambda k: k not in known))
    msgs[i][key] = draw(scalar)
    return f"{p}[{i}].{key}", "unknown_key", None


def bad_arguments(draw, method, obj):
    msgs, p = messages_of(obj, method)
    calls = [(i, k) for i, m in enumerate(msgs) for k in range(len(m.get("tool_calls") or []))]
    if not calls:
        return user_content_wrong_type(draw, method, obj)
    i, k = draw(st.sampled_from(calls))
    bad = draw(st.sampled_from(["", "{", "[1]", "null", "1", '"x"', "{'a': 1}", '{"a": NaN}', '{"a": 1, "a": 2}',
                                "[" * 100]) | st.text(max_size=10).filter(lambda s: not _json_object(s)))
    msgs[i]["tool_calls"][k]["function"]["arguments"] = bad
    return f"{p}[{i}].tool_calls[{k}].function.arguments", "invalid_arguments", None


def _json_object(s: str) -> bool:
    try:
        return isinstance(json.loads(s), dict)
    except ValueError:
        return False


def truncate_line(draw, method, obj):
    raw = json.dumps(obj)
    return "", "invalid_json", raw[:draw(st.integers(1, len(raw) - 1))].encode()


def non_finite(draw, method, obj):
    raw = json.dumps(obj)
    number = draw(st.sampled_from(["NaN", "-Infinity", "1e999"]))
    return "", "non_finite_number", (raw[:-1] + ', "x": ' + number + "}").encode()


def duplicate_key(draw, method, obj):
    key = draw(st.sampled_from(sorted(obj)))
    raw = json.dumps(obj)
    return "", "duplicate_key", (raw[:-1] + f", {json.dumps(key)}: 1}}").encode()


def lone_surrogate(draw, method, obj):
    raw = json.dumps(obj)
    esc = draw(st.sampled_from(["\\ud800", "\\udfff", "\\udbff!", "\\ude00\\ud83d"]))
    return "", "invalid_unicode", (raw[:-1] + f', "note": "{esc}"}}').encode()


def too_deep(draw, method, obj):
    depth = draw(st.integers(64, 5000))
    return "", "too_deeply_nested", (json.dumps(obj)[:-1] + ', "x": ' + "[" * depth + "]" * depth + "}").encode()


def invalid_utf8(draw, method, obj):
    bad = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xe2\x82", b"\xc0\xaf"]))
    return "", "invalid_utf8", json.dumps(obj)[:-1].encode() + b', "note": "' + bad + b'"}'


def method_rule(draw, method, obj):
    """The rule only this method has: SFT needs a target, DPO outputs must differ, RFT ends with a user turn."""
    if method == "supervised":
        for m in obj["messages"]:
            if m["role"] == "assistant":
                m["weight"] = 0
        return "messages", "no_assistant_target", None
    if method == "preference":
        keys = [k for k in obj if k != "input"]
        obj[keys[1]] = copy.deepcopy(obj[keys[0]])
        return keys[1], "identical_outputs", None
    obj["messages"].append({"role": "assistant", "content": "an answer"})
    return f"messages[{len(obj['messages']) - 1}].role", "invalid_last_role", None


MUTATIONS = [unknown_role, role_not_string, drop_role, blank_user_content, user_content_wrong_type,
             unknown_message_key, bad_arguments, truncate_line, non_finite, duplicate_key, lone_surrogate,
             too_deep, invalid_utf8, method_rule]


@PROPERTY
@given(any_line)
def test_generated_valid_line_passes(method_and_line):
    method, obj = method_and_line
    assert line_problems(obj, method) == set(), (method, obj)


@PROPERTY
@given(st.data(), any_line, st.sampled_from(MUTATIONS))
def test_one_mutation_fails_with_its_code_and_field(draw_data, method_and_line, mutation):
    method, obj = method_and_line
    obj = copy.deepcopy(obj)
    field, code, raw = mutation(draw_data.draw, method, obj)
    got = line_problems(raw if raw is not None else obj, method)
    assert (field, code) in got, (mutation.__name__, method, got)


@settings(max_examples=10, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.sampled_from(sorted(LINES)).flatmap(lambda m: st.tuples(st.just(m), st.lists(LINES[m], min_size=10,
                                                                                       max_size=14))))
def test_generated_file_passes_and_keeps_every_example(tmp_path_factory, method_and_lines):
    method, lines = method_and_lines
    path = tmp_path_factory.mktemp("prop") / "train.jsonl"
    path.write_text("".join(json.dumps(o, ensure_ascii=False) + "\n" for o in lines), encoding="utf-8")
    report = data.validate_file(path, method)
    assert report.ok, report.problems[:3]
    assert len(report.examples) == len(lines)
