"""Chat completions: an OpenAI request -> ml.sampling -> an OpenAI completion or SSE chunks.

Generation is blocking (torch), so callers run complete() in a threadpool and hand
stream_sse() (a plain iterator) to a StreamingResponse, which iterates it off the event loop.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Iterator

from modelmill import errors
from modelmill.settings import Settings
from modelmill.service import model_registry
from modelmill.service.ids import new_id
from modelmill.service.model_registry import ServedModel
from modelmill.service.schemas.chat import (ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, Choice,
                                            ChunkChoice, Delta, ResponseMessage, ToolCall, ToolCallChunk,
                                            ToolCallChunkFunction, ToolCallFunction, Usage)

log = logging.getLogger(__name__)

SYSTEM_FINGERPRINT = "fp_modelmill"
FINISH_REASONS = ("stop", "length", "tool_calls")


def sampling_params(req: ChatCompletionRequest):
    from modelmill.ml.sampling import SamplingParams

    return SamplingParams(
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        max_tokens=req.max_completion_tokens or req.max_tokens, n=req.n, seed=req.seed, stop=req.stop)


def complete(sampler, settings: Settings, served: ServedModel, req: ChatCompletionRequest) -> dict:
    """A whole chat.completion object (blocking)."""
    ref = model_registry.model_ref(settings, served)
    result = sampler.generate(ref, req.message_dicts(), req.tool_dicts(), sampling_params(req),
                              tool_choice=req.tool_choice)
    choices = [Choice(index=c.index, finish_reason=_finish(c.finish_reason),
                      message=ResponseMessage(content=c.content, tool_calls=_tool_calls(c.tool_calls)))
               for c in result.choices]
    usage = Usage(prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens,
                  total_tokens=result.prompt_tokens + result.completion_tokens)
    return ChatCompletion(id=new_id("chatcmpl-"), created=int(time.time()), model=req.model, choices=choices,
                          usage=usage, system_fingerprint=SYSTEM_FINGERPRINT).model_dump()


def stream_sse(sampler, settings: Settings, served: ServedModel, req: ChatCompletionRequest) -> Iterator[str]:
    """Server-sent events in OpenAI's chunk format, ending with `data: [DONE]`.

    Each choice opens with a role chunk, then content deltas, then (if the model called
    tools) one tool_calls chunk, then a chunk with its finish_reason. With
    stream_options.include_usage a last chunk with empty choices carries the usage.
    An error after the stream started is sent as an `{"error": ...}` event.
    """
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    chunk_id, created = new_id("chatcmpl-"), int(time.time())

    def event(choices: list[ChunkChoice], usage: Usage | None = None) -> str:
        chunk = ChatCompletionChunk(id=chunk_id, created=created, model=req.model,
                                    system_fingerprint=SYSTEM_FINGERPRINT, choices=choices, usage=usage)
        return "data: " + json.dumps(chunk.model_dump(exclude=None if include_usage else {"usage"})) + "\n\n"

    try:
        ref = model_registry.model_ref(settings, served)
        opened: set[int] = set()
        usage = None
        for ev in sampler.stream(ref, req.message_dicts(), req.tool_dicts(), sampling_params(req),
                                 tool_choice=req.tool_choice):
            if ev.index not in opened:
                opened.add(ev.index)
                yield event([ChunkChoice(index=ev.index, delta=Delta(role="assistant", content=""))])
            if ev.delta:
                yield event([ChunkChoice(index=ev.index, delta=Delta(content=ev.delta))])
            if ev.tool_calls:
                calls = [ToolCallChunk(index=i, id=tc["id"], type="function", function=ToolCallChunkFunction(
                    name=tc["function"]["name"], arguments=tc["function"]["arguments"]))
                    for i, tc in enumerate(ev.tool_calls)]
                yield event([ChunkChoice(index=ev.index, delta=Delta(tool_calls=calls))])
            if ev.finish_reason:
                yield event([ChunkChoice(index=ev.index, delta=Delta(), finish_reason=_finish(ev.finish_reason))])
            if ev.usage:
                usage = Usage(**{k: int(ev.usage[k]) for k in ("prompt_tokens", "completion_tokens", "total_tokens")})
        if include_usage and usage is not None:
            yield event([], usage=usage)
    except errors.ModelMillError as e:
        yield "data: " + json.dumps(e.to_dict()) + "\n\n"
    except Exception:  # noqa: BLE001 - the response has started; report the failure in-band
        log.exception("chat stream failed")
        yield "data: " + json.dumps(errors.ModelMillError("Internal error while generating").to_dict()) + "\n\n"
    yield "data: [DONE]\n\n"


def _finish(reason: str | None) -> str:
    return reason if reason in FINISH_REASONS else "stop"


def _tool_calls(calls: list[dict] | None) -> list[ToolCall] | None:
    if not calls:
        return None
    return [ToolCall(id=tc["id"], function=ToolCallFunction(name=tc["function"]["name"],
                                                            arguments=tc["function"]["arguments"]))
            for tc in calls]
