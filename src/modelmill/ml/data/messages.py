"""The checks every method's lines share: an OpenAI message list (roles, keys, content parts, tool
calls and their arguments) and a `tools` array. Problems go to a Checker; see ml/data/__init__.py for
the codes."""

from __future__ import annotations

import re
from typing import Any

from modelmill.ml.chat_format import content_text
from modelmill.ml.data.checker import Checker, join_path, short
from modelmill.ml.data.images import check_image
from modelmill.ml.jsonl import MAX_DEPTH, scan_value, strict_json_loads, type_name

ROLES = ("system", "developer", "user", "assistant", "tool")
FUNCTION_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

# Keys a message may carry, per role. Everything else is unknown_key / unsupported_field.
MESSAGE_KEYS = {
    "system": {"role", "content", "name"},
    "developer": {"role", "content", "name"},
    "user": {"role", "content", "name"},
    "assistant": {"role", "content", "name", "tool_calls", "weight"},
    "tool": {"role", "content", "tool_call_id"},
}
UNSUPPORTED_MESSAGE_KEYS = {
    "function_call": "function_call is deprecated; use tool_calls",
    "audio": "audio messages are not supported (text models only)",
    "refusal": "refusal is not supported; put the text in content",
}


def check_messages(messages: Any, path: str, c: Checker, *, tool_names: set[str] | None,
                   allow_parallel: bool = True, require_target: bool = True,
                   empty_code: str = "empty_content") -> None:
    """Check an OpenAI message list at `path`; problems go to `c`.

    tool_names: the functions declared in `tools` (None when the line has no tools, in which
    case tool calls are not checked against a declaration). require_target: at least one
    assistant message with weight != 0 must exist. empty_code: the code for blank content
    (see the module docstring).
    """
    if not c.type_is(messages, list, path, "an array of messages"):
        return
    if not messages:
        c.add(path, "empty_array", "messages must contain at least one message")
        return
    call_ids: set[str] = set()
    has_target = False
    undecidable = False  # a message whose role we could not read might have been the target
    for i, m in enumerate(messages):
        mpath = f"{path}[{i}]"
        if not c.type_is(m, dict, mpath, "a message object"):
            undecidable = True
            continue
        role = _check_role(m, mpath, c)
        if role is None:
            undecidable = True
            continue
        _check_message_keys(m, role, mpath, c)
        if role == "assistant":
            has_target |= _check_assistant(m, mpath, c, tool_names, allow_parallel, call_ids, empty_code)
        elif _check_content(m, mpath, c, required=True) and role != "tool" and _blank(m["content"]):
            c.add(f"{mpath}.content", empty_code, f"{role} message content is empty")
        if role == "tool" and c.required(m, "tool_call_id", mpath):
            tcid = m["tool_call_id"]
            if c.type_is(tcid, str, f"{mpath}.tool_call_id", "a string") and tcid not in call_ids:
                c.add(f"{mpath}.tool_call_id", "unknown_tool_call_id",
                      f"tool_call_id {short(tcid)} does not match a tool call in an earlier assistant message")
    if require_target and not has_target and not undecidable:
        c.add(path, "no_assistant_target",
              "no assistant message to learn from (need at least one assistant message with weight != 0)")


def check_tools(tools: Any, path: str, c: Checker) -> set[str] | None:
    """Check a `tools` array ({"type": "function", "function": {...}}); returns the declared
    names, or None when `tools` is not an array (then calls are not checked against it)."""
    names: set[str] = set()
    if not c.type_is(tools, list, path, "an array of tools"):
        return None
    for i, t in enumerate(tools):
        tpath = f"{path}[{i}]"
        if not c.type_is(t, dict, tpath, "a tool object"):
            continue
        function = _function_object(t, tpath, "tool", c)
        if function is None:
            continue
        fn, fpath = function
        name = _check_function_name(fn, fpath, c)
        if name is not None:
            if name in names:
                c.add(f"{fpath}.name", "duplicate_tool_name", f"tool {name!r} is declared more than once")
            names.add(name)
        if "description" in fn:
            c.type_is(fn["description"], str, f"{fpath}.description", "a string")
        if "parameters" in fn:
            c.type_is(fn["parameters"], dict, f"{fpath}.parameters", "a JSON schema object")
        if "strict" in fn and fn["strict"] is not None:
            c.type_is(fn["strict"], bool, f"{fpath}.strict", "a boolean")
    return names


