"""The Responses API (POST /v1/responses): an OpenAI CreateResponse -> the chat-completion request
that means the same -> service/chat/completions.py (the sampler, tool parsing and constraints chat
completions use: there is no second generation path) -> a `response` object, stored for the
caller's project unless `store` is false.

Translation, item by item (OpenAI's semantics where they map):
- `instructions` -> a leading system message (not carried over by previous_response_id);
- `input` string -> one user message; message items -> chat messages (text parts joined; a user
  message's `input_image` parts -> chat image_url parts for a vision-language model, responses/images.py);
  `function_call` items -> an assistant message's tool_calls; `function_call_output` -> a tool
  message, whose call_id must name a call earlier in the conversation;
- `previous_response_id` -> that stored response's conversation (its inputs and outputs) first;
- function `tools` / `tool_choice` -> chat's tools / tool_choice; `text.format` -> response_format;
  `max_output_tokens` -> max_completion_tokens.
Every other CreateResponse field is honoured, echoed as an identifier, or refused with a 400
naming it (UNSUPPORTED); built-in tools are a 400 naming `tools[i].type`.
"""

from __future__ import annotations

import contextlib
import re
import time
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from modelmill import errors
from modelmill.settings import Settings
from modelmill.service.chat import completions as chat
from modelmill.service.models import registry as model_registry
from modelmill.service.evals.requests import check_metadata
from modelmill.service.store.ids import new_id
from modelmill.service.models.registry import ServedModel
from modelmill.service.responses import images
from modelmill.service.schemas.chat import ChatCompletionRequest
from modelmill.service.schemas.responses import CreateResponseRequest
from modelmill.service.store import Store
from modelmill.service.store.stored import ResponseRecord

# Fields of OpenAI's CreateResponse ModelMill does not implement, with the values that ask for
# nothing (accepted). Any other value is a 400 naming the field.
UNSUPPORTED: dict[str, tuple] = {
    "background": (False,), "conversation": (), "prompt": (), "prompt_cache_retention": (),
    "prompt_cache_options": (), "reasoning": (), "service_tier": ("auto", "default"), "truncation": ("disabled",),
    "moderation": (), "context_management": (),
}
LOGPROBS_INCLUDE = "message.output_text.logprobs"  # the one `include` value served
MESSAGE_ROLES = ("user", "assistant", "system", "developer")
TEXT_PARTS = ("input_text", "output_text")
FUNCTION_TOOL_KEYS = {"type", "name", "description", "parameters", "strict"}


def _bad(message: str, param: str, code: str = "invalid_value") -> errors.InvalidRequestError:
    return errors.InvalidRequestError(message, param=param, code=code)


@dataclass
class Prepared:
    """A checked request, ready to generate."""

    served: ServedModel
    chat: ChatCompletionRequest  # the chat request that means the same (stream unset)
    input_items: list[dict]  # this request's input items as stored (ItemResource shapes, with ids)
    history: list[dict]  # chat messages of the conversation so far, without instructions
    echo: dict  # the request fields every response object repeats
    store: bool
    id: str = field(default_factory=lambda: new_id("resp_"))
    created_at: int = field(default_factory=lambda: int(time.time()))


