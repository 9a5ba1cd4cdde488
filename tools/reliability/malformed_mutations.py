"""The per-line mutations of the malformed corpus (tools/reliability/malformed.py): each takes a
valid parsed line and its method, breaks one thing, and returns the (field, code) ml.data must
report for it, or None when it does not apply to that line (e.g. a tool-call mutation on a line
without tool calls). MUTATIONS groups them by corpus category."""

from __future__ import annotations

import copy
from collections.abc import Callable

from tools.datasets import LIGHT_TOOLS as TOOLS, tool_call as call

METHODS = ("supervised", "preference", "reinforcement")


def messages_of(obj: dict, method: str) -> tuple[list, str]:
    if method == "preference":
        return obj["input"]["messages"], "input.messages"
    return obj["messages"], "messages"


def tools_of(obj: dict, method: str) -> tuple[dict, str]:
    """The dict holding `tools` and its path prefix."""
    return (obj["input"], "input.") if method == "preference" else (obj, "")


def first(messages: list, role: str, *, with_key: str | None = None) -> int | None:
    for i, m in enumerate(messages):
        if m["role"] == role and (with_key is None or m.get(with_key)):
            return i
    return None


Mutation = Callable[[dict, str], "tuple[str, str] | None"]


def set_role(value) -> Mutation:
    def fn(obj, method):
        msgs, p = messages_of(obj, method)
        i = len(msgs) - 1
        msgs[i]["role"] = value
        code = ("invalid_type" if not isinstance(value, str) else
                "unsupported_role" if value == "function" else "unknown_role")
        return f"{p}[{i}].role", code
    return fn


def drop_role(obj, method):
    msgs, p = messages_of(obj, method)
    del msgs[0]["role"]
    return f"{p}[0].role", "missing_field"


def set_message(value) -> Mutation:
    def fn(obj, method):
        msgs, p = messages_of(obj, method)
        msgs[0] = value
        return f"{p}[0]", "invalid_type"
    return fn


def set_messages(value) -> Mutation:
    def fn(obj, method):
        _, p = messages_of(obj, method)
        holder = obj["input"] if method == "preference" else obj
        holder["messages"] = value
        return p, "empty_array" if value == [] else "invalid_type"
    return fn


def drop_messages(obj, method):
    holder, p = (obj["input"], "input.messages") if method == "preference" else (obj, "messages")
    del holder["messages"]
    return p, "missing_field"


def user_content(value, code: str, suffix: str = "") -> Mutation:
    def fn(obj, method):
        msgs, p = messages_of(obj, method)
        i = first(msgs, "user")
        if value is _DROP:
            del msgs[i]["content"]
        else:
            msgs[i]["content"] = copy.deepcopy(value)
        return f"{p}[{i}].content{suffix}", code
    return fn


def system_content(value, code: str) -> Mutation:
    """The system message's content, else the developer message's."""
    return message_key(("system", "developer"), "content", value, code)


def assistant_content(value, code: str) -> Mutation:
    """An assistant message without tool calls (SFT targets; DPO / RFT context turns)."""
    def fn(obj, method):
        msgs, p = messages_of(obj, method)
        i = next((k for k, m in enumerate(msgs) if m["role"] == "assistant" and not m.get("tool_calls")), None)
        if i is None:
            return None
        msgs[i]["content"] = copy.deepcopy(value)
        return f"{p}[{i}].content", code
    return fn


def message_key(role: str | tuple[str, ...], key: str, value, code: str) -> Mutation:
    """Set `key` on the first message of `role` (of the first of several roles that has one)."""
    roles = (role,) if isinstance(role, str) else role

    def fn(obj, method):
        msgs, p = messages_of(obj, method)
        i = next((k for k in (first(msgs, r) for r in roles) if k is not None), None)
        if i is None:
            return None
        msgs[i][key] = value
        return f"{p}[{i}].{key}", code
    return fn


