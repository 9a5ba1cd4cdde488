"""Evals over what the project stored: the `stored_completions` and `logs` data-source configs, and
the run sources `stored_completions` (a completions run) and `responses` (a responses run), which
select the project's stored chat completions and Responses (store/stored.py) by OpenAI's filters.

Each stored object becomes one data-source row (item, sample):
- item: {"id", "created_at", "model", "metadata", "input": the chat messages that were sent
  (a Response's: its instructions and conversation so far)}, so `{{item.input}}` and an
  input_messages item_reference "item.input" work as on OpenAI;
- sample: what the model answered ({"model", "output_text", "output_tools", "choices"}).
A run without a `model` grades those stored answers; with one, it samples that model anew on
input_messages (as a completions run does), e.g. to compare a fine-tuned model with what was logged.
"""

from __future__ import annotations

from modelmill import errors
from modelmill.service.schemas import eval_requests as wire
from modelmill.service.schemas.eval_requests import fields_of
from modelmill.service.store import Store
from modelmill.service.store.stored import ResponseRecord, StoredCompletionRecord

CONFIG_TYPES = ("stored_completions", "logs")
# The item of a stored row (the eval's item_schema for these configs).
ITEM_SCHEMA = {"type": "object", "properties": {
    "id": {"type": "string"}, "created_at": {"type": "integer"}, "model": {"type": "string"},
    "metadata": {"type": ["object", "null"]}, "instructions": {"type": ["string", "null"]},
    "input": {"type": "array", "items": {"type": "object"}}}, "required": ["id", "model", "input"]}
# The fields of each shape: its wire model's (schemas/eval_requests.py).
COMPLETIONS_SOURCE_FIELDS = fields_of(wire.StoredCompletionsSource)
RESPONSES_SOURCE_FIELDS = fields_of(wire.ResponsesSource)
CONFIG_FIELDS = fields_of(wire.StoredCompletionsDataSourceConfig)
assert CONFIG_FIELDS == fields_of(wire.LogsDataSourceConfig)


def _bad(message: str, param: str, code: str = "invalid_value") -> errors.InvalidRequestError:
    return errors.InvalidRequestError(message, param=param, code=code)


def check_config(config: dict) -> dict:
    """A stored_completions / logs data_source_config -> as stored (item_schema filled in)."""
    from modelmill.service.evals.requests import check_metadata

    param = "data_source_config"
    errors.reject_unknown_fields(config, CONFIG_FIELDS, param)
    return {"type": config["type"], "metadata": check_metadata(config.get("metadata"), f"{param}.metadata"),
            "item_schema": ITEM_SCHEMA, "include_sample_schema": True}


def is_stored(src) -> bool:
    return isinstance(src, dict) and src.get("type") in ("stored_completions", "responses")


def load(store: Store, src: dict, param: str, *, project_id: str) -> list[tuple[dict, dict]]:
    """The rows a stored_completions or responses run source selects (oldest first)."""
    kind = src["type"]
    fields = COMPLETIONS_SOURCE_FIELDS if kind == "stored_completions" else RESPONSES_SOURCE_FIELDS
    errors.reject_unknown_fields(src, fields, param)
    filters = _common_filters(src, param)
    if kind == "stored_completions":
        return [_completion_row(r) for r in store.stored_completions.query(project_id=project_id, **filters)]
    if src.get("reasoning_effort") is not None:
        raise _bad(f"{param}.reasoning_effort: ModelMill's models do not reason; leave it unset",
                   f"{param}.reasoning_effort", "unsupported_value")
    search = src.get("instructions_search")
    if search is not None and not isinstance(search, str):
        raise _bad(f"{param}.instructions_search must be a string", f"{param}.instructions_search")
    records = store.responses.query(project_id=project_id, instructions_search=search, **filters)
    return [_response_row(r) for r in records if _response_matches(r, src, param)]


def _common_filters(src: dict, param: str) -> dict:
    from modelmill.service.evals.requests import check_metadata

    out = {"metadata": check_metadata(src.get("metadata"), f"{param}.metadata")}
    model = src.get("model")
    if model is not None and not isinstance(model, str):
        raise _bad(f"{param}.model must be a string", f"{param}.model")
    out["model"] = model
    for key in ("created_after", "created_before", "limit"):
        v = src.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < (1 if key == "limit" else 0)):
            raise _bad(f"{param}.{key} must be a {'positive' if key == 'limit' else 'non-negative'} integer",
                       f"{param}.{key}")
        out[key] = v
    return out