def prepare(store: Store, settings: Settings, body: CreateResponseRequest, *, project_id: str) -> Prepared:
    """Check every field (400 naming it) and resolve the model and previous response (404)."""
    for name, allowed in UNSUPPORTED.items():
        value = getattr(body, name)
        if value is not None and not any(type(value) is type(a) and value == a for a in allowed):
            raise _bad(f"'{name}' is not supported by ModelMill" + (f" (only {allowed!r})" if allowed else ""),
                       name, "unsupported_parameter")
    _check_stream_options(body.stream_options)
    _optional_bool(body.stream, "stream")
    served = model_registry.resolve(store, settings, body.model, project_id=project_id)
    instructions = _optional_str(body.instructions, "instructions")
    previous = None
    if body.previous_response_id is not None:
        pid = _optional_str(body.previous_response_id, "previous_response_id")
        previous = store.responses.get(pid, project_id=project_id, param="previous_response_id")
    history = list(previous.history) if previous else []
    items, messages = parse_input(body.input, history)
    images.check(settings, served, items)  # a 400 naming the part unless the model can read them
    tools = _tools(body.tools)
    tool_choice = _tool_choice(body.tool_choice, tools)
    fmt = _text_format(body.text)
    chat_fields: dict[str, Any] = {
        "model": body.model, "temperature": _number(body.temperature, "temperature", 0, 2),
        "top_p": _number(body.top_p, "top_p", 0, 1), "max_completion_tokens": _max_tokens(body.max_output_tokens),
        "tools": [{"type": "function", "function": {k: v for k, v in t.items() if k != "type"}} for t in tools] or None,
        "tool_choice": tool_choice, "parallel_tool_calls": _optional_bool(body.parallel_tool_calls,
                                                                          "parallel_tool_calls"),
        **_logprobs(body.include, body.top_logprobs)}
    if fmt is not None and fmt["type"] != "text":
        chat_fields["response_format"] = _response_format(fmt)
    system = [{"role": "system", "content": instructions}] if instructions else []
    chat_req = _chat_request({k: v for k, v in chat_fields.items() if v is not None}, system + history + messages)
    for key in ("user", "safety_identifier", "prompt_cache_key"):
        _optional_str(getattr(body, key), key)
    echo = {
        "model": body.model, "instructions": instructions, "tools": tools,
        "tool_choice": _echo_choice(body.tool_choice),
        "temperature": 1.0 if body.temperature is None else float(body.temperature),
        "top_p": 1.0 if body.top_p is None else float(body.top_p), "max_output_tokens": body.max_output_tokens,
        "parallel_tool_calls": True if body.parallel_tool_calls is None else body.parallel_tool_calls,
        "previous_response_id": previous.id if previous else None,
        "metadata": check_metadata(body.metadata) or {}, "text": {"format": fmt or {"type": "text"}},
        "truncation": "disabled", "user": body.user, "safety_identifier": body.safety_identifier,
        "prompt_cache_key": body.prompt_cache_key, "max_tool_calls": _max_tool_calls(body.max_tool_calls),
        "background": False, "service_tier": "default", "top_logprobs": body.top_logprobs or 0, "reasoning": None,
    }
    return Prepared(served, chat_req, items, history + messages, echo, _optional_bool(body.store, "store") is not False)


# Chat-completion parameter names -> the Responses request's, for errors raised by the shared chat
# path (constraints, token limits, context length): the caller is told about the field it sent.
_CHAT_PARAMS = [(re.compile(r"^response_format(\.json_schema)?"), "text.format"), (re.compile(r"^messages.*"), "input"),  # (chat's message index is not the input's)
                (re.compile(r"^max_(completion_)?tokens"), "max_output_tokens"),
                (re.compile(r"^tools\[(\d+)\]\.function"), r"tools[\1]"),
                (re.compile(r"^tool_choice\.function\.name"), "tool_choice.name")]


def responses_param(param: str | None) -> str | None:
    """A chat-completions param path as the Responses request names it."""
    for pattern, name in _CHAT_PARAMS:
        if param and pattern.match(param):
            return pattern.sub(name, param, count=1)
    return param


@contextlib.contextmanager
def chat_errors():
    """Re-raise the shared chat path's request errors with the Responses field names."""
    try:
        yield
    except errors.ModelMillError as e:
        renamed = responses_param(e.param)
        if renamed != e.param:
            message = e.message.replace(e.param, renamed) if e.param else e.message
            raise type(e)(message, param=renamed, code=e.code) from e
        raise


def _chat_request(fields: dict, messages: list[dict]) -> ChatCompletionRequest:
    if "response_format" in fields and "response_format" not in ChatCompletionRequest.model_fields:
        # Structured outputs land in chat completions (issue 16.1); until then text.format is refused.
        raise _bad("text.format json_schema / json_object is not supported by this build", "text.format",
                   "unsupported_parameter")
    try:
        return ChatCompletionRequest.model_validate({**fields, "messages": messages})
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first.get("loc", ()))
        names = {"max_completion_tokens": "max_output_tokens", "messages": "input", "response_format": "text.format"}
        head = loc.split(".")[0]
        raise _bad(f"Invalid value for '{names.get(head, head)}': {first.get('msg')}", names.get(head, head)) from None