def weight(value, code: str = "invalid_weight") -> Mutation:
    return message_key("assistant", "weight", value, code)


def all_weights_zero(obj, method):
    msgs, p = messages_of(obj, method)
    if method != "supervised":
        return None
    for m in msgs:
        if m["role"] == "assistant":
            m["weight"] = 0
    return p, "no_assistant_target"


def no_assistant(obj, method):
    if method != "supervised":
        return None
    msgs, p = messages_of(obj, method)
    obj["messages"] = [m for m in msgs if m["role"] in ("system", "developer", "user")]
    return p, "no_assistant_target"


def top_level(key: str, value, code: str, field: str | None = None) -> Mutation:
    def fn(obj, method):
        if method != "supervised" and key in ("functions", "parallel_tool_calls"):
            return None
        obj[key] = value
        return (key if field is None else field), code
    return fn


def tools_value(value, code: str, suffix: str = "") -> Mutation:
    def fn(obj, method):
        holder, prefix = tools_of(obj, method)
        holder["tools"] = copy.deepcopy(value)
        # calls are not checked against a tools value that is not an array; drop them to isolate
        return f"{prefix}tools{suffix}", code
    return fn


def tool_fn(key: str, value, code: str, index: int = 0) -> Mutation:
    """Change tools[index].function.<key> (or delete it with _DROP)."""
    def fn(obj, method):
        holder, prefix = tools_of(obj, method)
        if "tools" not in holder:
            return None
        f = holder["tools"][index]["function"]
        if value is _DROP:
            del f[key]
        else:
            f[key] = copy.deepcopy(value)
        return f"{prefix}tools[{index}].function.{key}", code
    return fn


def tool_entry(key: str, value, code: str) -> Mutation:
    def fn(obj, method):
        holder, prefix = tools_of(obj, method)
        if "tools" not in holder:
            return None
        if value is _DROP:
            del holder["tools"][1][key]
        else:
            holder["tools"][1][key] = copy.deepcopy(value)
        return f"{prefix}tools[1].{key}", code
    return fn


def calls_of(obj: dict, method: str) -> tuple[list, str] | None:
    """The first assistant tool_calls list of the line (DPO: the preferred output's) and its path."""
    if method == "preference":
        for key in ("preferred_output", "preferred_completion"):
            m = obj.get(key, [{}])[0]
            if m.get("tool_calls"):
                return m["tool_calls"], f"{key}[0].tool_calls"
        return None
    msgs, p = messages_of(obj, method)
    i = first(msgs, "assistant", with_key="tool_calls")
    return None if i is None else (msgs[i]["tool_calls"], f"{p}[{i}].tool_calls")


def set_calls(value, code: str) -> Mutation:
    def fn(obj, method):
        found = calls_of(obj, method)
        if found is None:
            return None
        _, path = found
        _replace_calls(obj, method, copy.deepcopy(value))
        return path, code
    return fn


def _replace_calls(obj, method, value):
    if method == "preference":
        for key in ("preferred_output", "preferred_completion"):
            m = obj.get(key, [{}])[0]
            if "tool_calls" in m:
                m["tool_calls"] = value
                return
    msgs, _ = messages_of(obj, method)
    for m in msgs:
        if m["role"] == "assistant" and "tool_calls" in m:
            m["tool_calls"] = value
            # tool results answering the removed calls would add unknown_tool_call_id: drop them
            msgs[:] = [x for x in msgs if x["role"] != "tool"]
            if method == "supervised" and msgs[-1]["role"] != "assistant":
                msgs.append({"role": "assistant", "content": "ok"})
            return