def _response_matches(r: ResponseRecord, src: dict, param: str) -> bool:
    """EvalResponsesSource's filters on the response object (equality, a user among users, every
    listed tool name among the response's tools)."""
    resp = r.response
    for key in ("temperature", "top_p"):
        v = src.get(key)
        if v is not None:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise _bad(f"{param}.{key} must be a number", f"{param}.{key}")
            if float(resp.get(key, 1.0)) != float(v):
                return False
    for key in ("users", "tools"):
        v = src.get(key)
        if v is not None and not (isinstance(v, list) and all(isinstance(x, str) for x in v)):
            raise _bad(f"{param}.{key} must be an array of strings", f"{param}.{key}")
    if src.get("users") is not None and resp.get("user") not in src["users"]:
        return False
    names = {t.get("name") or t.get("type") for t in resp.get("tools") or []}
    return src.get("tools") is None or set(src["tools"]) <= names


def _completion_row(r: StoredCompletionRecord) -> tuple[dict, dict]:
    messages = r.request.get("messages") or []
    item = {"id": r.id, "created_at": int(r.created_at), "model": r.model, "metadata": r.metadata,
            "input": [_plain(m) for m in messages]}
    choices = r.completion.get("choices") or []
    message = choices[0].get("message", {}) if choices else {}
    sample = {"model": r.model, "choices": choices, "output_text": message.get("content") or "",
              "output_tools": message.get("tool_calls") or []}
    return item, sample


def _response_row(r: ResponseRecord) -> tuple[dict, dict]:
    conversation = r.history[:-1]  # the last entry is this response's own output
    instructions = [{"role": "system", "content": r.instructions}] if r.instructions else []
    item = {"id": r.id, "created_at": int(r.created_at), "model": r.model, "metadata": r.metadata,
            "instructions": r.instructions, "input": [_plain(m) for m in instructions + conversation]}
    output = r.response.get("output") or []
    text = "".join(p.get("text", "") for o in output if o.get("type") == "message"
                   for p in o.get("content") or [] if p.get("type") == "output_text")
    calls = [{"id": o["call_id"], "type": "function", "function": {"name": o["name"], "arguments": o["arguments"]}}
             for o in output if o.get("type") == "function_call"]
    sample = {"model": r.model, "output_text": text, "output_tools": calls, "output": output,
              "choices": [{"index": 0, "finish_reason": "tool_calls" if calls else "stop",
                           "message": {"role": "assistant", "content": text or None, "tool_calls": calls or None}}]}
    return item, sample


def _plain(m: dict) -> dict:
    return {k: v for k, v in m.items() if k in ("role", "content", "tool_calls", "tool_call_id", "name")}


# -- responses runs ------------------------------------------------------------------------------

def chat_sampling_params(source: dict) -> dict | None:
    """A responses run's sampling_params in the completions shape service/evals/requests.py checks:
    `text.format` -> response_format, Responses function tools -> chat tools."""
    raw = source.get("sampling_params")
    if source.get("type") != "responses" or not isinstance(raw, dict):
        return raw
    out = {k: v for k, v in raw.items() if k not in ("text", "tools")}
    fmt = (raw.get("text") or {}).get("format") if isinstance(raw.get("text"), dict) else None
    if isinstance(fmt, dict) and fmt.get("type") in ("json_schema", "json_object"):
        out["response_format"] = {"type": "json_object"} if fmt["type"] == "json_object" else {
            "type": "json_schema", "json_schema": {k: v for k, v in fmt.items() if k != "type"}}
    if raw.get("tools") is not None:
        tools = raw["tools"]
        if not isinstance(tools, list) or not all(isinstance(t, dict) and t.get("type") == "function" for t in tools):
            raise _bad("data_source.sampling_params.tools: only function tools run here",
                       "data_source.sampling_params.tools", "unsupported_tool")
        out["tools"] = [{"type": "function", "function": {k: v for k, v in t.items() if k != "type"}} for t in tools]
    return out