def _check_role(m: dict, mpath: str, c: Checker) -> str | None:
    if not c.required(m, "role", mpath):
        return None
    role = m["role"]
    if not c.type_is(role, str, f"{mpath}.role", "a string"):
        return None
    if role == "function":
        c.add(f"{mpath}.role", "unsupported_role", "role 'function' is deprecated; use 'tool' with tool_call_id")
        return None
    if role not in ROLES:
        c.add(f"{mpath}.role", "unknown_role", f"unknown role {short(role)} (expected one of {', '.join(ROLES)})")
        return None
    return role


def _check_message_keys(m: dict, role: str, mpath: str, c: Checker) -> None:
    for key in m:
        if key in MESSAGE_KEYS[role]:
            continue
        kpath = join_path(mpath, key)
        if key in UNSUPPORTED_MESSAGE_KEYS:
            c.add(kpath, "unsupported_field", UNSUPPORTED_MESSAGE_KEYS[key])
        elif key == "weight":
            c.add(kpath, "weight_not_allowed", f"weight is only allowed on assistant messages, not {role}")
        elif key == "tool_calls":
            c.add(kpath, "unknown_key", f"tool_calls is only allowed on assistant messages, not {role}")
        else:
            allowed = ", ".join(sorted(MESSAGE_KEYS[role]))
            c.add(kpath, "unknown_key", f"unknown key {key!r} in a {role} message (allowed: {allowed})")
    if "name" in m and "name" in MESSAGE_KEYS[role]:
        c.type_is(m["name"], str, f"{mpath}.name", "a string")


def _check_assistant(m: dict, mpath: str, c: Checker, tool_names: set[str] | None, allow_parallel: bool,
                     call_ids: set[str], empty_code: str = "empty_content") -> bool:
    """Checks content/tool_calls/weight; True when this message is a training target."""
    has_calls = "tool_calls" in m and m["tool_calls"] is not None
    has_content = m.get("content") is not None
    if has_content and _check_content(m, mpath, c, required=False) and not has_calls and _blank(m["content"]):
        c.add(f"{mpath}.content", empty_code, "assistant message content is empty and it has no tool_calls")
    if has_calls:
        _check_tool_calls(m["tool_calls"], f"{mpath}.tool_calls", c, tool_names, allow_parallel, call_ids)
    if not has_content and not has_calls:
        c.add(f"{mpath}.content", "missing_content", "assistant message needs content or tool_calls")
    weight = m.get("weight", 1)
    if "weight" in m and (type(weight) is not int or weight not in (0, 1)):
        c.add(f"{mpath}.weight", "invalid_weight", f"weight must be 0 or 1, got {short(weight)}")
        return True  # already reported; do not pile a no_assistant_target on top
    return weight != 0


def _check_content(m: dict, mpath: str, c: Checker, *, required: bool) -> bool:
    """True when the message has content and it is well formed (a string or text parts)."""
    path = f"{mpath}.content"
    if "content" not in m:
        if required:
            c.add(path, "missing_field", "missing required field 'content'")
        return False
    content = m["content"]
    if isinstance(content, str):
        return True
    if not isinstance(content, list):
        what = "a string or an array of text parts" + ("" if required else " (or null)")
        c.add(path, "invalid_type", f"expected {what}, got {type_name(content)}")
        return False
    if not content:
        c.add(path, "empty_array", "content parts array must not be empty")
        return False
    n_before = c.n
    for j, part in enumerate(content):
        ppath = f"{path}[{j}]"
        if not c.type_is(part, dict, ppath, "a content part object"):
            continue
        if not c.required(part, "type", ppath):
            continue
        if part["type"] == "image_url":
            check_image(m, part, ppath, c)
        elif part["type"] != "text":
            c.add(f"{ppath}.type", "unsupported_content_part",
                  f"content part type {short(part['type'])} is not supported (only 'text')")
        elif c.required(part, "text", ppath):
            c.type_is(part["text"], str, f"{ppath}.text", "a string")
    return c.n == n_before