def call_field(keys: list, value, code: str, suffix: str | None = None, index: int = 0) -> Mutation:
    """Set (or delete with _DROP) tool_calls[index].<keys...>; the field is that path."""
    def fn(obj, method):
        found = calls_of(obj, method)
        if found is None or len(found[0]) <= index:
            return None
        calls, path = found
        node = calls[index]
        for k in keys[:-1]:
            node = node[k]
        if value is _DROP:
            del node[keys[-1]]
        else:
            node[keys[-1]] = copy.deepcopy(value)
        return f"{path}[{index}]" + (suffix if suffix is not None else "." + ".".join(keys)), code
    return fn


def arguments(value: str, code: str = "invalid_arguments") -> Mutation:
    return call_field(["function", "arguments"], value, code)


def call_not_object(obj, method):
    found = calls_of(obj, method)
    if found is None:
        return None
    calls, path = found
    calls[0] = "set_light(kitchen)"
    return f"{path}[0]", "invalid_type"


def duplicate_call_id(obj, method):
    found = calls_of(obj, method)
    if found is None or len(found[0]) < 2:
        return None
    calls, path = found
    calls[1]["id"] = calls[0]["id"]
    return f"{path}[1].id", "duplicate_tool_call_id"


def parallel_off(obj, method):
    found = calls_of(obj, method)
    if found is None or len(found[0]) < 2 or method != "supervised":
        return None
    obj["parallel_tool_calls"] = False
    return found[1], "parallel_tool_calls_disabled"


def tool_result(key: str, value, code: str) -> Mutation:
    def fn(obj, method):
        msgs, p = messages_of(obj, method)
        i = first(msgs, "tool")
        if i is None:
            return None
        if value is _DROP:
            del msgs[i][key]
        else:
            msgs[i][key] = value
        return f"{p}[{i}].{key}", code
    return fn


class _Drop:
    def __repr__(self):
        return "<drop>"


_DROP = _Drop()


# DPO-only mutations
def dpo(fn: Callable[[dict], "tuple[str, str] | None"]) -> Mutation:
    return lambda obj, method: fn(obj) if method == "preference" else None


OUTPUT_NAMES = (("preferred_output", "preferred_completion"), ("non_preferred_output", "non_preferred_completion"))


def out_key(obj: dict, which: int) -> str:
    names = OUTPUT_NAMES[which]
    return names[0] if names[0] in obj else names[1]


def dpo_set(which: int, value, code: str, suffix: str = "") -> Mutation:
    def fn(obj):
        key = out_key(obj, which)
        if suffix == "[0].role":
            obj[key][0]["role"] = value
        elif suffix == "[0].weight":
            obj[key][0]["weight"] = value
        elif suffix == "[0].content":
            obj[key][0]["content"] = value
            obj[key][0].pop("tool_calls", None)
        elif suffix == "[0]":
            obj[key][0] = value
        else:
            obj[key] = copy.deepcopy(value)
        return key + suffix, code
    return dpo(fn)


def dpo_drop(which: int) -> Mutation:
    def fn(obj):
        key = out_key(obj, which)
        del obj[key]
        return ("preferred_output", "non_preferred_output")[which], "missing_field"
    return dpo(fn)


def dpo_both_spellings(which: int) -> Mutation:
    def fn(obj):
        names = OUTPUT_NAMES[which]
        key = out_key(obj, which)
        other = names[1] if key == names[0] else names[0]
        obj[other] = copy.deepcopy(obj[key])
        return names[1], "conflicting_fields"
    return dpo(fn)


def dpo_identical(obj):
    a, b = out_key(obj, 0), out_key(obj, 1)
    obj[b] = copy.deepcopy(obj[a])
    return b, "identical_outputs"


def dpo_input(value, code: str) -> Mutation:
    def fn(obj):
        if value is _DROP:
            del obj["input"]
        else:
            obj["input"] = value
        return "input", code
    return dpo(fn)


def last_role(role: str, only: str) -> Mutation:
    """Append a message so the prompt ends with `role` (DPO input / RFT messages): invalid_last_role."""
    def fn(obj, method):
        if method != only:
            return None
        msgs, p = messages_of(obj, method)
        msgs.append({"role": role, "content": "an extra turn"})
        return f"{p}[{len(msgs) - 1}].role", "invalid_last_role"
    return fn


