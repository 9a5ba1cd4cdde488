"""Stored chat completions: `store: true` on /v1/chat/completions keeps the request and the
completion for the caller's project (store/stored.py), to be listed, read, re-tagged and deleted
(GET/POST/DELETE /v1/chat/completions[/{id}[/messages]]) and used as an eval's data source.

A streamed completion is stored once its stream ends: the chunks chat.stream_sse sends are
folded back into the chat.completion object a non-streamed call returns. A stream that failed
or that the client left is not stored.
"""

from __future__ import annotations

import json
import logging
from typing import Callable, Iterator

from modelmill import errors
from modelmill.service.evals.requests import check_metadata
from modelmill.service.schemas.chat import ChatCompletionRequest, StreamOptions
from modelmill.service.store import Store
from modelmill.service.store.stored import StoredCompletionRecord

log = logging.getLogger(__name__)

# Request fields kept with a stored completion (how it was asked; stream settings are not).
REQUEST_FIELDS = ("messages", "tools", "tool_choice", "temperature", "top_p", "max_tokens", "max_completion_tokens",
                  "n", "seed", "stop", "response_format", "parallel_tool_calls")


def save(store: Store, project_id: str, req: ChatCompletionRequest, completion: dict) -> None:
    """Keep a finished completion (with its metadata) for project_id."""
    dumped = req.model_dump(exclude_none=True)
    request = {k: dumped[k] for k in REQUEST_FIELDS if k in dumped}
    store.stored_completions.add(project_id, {**completion, "metadata": req.metadata or {}}, request,
                                 req.metadata or None)


def save_stream(store: Store, project_id: str, req: ChatCompletionRequest,
                stream: Callable[[ChatCompletionRequest], Iterator[str]]) -> Iterator[str]:
    """chat.stream_sse's events for req (`stream(req)`), then the completion they spelled out is
    stored (if the stream finished). The stored object carries usage, so the stream is asked for
    it; a client that did not ask for it (stream_options.include_usage) gets the chunks without it."""
    wants_usage = bool(req.stream_options and req.stream_options.include_usage)
    with_usage = req.model_copy(update={"stream_options": StreamOptions(include_usage=True)})
    folded, sse = _Fold(), stream(with_usage)
    try:
        for event in sse:
            folded.add(event)
            out = event if wants_usage else _without_usage(event)
            if out:
                yield out
    finally:
        close = getattr(sse, "close", None)
        if close is not None:
            close()  # the client left: end chat's stream (and its batch row) now
    if folded.done and not folded.failed:
        save(store, project_id, req, folded.completion())


def _without_usage(event: str) -> str:
    """A chunk event as it is sent without include_usage: no `usage` key, no usage-only chunk."""
    if not event.startswith("data: {"):
        return event
    chunk = json.loads(event[len("data: "):])
    if "usage" not in chunk:
        return event
    if not chunk.get("choices"):
        return ""
    del chunk["usage"]
    return "data: " + json.dumps(chunk) + "\n\n"


class _Fold:
    """Chat completion chunks -> the chat.completion they add up to."""

    def __init__(self):
        self.head: dict = {}
        self.choices: dict[int, dict] = {}
        self.usage = None
        self.done = self.failed = False

    def add(self, event: str) -> None:
        for line in event.splitlines():
            if not line.startswith("data: "):
                continue
            payload = line[len("data: "):]
            if payload == "[DONE]":
                self.done = True
                continue
            chunk = json.loads(payload)
            if "error" in chunk:
                self.failed = True
                continue
            self.head = self.head or {k: chunk[k] for k in ("id", "created", "model", "system_fingerprint")
                                      if k in chunk}
            self.usage = chunk.get("usage") or self.usage
            for c in chunk.get("choices") or []:
                self._choice(c)

    def _choice(self, c: dict) -> None:
        mine = self.choices.setdefault(c["index"], {"index": c["index"], "finish_reason": "stop", "logprobs": None,
                                                    "message": {"role": "assistant", "content": None,
                                                                "refusal": None}})
        delta, message = c.get("delta") or {}, mine["message"]
        if delta.get("content"):
            message["content"] = (message["content"] or "") + delta["content"]
        for tc in delta.get("tool_calls") or []:
            calls = message.setdefault("tool_calls", [])
            if tc.get("id"):
                calls.append({"id": tc["id"], "type": "function", "function": {
                    "name": (tc.get("function") or {}).get("name") or "", "arguments": ""}})
            if calls and (tc.get("function") or {}).get("arguments"):
                calls[-1]["function"]["arguments"] += tc["function"]["arguments"]
        if c.get("finish_reason"):
            mine["finish_reason"] = c["finish_reason"]

    def completion(self) -> dict:
        return {**self.head, "object": "chat.completion",
                "choices": [self.choices[i] for i in sorted(self.choices)], "usage": self.usage}