def _blank(content: str | list) -> bool:
    """Well-formed content (a string or text parts) with nothing but whitespace in it (an image part
    is not blank)."""
    if isinstance(content, list) and any(isinstance(p, dict) and p.get("type") == "image_url" for p in content):
        return False
    return not content_text(content).strip()


def _check_tool_calls(calls: Any, path: str, c: Checker, tool_names: set[str] | None, allow_parallel: bool,
                      call_ids: set[str]) -> None:
    if not c.type_is(calls, list, path, "an array of tool calls"):
        return
    if not calls:
        c.add(path, "empty_array", "tool_calls must not be empty (omit it instead)")
    if len(calls) > 1 and not allow_parallel:
        c.add(path, "parallel_tool_calls_disabled",
              f"{len(calls)} tool calls in one message but parallel_tool_calls is false")
    for k, tc in enumerate(calls):
        tpath = f"{path}[{k}]"
        if not c.type_is(tc, dict, tpath, "a tool call object"):
            continue
        for key in tc:
            if key not in ("id", "type", "function"):
                c.add(join_path(tpath, key), "unknown_key", f"unknown key {key!r} in a tool call")
        if c.required(tc, "id", tpath) and c.type_is(tc["id"], str, f"{tpath}.id", "a string"):
            if not tc["id"]:
                c.add(f"{tpath}.id", "invalid_value", "tool call id must not be empty")
            elif tc["id"] in call_ids:
                c.add(f"{tpath}.id", "duplicate_tool_call_id", f"tool call id {short(tc['id'])} is used twice")
            call_ids.add(tc["id"])
        function = _function_object(tc, tpath, "tool call", c)
        if function is None:
            continue
        fn, fpath = function
        name = _check_function_name(fn, fpath, c)
        if name is not None and tool_names is not None and name not in tool_names:
            c.add(f"{fpath}.name", "unknown_tool", f"function {name!r} is not declared in tools")
        if c.required(fn, "arguments", fpath):
            _check_arguments(fn["arguments"], f"{fpath}.arguments", c)


def _function_object(obj: dict, tpath: str, what: str, c: Checker) -> tuple[dict, str] | None:
    """The envelope a tool and a tool call share, {"type": "function", "function": {...}}: checks its
    type; returns the function object and its path, or None when there is no object to check."""
    if c.required(obj, "type", tpath) and obj["type"] != "function":
        c.add(f"{tpath}.type", "invalid_value", f"{what} type must be 'function', got {short(obj['type'])}")
    fpath = f"{tpath}.function"
    if not c.required(obj, "function", tpath) or not c.type_is(obj["function"], dict, fpath, "a function object"):
        return None
    return obj["function"], fpath


def _check_function_name(fn: dict, fpath: str, c: Checker) -> str | None:
    if not c.required(fn, "name", fpath) or not c.type_is(fn["name"], str, f"{fpath}.name", "a string"):
        return None
    if not FUNCTION_NAME_RE.match(fn["name"]):
        c.add(f"{fpath}.name", "invalid_function_name",
              f"function name {short(fn['name'])} must be 1-64 characters of a-z, A-Z, 0-9, _ or -")
        return None
    return fn["name"]


def _check_arguments(args: Any, path: str, c: Checker) -> None:
    if not isinstance(args, str):
        c.add(path, "invalid_type", f"arguments must be a JSON-encoded string, got {type_name(args)}")
        return
    try:
        parsed = strict_json_loads(args)
    except RecursionError:
        c.add(path, "invalid_arguments", f"arguments is nested deeper than {MAX_DEPTH} levels")
        return
    except ValueError as e:
        c.add(path, "invalid_arguments", f"arguments is not valid JSON: {str(e)[:200]}")
        return
    problem = scan_value(parsed, args)  # the chat template re-serialises arguments: same limits as a line
    if problem is not None:
        c.add(path, "invalid_arguments", f"arguments: {problem[1]}")
        return
    if not isinstance(parsed, dict):
        c.add(path, "invalid_arguments", f"arguments must encode a JSON object, got {type_name(parsed)}")