def rft_only(role: str) -> Mutation:
    """RFT messages that are one message of `role`: nothing for the policy to answer."""
    def fn(obj, method):
        if method != "reinforcement":
            return None
        obj["messages"] = [{"role": role, "content": "just this"}]
        return "messages[0].role", "invalid_last_role"
    return fn


def rft_ends_with_call(obj, method):
    if method != "reinforcement":
        return None
    obj["messages"].append({"role": "assistant", "content": None, "tool_calls": [call("late")]})
    return f"messages[{len(obj['messages']) - 1}].role", "invalid_last_role"


def rft_weight(value) -> Mutation:
    def fn(obj, method):
        if method != "reinforcement":
            return None
        msgs, p = messages_of(obj, method)
        i = first(msgs, "assistant")
        if i is None:
            msgs.insert(0, {"role": "assistant", "content": "earlier answer"})
            i = 0
        msgs[i]["weight"] = value
        return f"{p}[{i}].weight", "weight_not_allowed"
    return fn


LONG = "x" * 70


MUTATIONS: dict[str, list[tuple[str, Mutation]]] = {
    "roles": [
        *[(f"unknown_{r.strip() or 'blank'}", set_role(r)) for r in
          ("bot", "User", "ASSISTANT", " user", "assistant ", "human", "model", "", "système", "gpt", "ai",
           "functions", "tools", "System", LONG)],
        ("function", set_role("function")),
        *[(f"type_{type(v).__name__}", set_role(v)) for v in (1, None, True, ["user"], {"r": "user"}, 2.5)],
        ("missing", drop_role),
    ],
    "wrong_types": [
        *[(f"messages_{type(v).__name__}", set_messages(v)) for v in ({"role": "user"}, "hi", 3, None, True)],
        ("messages_missing", drop_messages),
        *[(f"message_{type(v).__name__}", set_message(v)) for v in ("hi", 1, [], None, False)],
        *[(f"user_content_{type(v).__name__}", user_content(v, "invalid_type"))
          for v in (42, 1.5, True, {"text": "x"}, None)],
        ("user_content_missing", user_content(_DROP, "missing_field")),
        ("part_not_object", user_content(["text"], "invalid_type", "[0]")),
        ("part_text_number", user_content([{"type": "text", "text": 1}], "invalid_type", "[0].text")),
        ("part_image", user_content([{"type": "image_url", "image_url": {"url": "http://x/y.png"}}],
                                    "unsupported_content_part", "[0].type")),
        ("part_audio", user_content([{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}],
                                    "unsupported_content_part", "[0].type")),
        ("part_missing_type", user_content([{"text": "x"}], "missing_field", "[0].type")),
        ("part_missing_text", user_content([{"type": "text"}], "missing_field", "[0].text")),
        *[(f"name_{type(v).__name__}", message_key("user", "name", v, "invalid_type")) for v in (5, [], {}, None)],
        *[(f"weight_{v!r}", weight(v)) for v in (2, -1, 0.5, True, "1", None, 1.0)],
        ("weight_on_user", message_key("user", "weight", 1, "weight_not_allowed")),
        ("weight_on_system", message_key("system", "weight", 0, "weight_not_allowed")),
        ("tool_calls_on_user", message_key("user", "tool_calls", [call("z")], "unknown_key")),
        *[(f"unknown_key_{k}", message_key("user", k, v, "unknown_key")) for k, v in
          (("wieght", 1), ("contents", "x"), ("rol", "user"), ("metadata", {}), ("tool_call_id", "x"))],
        ("function_call", message_key("assistant", "function_call", {"name": "f", "arguments": "{}"},
                                      "unsupported_field")),
        ("audio", message_key("assistant", "audio", {"id": "a"}, "unsupported_field")),
        ("refusal", message_key("assistant", "refusal", "no", "unsupported_field")),
        ("functions_top_level", top_level("functions", [{"name": "f"}], "unsupported_field")),
        *[(f"parallel_{type(v).__name__}", top_level("parallel_tool_calls", v, "invalid_type"))
          for v in ("yes", 1, None)],
        ("all_weights_zero", all_weights_zero),
        ("no_assistant", no_assistant),
    ],
    "empty_content": [
        *[(f"user_{name}", user_content(v, "empty_content")) for name, v in
          (("empty", ""), ("space", " "), ("whitespace", "\n\t  "), ("blank_part", [{"type": "text", "text": ""}]),
           ("blank_parts", [{"type": "text", "text": " "}, {"type": "text", "text": "\n"}]))],
        ("user_parts_empty", user_content([], "empty_array")),
        ("system_empty", system_content("", "empty_content")),
        ("system_blank", system_content("   ", "empty_content")),
        ("assistant_empty", assistant_content("", "empty_content")),
        ("assistant_blank", assistant_content(" \n", "empty_content")),
        ("assistant_blank_part", assistant_content([{"type": "text", "text": ""}], "empty_content")),
        ("assistant_null", assistant_content(None, "missing_content")),
        ("messages_empty", set_messages([])),
        ("dpo_preferred_empty", dpo_set(0, "", "empty_output", "[0].content")),
        ("dpo_non_preferred_blank", dpo_set(1, "  ", "empty_output", "[0].content")),
        ("dpo_preferred_null", dpo_set(0, None, "missing_content", "[0].content")),
    ],
    "tool_calls": [
        *[(f"calls_{type(v).__name__}", set_calls(v, "invalid_type")) for v in ({"id": "x"}, "call", 1)],
        ("calls_empty", set_calls([], "empty_array")),
        ("call_not_object", call_not_object),
        ("id_missing", call_field(["id"], _DROP, "missing_field")),
        ("id_empty", call_field(["id"], "", "invalid_value")),
        ("id_number", call_field(["id"], 7, "invalid_type")),
        ("type_retrieval", call_field(["type"], "retrieval", "invalid_value")),
        ("type_missing", call_field(["type"], _DROP, "missing_field")),
        ("function_missing", call_field(["function"], _DROP, "missing_field")),
        ("function_string", call_field(["function"], "set_light", "invalid_type")),
        ("unknown_key", call_field(["index"], 0, "unknown_key")),
        ("name_missing", call_field(["function", "name"], _DROP, "missing_field")),
        ("name_number", call_field(["function", "name"], 3, "invalid_type")),
        *[(f"name_{label}", call_field(["function", "name"], v, "invalid_function_name")) for label, v in
          (("space", "set light"), ("too_long", "x" * 65), ("empty", ""), ("unicode", "ünïcode"), ("dot", "a.b"))],
        ("name_undeclared", call_field(["function", "name"], "open_door", "unknown_tool")),
        ("arguments_missing", call_field(["function", "arguments"], _DROP, "missing_field")),
        ("arguments_object", call_field(["function", "arguments"], {"room": "x"}, "invalid_type")),
        ("arguments_null", call_field(["function", "arguments"], None, "invalid_type")),
        *[(f"arguments_{label}", arguments(v)) for label, v in (
            ("not_json", "{room: kitchen}"), ("empty", ""), ("truncated", '{"room": "kit'), ("array", "[1, 2]"),
            ("number", "1"), ("string", '"kitchen"'), ("null", "null"), ("nan", '{"a": NaN}'),
            ("infinity", '{"a": -Infinity}'), ("huge_float", '{"a": 1e999}'), ("dup_key", '{"a": 1, "a": 2}'),
            ("deep", '{"a": ' + "[" * 80 + "]" * 80 + "}"), ("recursion", "[" * 50_000),
            ("surrogate", '{"a": "\\ud800"}'), ("huge_int", '{"a": ' + "9" * 5000 + "}"),
            ("single_quotes", "{'room': 'kitchen'}"))],
        ("duplicate_id", duplicate_call_id),
        ("parallel_disabled", parallel_off),
        ("result_unknown_id", tool_result("tool_call_id", "call_999", "unknown_tool_call_id")),
        ("result_missing_id", tool_result("tool_call_id", _DROP, "missing_field")),
        ("result_id_number", tool_result("tool_call_id", 1, "invalid_type")),
        ("result_missing_content", tool_result("content", _DROP, "missing_field")),
        ("result_weight", tool_result("weight", 1, "weight_not_allowed")),
        ("tools_object", tools_value(TOOLS[0], "invalid_type")),
        ("tools_string", tools_value("set_light", "invalid_type")),
        ("tool_not_object", tools_value(["set_light"], "invalid_type", "[0]")),
        ("tool_type", tool_entry("type", "code_interpreter", "invalid_value")),
        ("tool_type_missing", tool_entry("type", _DROP, "missing_field")),
        ("tool_function_missing", tool_entry("function", _DROP, "missing_field")),
        ("tool_function_string", tool_entry("function", "get_temp", "invalid_type")),
        ("tool_name_missing", tool_fn("name", _DROP, "missing_field", 1)),
        ("tool_name_bad", tool_fn("name", "get temp", "invalid_function_name", 1)),
        ("tool_name_duplicate", tool_fn("name", "set_light", "duplicate_tool_name", 1)),
        ("tool_parameters_string", tool_fn("parameters", "object", "invalid_type")),
        ("tool_description_number", tool_fn("description", 1, "invalid_type")),
        ("tool_strict_string", tool_fn("strict", "yes", "invalid_type")),
    ],
    "preference": [
        ("input_missing", dpo_input(_DROP, "missing_field")),
        *[(f"input_{type(v).__name__}", dpo_input(v, "invalid_type")) for v in ([], "hi", 1, None)],
        ("input_messages_missing", dpo(lambda o: (o["input"].pop("messages"), ("input.messages", "missing_field"))[1])),
        ("preferred_missing", dpo_drop(0)),
        ("non_preferred_missing", dpo_drop(1)),
        ("preferred_both_spellings", dpo_both_spellings(0)),
        ("non_preferred_both_spellings", dpo_both_spellings(1)),
        *[(f"preferred_{type(v).__name__}", dpo_set(0, v, "invalid_type")) for v in
          ({"role": "assistant", "content": "x"}, "x", None)],
        ("non_preferred_string", dpo_set(1, "x", "invalid_type")),
        ("preferred_zero_messages", dpo_set(0, [], "invalid_value")),
        ("preferred_two_messages", dpo_set(0, [{"role": "assistant", "content": "a"},
                                              {"role": "assistant", "content": "b"}], "invalid_value")),
        ("preferred_role_user", dpo_set(0, "user", "invalid_value", "[0].role")),
        ("non_preferred_role_system", dpo_set(1, "system", "invalid_value", "[0].role")),
        ("preferred_weight", dpo_set(0, 1, "weight_not_allowed", "[0].weight")),
        ("preferred_message_string", dpo_set(0, "hello", "invalid_type", "[0]")),
        ("identical", dpo(dpo_identical)),
        ("last_input_assistant", last_role("assistant", "preference")),
        ("last_input_system", last_role("system", "preference")),
    ],
    "reinforcement": [
        ("last_assistant", last_role("assistant", "reinforcement")),
        ("last_system", last_role("system", "reinforcement")),
        ("last_developer", last_role("developer", "reinforcement")),
        ("only_assistant", rft_only("assistant")),
        ("only_system", rft_only("system")),
        ("ends_with_tool_call", rft_ends_with_call),
        ("weight_0", rft_weight(0)),
        ("weight_1", rft_weight(1)),
    ],
}