# -- input -------------------------------------------------------------------------------------

def parse_input(raw, history: list[dict]) -> tuple[list[dict], list[dict]]:
    """(input items as stored, with ids; the chat messages they become). history: the chat
    messages before them (a function_call_output must answer a call made there or here)."""
    if isinstance(raw, str):
        raw = [{"type": "message", "role": "user", "content": raw}]
    if not isinstance(raw, list) or not raw:
        raise _bad("'input' must be a string or a non-empty array of input items", "input",
                   "missing_required_parameter" if raw is None else "invalid_value")
    calls = {tc["id"] for m in history for tc in m.get("tool_calls") or []}
    items, messages = [], []
    for i, item in enumerate(raw):
        param = f"input[{i}]"
        if not isinstance(item, dict):
            raise _bad(f"{param} must be an object (an input item)", param)
        kind = item.get("type", "message")
        if kind == "message":
            stored, message = _message(item, param)
        elif kind == "function_call":
            stored, message = _function_call(item, param)
            calls.add(message["tool_calls"][0]["id"])
            if messages and messages[-1]["role"] == "assistant" and messages[-1].get("tool_calls") \
                    and not messages[-1].get("content"):  # consecutive calls: one assistant turn
                messages[-1]["tool_calls"] += message["tool_calls"]
                items.append(stored)
                continue
        elif kind == "function_call_output":
            stored, message = _function_output(item, param, calls)
        else:
            raise _bad(f"{param}.type {kind!r} is not supported by ModelMill; input items are messages, "
                       "function_call and function_call_output", f"{param}.type", "unsupported_value")
        items.append(stored)
        messages.append(message)
    return items, messages


