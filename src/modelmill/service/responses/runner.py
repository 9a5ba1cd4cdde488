"""Running a prepared Responses request (service/responses/requests.py) through chat completions and
answering with OpenAI's `response` object, or its typed stream events.

Generation goes through service/chat/completions.py's complete() and stream_sse(): the same sampler call,
tool parsing, constraints and logprobs as /v1/chat/completions. The stream reads chat's own
chunks (in-process, never over HTTP) and re-emits them as the Responses events, in OpenAI's order:

    response.created, response.in_progress,
    [message]  output_item.added, content_part.added, output_text.delta..., output_text.done,
               content_part.done, output_item.done
    [per call] output_item.added, function_call_arguments.delta, function_call_arguments.done,
               output_item.done
    response.completed | response.incomplete (max_output_tokens) | error + response.failed

A client that goes away mid-stream closes the generator, which closes chat's stream and so
cancels its row in the batch (ml/sampling/); what was generated until then is still stored.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Iterator

from modelmill.settings import Settings
from modelmill.service.chat import completions as chat
from modelmill.service.store.ids import new_id
from modelmill.service.responses.requests import Prepared, chat_errors, responses_param
from modelmill.service.store import Store

log = logging.getLogger(__name__)


# -- objects -------------------------------------------------------------------------------------

def message_item(item_id: str, text: str, status: str, logprobs: list[dict] | None = None) -> dict:
    return {"id": item_id, "type": "message", "role": "assistant", "status": status,
            "content": [text_part(text, logprobs)] if status != "in_progress" else []}


def text_part(text: str, logprobs: list[dict] | None = None) -> dict:
    """An output_text part; logprobs: chat's token logprobs (the same shape), [] when not asked for."""
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs or []}


def _token_logprobs(choice: dict) -> list[dict]:
    return ((choice.get("logprobs") or {}).get("content")) or []


def call_item(item_id: str, call: dict, status: str, arguments: str | None = None) -> dict:
    fn = call["function"]
    return {"id": item_id, "type": "function_call", "status": status, "call_id": call["id"], "name": fn["name"],
            "arguments": fn["arguments"] if arguments is None else arguments}


def usage_object(usage: dict | None) -> dict | None:
    if usage is None:
        return None
    return {"input_tokens": int(usage["prompt_tokens"]), "output_tokens": int(usage["completion_tokens"]),
            "total_tokens": int(usage["total_tokens"]),
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0}}


def response_object(prep: Prepared, status: str, output: list[dict], usage: dict | None = None,
                    error: dict | None = None) -> dict:
    incomplete = {"reason": "max_output_tokens"} if status == "incomplete" else None
    out = {"id": prep.id, "object": "response", "created_at": prep.created_at, "status": status,
           "completed_at": int(time.time()) if status == "completed" else None, "error": error,
           "incomplete_details": incomplete, **prep.echo, "output": output, "usage": usage_object(usage)}
    for key in ("user", "usage"):  # OpenAI's schema types these as non-nullable: omitted when unset
        if out[key] is None:
            del out[key]
    return out


def output_of(choice: dict) -> list[dict]:
    """A chat completion's choice -> Responses output items: the text (when there is any, or
    when there is nothing else), then one function_call per tool call."""
    message = choice["message"]
    calls = message.get("tool_calls") or []
    items = []
    if message.get("content") or not calls:
        status = "incomplete" if choice["finish_reason"] == "length" else "completed"
        items.append(message_item(new_id("msg_"), message.get("content") or "", status, _token_logprobs(choice)))
    items += [call_item(new_id("fc_"), c, "completed") for c in calls]
    return items


def _finish(store: Store, prep: Prepared, project_id: str, output: list[dict], message: dict, finish: str,
            usage: dict | None) -> dict:
    """The final response object; stored (with the conversation so far) unless store is false."""
    status = "incomplete" if finish == "length" else "completed"
    response = response_object(prep, status, output, usage)
    if prep.store:
        turn = {"role": "assistant", "content": message.get("content")}
        if message.get("tool_calls"):
            turn["tool_calls"] = message["tool_calls"]
        store.responses.add(project_id, response, prep.input_items, prep.history + [turn])
    return response


# -- non-streaming -------------------------------------------------------------------------------

def create(sampler, settings: Settings, store: Store, prep: Prepared, project_id: str,
           cancel: threading.Event | None = None) -> dict:
    """The whole response (blocking). Setting `cancel` (the client left) ends generation early."""
    with chat_errors():
        completion = chat.complete(sampler, settings, prep.served, prep.chat, cancel=cancel)
    choice = completion["choices"][0]
    return _finish(store, prep, project_id, output_of(choice), choice["message"], choice["finish_reason"],
                   completion["usage"])


# -- streaming -----------------------------------------------------------------------------------

class _Events:
    """Numbers and formats the stream's events (sequence_number counts from 0)."""

    def __init__(self):
        self.seq = 0

    def __call__(self, kind: str, **fields) -> str:
        event = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return f"event: {kind}\ndata: {json.dumps(event)}\n\n"