# -- reads ---------------------------------------------------------------------------------------

def metadata_filter(query: dict[str, str]) -> dict[str, str] | None:
    """`metadata[key]=value` query parameters (how the SDK sends a metadata filter) -> {key: value}."""
    out = {}
    for name, value in query.items():
        if name.startswith("metadata[") and name.endswith("]"):
            out[name[len("metadata["):-1]] = value
        elif name == "metadata":
            raise errors.InvalidRequestError("metadata must be sent as metadata[key]=value", param="metadata")
    return check_metadata(out) if out else None


def completion_object(record: StoredCompletionRecord) -> dict:
    return {**record.completion, "metadata": record.metadata or {}}


def list_object(page) -> dict:
    data = [completion_object(r) for r in page.items]
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else "",
            "last_id": data[-1]["id"] if data else "", "has_more": page.has_more}


def messages_page(record: StoredCompletionRecord, *, after: str | None, limit: int, order: str) -> dict:
    """The request's messages, each with an id `<completion id>-<index>` (as OpenAI numbers them)."""
    if order not in ("asc", "desc"):
        raise errors.InvalidRequestError("order must be 'asc' or 'desc'", param="order")
    messages = [_message(record.id, i, m) for i, m in enumerate(record.request.get("messages") or [])]
    if order == "desc":
        messages.reverse()
    if after is not None:
        ids = [m["id"] for m in messages]
        if after not in ids:
            raise errors.InvalidRequestError(f"No message with id {after!r} to page after", param="after",
                                             code="invalid_cursor")
        messages = messages[ids.index(after) + 1:]
    page = messages[:limit]
    return {"object": "list", "data": page, "first_id": page[0]["id"] if page else "",
            "last_id": page[-1]["id"] if page else "", "has_more": len(messages) > limit}


def _message(completion_id: str, index: int, m: dict) -> dict:
    content = m.get("content")
    parts = None
    if isinstance(content, list):  # text parts: joined as content, kept as content_parts
        parts = [p for p in content if isinstance(p, dict) and p.get("type") == "text"]
        content = "".join(p.get("text", "") for p in parts)
    out = {"id": f"{completion_id}-{index}", "role": m.get("role"), "content": content, "refusal": None,
           "name": m.get("name"), "content_parts": parts}
    if m.get("tool_calls"):
        out["tool_calls"] = m["tool_calls"]
    return out


def update_metadata(store: Store, completion_id: str, body: dict, *, project_id: str) -> dict:
    """POST /v1/chat/completions/{id}: {"metadata": {...} | null} replaces the metadata."""
    store.stored_completions.get(completion_id, project_id=project_id)  # 404 before any 400
    if not isinstance(body, dict) or "metadata" not in body:
        raise errors.InvalidRequestError("Missing required parameter: 'metadata'.", param="metadata",
                                         code="missing_required_parameter")
    errors.reject_unknown_fields(body, {"metadata"})
    record = store.stored_completions.update_metadata(completion_id, check_metadata(body["metadata"]),
                                                      project_id=project_id)
    return completion_object(record)