def _message(item: dict, param: str) -> tuple[dict, dict]:
    errors.reject_unknown_fields(item, {"type", "role", "content", "id", "status", "phase"}, param)
    role = item.get("role")
    if role not in MESSAGE_ROLES:
        raise _bad(f"{param}.role must be one of {', '.join(MESSAGE_ROLES)}", f"{param}.role")
    if role == "user" and images.has_images(item.get("content")):
        stored_parts, chat_parts = images.user_content(item["content"], f"{param}.content",
                                                       lambda part, where: _part_text(part, where, role))
        return ({"id": new_id("msg_"), "type": "message", "role": role, "status": "completed", "content": stored_parts},
                {"role": role, "content": chat_parts})
    text = _text(item.get("content"), f"{param}.content", role)
    if role == "assistant":
        stored = {"id": item.get("id") or new_id("msg_"), "type": "message", "role": "assistant", "status": "completed",
                  "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]}
    else:
        stored = {"id": new_id("msg_"), "type": "message", "role": role, "status": "completed",
                  "content": [{"type": "input_text", "text": text}]}
    return stored, {"role": role, "content": text}


def _text(content, param: str, role: str) -> str:
    """A message's content as text: a string, or text parts joined. Files and audio are a 400 naming
    the part (ModelMill's models read text), and so are images outside a user message (a user
    message's images are responses/images.py's)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _bad(f"{param} must be a string or an array of content parts", param)
    return "".join(_part_text(part, f"{param}[{j}]", role) for j, part in enumerate(content))


def _part_text(part, where: str, role: str) -> str:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind in TEXT_PARTS or (kind == "refusal" and role == "assistant"):
        key = "refusal" if kind == "refusal" else "text"
        errors.reject_unknown_fields(part, {"type", key, "annotations", "logprobs", "prompt_cache_breakpoint"}, where)
        if not isinstance(part.get(key), str):
            raise _bad(f"{where}.{key} must be a string", f"{where}.{key}")
        return part[key]
    if kind == "input_image":
        raise _bad(f"{where}: input_image parts are only allowed in user messages, not {role}", where,
                   "unsupported_content")
    if kind in ("input_file", "input_audio"):
        raise _bad(f"{where}: {kind} parts are not supported; ModelMill's models read text and images", where,
                   "unsupported_content")
    raise _bad(f"{where}.type must be one of {', '.join(TEXT_PARTS)}; got {kind!r}", f"{where}.type")


def _function_call(item: dict, param: str) -> tuple[dict, dict]:
    errors.reject_unknown_fields(item, {"type", "id", "call_id", "name", "arguments", "status"}, param)
    for key in ("call_id", "name", "arguments"):
        if not isinstance(item.get(key), str) or (key != "arguments" and not item[key]):
            raise _bad(f"{param}.{key} must be a non-empty string", f"{param}.{key}",
                       "missing_required_parameter" if key not in item else "invalid_value")
    stored = {"id": item.get("id") or new_id("fc_"), "type": "function_call", "status": "completed",
              "call_id": item["call_id"], "name": item["name"], "arguments": item["arguments"]}
    call = {"id": item["call_id"], "type": "function",
            "function": {"name": item["name"], "arguments": item["arguments"]}}
    return stored, {"role": "assistant", "content": None, "tool_calls": [call]}


def _function_output(item: dict, param: str, calls: set[str]) -> tuple[dict, dict]:
    errors.reject_unknown_fields(item, {"type", "id", "call_id", "output", "status"}, param)
    call_id = item.get("call_id")
    if not isinstance(call_id, str) or not call_id:
        raise _bad(f"{param}.call_id must be a non-empty string", f"{param}.call_id", "missing_required_parameter")
    if call_id not in calls:
        raise _bad(f"No tool call found for function call output with call_id {call_id}.", f"{param}.call_id")
    output = item.get("output")
    text = output if isinstance(output, str) else _text(output, f"{param}.output", "tool")
    stored = {"id": item.get("id") or new_id("fco_"), "type": "function_call_output", "status": "completed",
              "call_id": call_id, "output": text}
    return stored, {"role": "tool", "tool_call_id": call_id, "content": text}


# -- tools, tool_choice, text.format -------------------------------------------------------------

def _tools(raw) -> list[dict]:
    """Function tools in the Responses shape (echoed back as given, strict and parameters filled)."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise _bad("'tools' must be an array of tools", "tools")
    out, names = [], set()
    for i, tool in enumerate(raw):
        param = f"tools[{i}]"
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind != "function":
            raise _bad(f"{param}.type: built-in tool {kind!r} is not supported by ModelMill; only function tools "
                       "run here", f"{param}.type", "unsupported_tool")
        errors.reject_unknown_fields(tool, FUNCTION_TOOL_KEYS | {"output_schema", "defer_loading", "allowed_callers"},
                                     param)
        for key in ("output_schema", "defer_loading", "allowed_callers"):
            if tool.get(key) is not None:
                raise _bad(f"{param}.{key} is not supported by ModelMill", f"{param}.{key}", "unsupported_parameter")
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise _bad(f"{param}.name must be a non-empty string", f"{param}.name", "missing_required_parameter")
        if name in names:
            raise _bad(f"{param}.name {name!r} is used by another tool", f"{param}.name")
        names.add(name)
        params = tool.get("parameters")
        if params is not None and not isinstance(params, dict):
            raise _bad(f"{param}.parameters must be a JSON schema object", f"{param}.parameters")
        desc = tool.get("description")
        if desc is not None and not isinstance(desc, str):
            raise _bad(f"{param}.description must be a string", f"{param}.description")
        strict = _optional_bool(tool.get("strict"), f"{param}.strict")
        out.append({"type": "function", "name": name, "description": desc,
                    "parameters": params if params is not None else {"type": "object", "properties": {}},
                    "strict": True if strict is None else strict})
    return out


def _tool_choice(raw, tools: list[dict]):
    """The chat-completions tool_choice for a Responses one ("none" | "auto" | "required" | a function)."""
    names = [t["name"] for t in tools]
    if raw is None or raw in ("none", "auto"):
        return raw
    if raw == "required":
        if not names:
            raise _bad("tool_choice 'required' needs at least one tool in 'tools'", "tool_choice")
        return raw
    if not isinstance(raw, dict):
        raise _bad("tool_choice must be 'none', 'auto', 'required' or {\"type\": \"function\", \"name\": ...}",
                   "tool_choice")
    kind = raw.get("type")
    if kind == "function":
        errors.reject_unknown_fields(raw, {"type", "name"}, "tool_choice")
        if raw.get("name") not in names:
            raise _bad(f"tool_choice.name {raw.get('name')!r} is not the name of a function in 'tools'",
                       "tool_choice.name")
        return {"type": "function", "function": {"name": raw["name"]}}
    if kind == "allowed_tools":
        return _allowed_tools(raw, names)
    raise _bad(f"tool_choice.type {kind!r} is not supported by ModelMill (built-in tools do not run here)",
               "tool_choice.type", "unsupported_tool")


def _allowed_tools(raw: dict, names: list[str]):
    """{"type": "allowed_tools", "mode", "tools": [{"type": "function", "name"}]}: honoured by letting
    the sampler see only the allowed functions (mode "required" forces a call, among them)."""
    errors.reject_unknown_fields(raw, {"type", "mode", "tools"}, "tool_choice")
    if raw.get("mode") not in ("auto", "required"):
        raise _bad("tool_choice.mode must be 'auto' or 'required'", "tool_choice.mode")
    allowed = raw.get("tools")
    if not isinstance(allowed, list) or not allowed:
        raise _bad("tool_choice.tools must be a non-empty array", "tool_choice.tools")
    for j, t in enumerate(allowed):
        if not isinstance(t, dict) or t.get("type") != "function" or t.get("name") not in names:
            raise _bad(f"tool_choice.tools[{j}] must be {{\"type\": \"function\", \"name\"}} naming a function in "
                       "'tools'", f"tool_choice.tools[{j}]")
    # ml.sampling's tool_choice has no allowed-list; naming a single allowed function is exact,
    # and a wider list is refused rather than silently widened to every tool.
    if len(allowed) == 1 and raw["mode"] == "required":
        return {"type": "function", "function": {"name": allowed[0]["name"]}}
    if {t["name"] for t in allowed} == set(names):
        return raw["mode"]
    raise _bad("tool_choice.tools: an allowed subset of several tools is not supported by ModelMill; list one "
               "tool with mode 'required', or every tool", "tool_choice.tools", "unsupported_value")


def _echo_choice(raw):
    return "auto" if raw is None else raw


def _text_format(raw) -> dict | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise _bad("'text' must be an object", "text")
    errors.reject_unknown_fields(raw, {"format", "verbosity"}, "text")
    if raw.get("verbosity") not in (None, "medium"):
        raise _bad("text.verbosity is not supported by ModelMill (only 'medium')", "text.verbosity",
                   "unsupported_parameter")
    fmt = raw.get("format")
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind in ("text", "json_object"):
        errors.reject_unknown_fields(fmt, {"type"}, "text.format")
        return {"type": kind}
    if kind != "json_schema":
        raise _bad("text.format.type must be 'text', 'json_schema' or 'json_object'", "text.format.type")
    errors.reject_unknown_fields(fmt, {"type", "name", "schema", "strict", "description"}, "text.format")
    if not isinstance(fmt.get("name"), str) or not fmt["name"]:
        raise _bad("text.format.name must be a non-empty string", "text.format.name", "missing_required_parameter")
    if not isinstance(fmt.get("schema"), dict):
        raise _bad("text.format.schema must be a JSON schema object", "text.format.schema",
                   "missing_required_parameter")
    return {k: fmt[k] for k in ("type", "name", "schema", "strict", "description") if fmt.get(k) is not None}


def _response_format(fmt: dict) -> dict:
    """text.format -> chat's response_format (the same constraint path: service/chat/completions.py)."""
    if fmt["type"] == "json_object":
        return {"type": "json_object"}
    return {"type": "json_schema", "json_schema": {k: v for k, v in fmt.items() if k != "type"}}


# -- scalar checks -------------------------------------------------------------------------------

def _logprobs(include, top_logprobs) -> dict:
    """`include: ["message.output_text.logprobs"]` and/or `top_logprobs` (0-20) -> chat's logprobs
    fields (each output_text part then carries its tokens' logprobs, computed by chat's path)."""
    if include is not None and not (isinstance(include, list) and all(isinstance(x, str) for x in include)):
        raise _bad("'include' must be an array of strings", "include")
    for j, value in enumerate(include or []):
        if value != LOGPROBS_INCLUDE:
            raise _bad(f"include[{j}] {value!r} is not supported by ModelMill (only {LOGPROBS_INCLUDE!r})",
                       f"include[{j}]", "unsupported_value")
    if top_logprobs is not None and (isinstance(top_logprobs, bool) or not isinstance(top_logprobs, int)
                                     or not 0 <= top_logprobs <= 20):
        raise _bad("'top_logprobs' must be an integer from 0 to 20", "top_logprobs")
    if not include and not top_logprobs:
        return {}
    return {"logprobs": True, "top_logprobs": top_logprobs or 0}


def _check_stream_options(raw) -> None:
    if raw is None:
        return
    if not isinstance(raw, dict):
        raise _bad("stream_options must be an object", "stream_options")
    errors.reject_unknown_fields(raw, {"include_obfuscation"}, "stream_options")
    if raw.get("include_obfuscation") not in (None, False):
        raise _bad("stream_options.include_obfuscation is not supported by ModelMill",
                   "stream_options.include_obfuscation", "unsupported_parameter")


def _number(v, name: str, lo: float, hi: float):
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
        raise _bad(f"'{name}' must be a number from {lo} to {hi}", name)
    return v


def _max_tokens(v):
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise _bad("'max_output_tokens' must be a positive integer", "max_output_tokens")
    return v


def _max_tool_calls(v):
    # Bounds built-in tool calls only; none run here, so any positive bound is met.
    if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
        raise _bad("'max_tool_calls' must be a positive integer", "max_tool_calls")
    return v


def _optional_str(v, name: str):
    if v is not None and not isinstance(v, str):
        raise _bad(f"'{name}' must be a string", name)
    return v


def _optional_bool(v, name: str):
    if v is not None and not isinstance(v, bool):
        raise _bad(f"'{name}' must be a boolean", name)
    return v


# -- reads ---------------------------------------------------------------------------------------

def refuse_retrieve_options(*, stream: bool | None, include: list[str] | None,
                            starting_after: int | None = None) -> None:
    """GET /v1/responses/{id} (and its input_items): replaying a stored response as a stream (`stream`,
    `starting_after`), and `include`, are not supported."""
    if stream:
        raise _bad("'stream' is not supported when retrieving a response", "stream", "unsupported_parameter")
    if starting_after is not None:
        raise _bad("'starting_after' (replaying a response's stream) is not supported by ModelMill", "starting_after",
                   "unsupported_parameter")
    if include:
        raise _bad("'include' is not supported by ModelMill", "include", "unsupported_parameter")


def input_items_page(record: ResponseRecord, *, after: str | None, limit: int, order: str) -> dict:
    """GET /v1/responses/{id}/input_items: a ResponseItemList of the request's own input items."""
    if order not in ("asc", "desc"):
        raise _bad("order must be 'asc' or 'desc'", "order")
    if not 1 <= limit <= 100:
        raise _bad("limit must be between 1 and 100", "limit")
    items = list(record.input_items) if order == "asc" else list(reversed(record.input_items))
    if after is not None:
        ids = [it["id"] for it in items]
        if after not in ids:
            raise _bad(f"No input item with id {after!r} to page after", "after", "invalid_cursor")
        items = items[ids.index(after) + 1:]
    page = items[:limit]
    return {"object": "list", "data": page, "first_id": page[0]["id"] if page else "",
            "last_id": page[-1]["id"] if page else "", "has_more": len(items) > limit}