def stream(sampler, settings: Settings, store: Store, prep: Prepared, project_id: str,
           cancel: threading.Event | None = None) -> Iterator[str]:
    """Server-sent events for the response (a plain iterator, driven off the event loop). Setting
    `cancel` (the client left) ends generation at its next step; what was generated until then is
    still stored (as OpenAI keeps a response whose stream was dropped), unless chat's stream failed."""
    ev = _Events()
    yield ev("response.created", response=response_object(prep, "in_progress", []))
    yield ev("response.in_progress", response=response_object(prep, "in_progress", []))
    req = type(prep.chat).model_validate({**prep.chat.model_dump(exclude_none=True), "stream": True,
                                          "stream_options": {"include_usage": True}})
    chunks = chat.stream_sse(sampler, settings, prep.served, req, cancel=cancel)
    output: list[dict] = []
    msg_id, text, calls, finish, usage, logprobs = None, "", [], "stop", None, []
    try:
        for chunk in _chat_chunks(chunks):
            if "error" in chunk:
                yield from _failed(ev, prep, output, chunk["error"])
                return
            usage = chunk.get("usage") or usage
            for choice in chunk.get("choices") or []:
                delta = choice.get("delta") or {}
                if delta.get("content"):
                    if msg_id is None:
                        msg_id = new_id("msg_")
                        yield from _open_message(ev, msg_id, len(output))
                    text += delta["content"]
                    mine = _token_logprobs(choice)
                    logprobs += mine
                    yield ev("response.output_text.delta", item_id=msg_id, output_index=len(output), content_index=0,
                             delta=delta["content"], logprobs=mine)
                calls += [_call_of(c) for c in delta.get("tool_calls") or []]
                finish = choice.get("finish_reason") or finish
    finally:
        chunks.close()  # the client went away (or we are done): end chat's stream and its batch row
    if msg_id is None and not calls:
        msg_id = new_id("msg_")
        yield from _open_message(ev, msg_id, 0)
    if msg_id is not None:
        status = "incomplete" if finish == "length" else "completed"
        yield from _close_message(ev, msg_id, text, status, logprobs)
        output.append(message_item(msg_id, text, status, logprobs))
    for call in calls:
        yield from _call_events(ev, call, output)
    response = _finish(store, prep, project_id, output, {"content": text or None, "tool_calls": calls or None},
                       finish, usage)
    yield ev("response.incomplete" if response["status"] == "incomplete" else "response.completed", response=response)


def _chat_chunks(sse: Iterator[str]) -> Iterator[dict]:
    """Chat's SSE strings -> their JSON objects (stops at [DONE])."""
    for event in sse:
        for line in event.splitlines():
            if line.startswith("data: "):
                payload = line[len("data: "):]
                if payload == "[DONE]":
                    return
                yield json.loads(payload)


def _call_of(chunk_call: dict) -> dict:
    fn = chunk_call.get("function") or {}
    return {"id": chunk_call.get("id") or new_id("call_"), "type": "function",
            "function": {"name": fn.get("name") or "", "arguments": fn.get("arguments") or ""}}


def _open_message(ev: _Events, msg_id: str, index: int) -> Iterator[str]:
    yield ev("response.output_item.added", output_index=index, item=message_item(msg_id, "", "in_progress"))
    yield ev("response.content_part.added", item_id=msg_id, output_index=index, content_index=0, part=text_part(""))


def _close_message(ev: _Events, msg_id: str, text: str, status: str, logprobs: list[dict]) -> Iterator[str]:
    # The message is always output 0: it opens on the first text, and chat streams text before calls.
    yield ev("response.output_text.done", item_id=msg_id, output_index=0, content_index=0, text=text,
             logprobs=logprobs)
    yield ev("response.content_part.done", item_id=msg_id, output_index=0, content_index=0,
             part=text_part(text, logprobs))
    yield ev("response.output_item.done", output_index=0, item=message_item(msg_id, text, status, logprobs))


def _call_events(ev: _Events, call: dict, output: list[dict]) -> Iterator[str]:
    index, item_id, args = len(output), new_id("fc_"), call["function"]["arguments"]
    yield ev("response.output_item.added", output_index=index, item=call_item(item_id, call, "in_progress", ""))
    yield ev("response.function_call_arguments.delta", item_id=item_id, output_index=index, delta=args)
    yield ev("response.function_call_arguments.done", item_id=item_id, name=call["function"]["name"],
             output_index=index, arguments=args)
    done = call_item(item_id, call, "completed")
    yield ev("response.output_item.done", output_index=index, item=done)
    output.append(done)


def _failed(ev: _Events, prep: Prepared, output: list[dict], error: dict) -> Iterator[str]:
    """An error after the stream started: OpenAI's `error` event, then response.failed."""
    log.info("response %s failed mid-stream: %s", prep.id, error.get("message"))
    yield ev("error", code=error.get("code"), message=error.get("message") or "error",
             param=responses_param(error.get("param")))
    code = "server_error" if error.get("type") == "server_error" or not error.get("param") else "invalid_prompt"
    yield ev("response.failed", response=response_object(prep, "failed", output,
                                                         error={"code": code, "message": error.get("message") or ""}))


