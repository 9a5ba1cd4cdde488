"""Chat completions: an OpenAI request -> ml.sampling -> an OpenAI completion or SSE chunks.

Generation is blocking (torch): the route runs complete() and stream_sse() (a plain iterator) in
the app's chat executor (service/core/limits.py, off the request thread pool, capped per project), and
sets their `cancel` event when the client disconnects (service/api/disconnect.py), which ends the
generation at its next decoding step.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Iterator

from modelmill import errors
from modelmill.settings import Settings
from modelmill.service.core import metrics
from modelmill.service.models import registry as model_registry
from modelmill.service.store.ids import new_id
from modelmill.service.models.registry import ServedModel
from modelmill.service.schemas.chat import (ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, Choice,
                                            ChoiceLogprobs, ChunkChoice, Delta, ResponseMessage, TokenLogprob,
                                            ToolCall, ToolCallChunk, ToolCallChunkFunction, ToolCallFunction, Usage)

log = logging.getLogger(__name__)

SYSTEM_FINGERPRINT = "fp_modelmill"
FINISH_REASONS = ("stop", "length", "tool_calls")


def check_token_limits(req: ChatCompletionRequest, settings: Settings) -> None:
    """The deployment's bounds on generated tokens (docs/limits.md): max_tokens (or
    max_completion_tokens) per choice at most settings.max_completion_tokens, and n x that budget
    per request at most settings.max_request_tokens (an omitted max_tokens counts as the default
    budget). Past either, a 400 naming the limit, before a model is loaded or anything queued."""
    from modelmill.ml.types import DEFAULT_MAX_TOKENS  # no torch import

    param = "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
    asked = req.max_completion_tokens or req.max_tokens
    if asked is not None and asked > settings.max_completion_tokens:
        raise errors.InvalidRequestError(
            f"{param} is {asked}; this server allows at most {settings.max_completion_tokens} completion tokens "
            "per choice (MODELMILL_MAX_COMPLETION_TOKENS)", param=param, code="limit_exceeded")
    budget = asked or min(DEFAULT_MAX_TOKENS, settings.max_completion_tokens)
    if req.n * budget > settings.max_request_tokens:
        raise errors.InvalidRequestError(
            f"n x {param} is {req.n} x {budget} = {req.n * budget} completion tokens; this server allows at most "
            f"{settings.max_request_tokens} per request (MODELMILL_MAX_REQUEST_TOKENS)", param="n",
            code="limit_exceeded")


def check_text_size(req: ChatCompletionRequest, settings: Settings) -> None:
    """The raw-size bound (docs/security.md): the text of all messages (contents, and tool calls'
    arguments) at most settings.max_chat_chars characters in all. Checked before the model is
    resolved or anything tokenised (a 20 MB message took 45 s to tokenise before its 400)."""
    sizes = [_message_chars(m) for m in req.messages]
    if sum(sizes) > settings.max_chat_chars:
        biggest = max(range(len(sizes)), key=sizes.__getitem__)
        raise errors.InvalidRequestError(
            f"The messages hold {sum(sizes)} characters of text (messages[{biggest}] alone {sizes[biggest]}); this "
            f"server allows at most {settings.max_chat_chars} per request (MODELMILL_MAX_CHAT_CHARS)",
            param=f"messages[{biggest}].content", code="limit_exceeded")


def _message_chars(message) -> int:
    content = message.content
    if isinstance(content, list):  # content parts: count each part's text
        n = sum(len(p.get("text") or "") if isinstance(p.get("text"), str) else 0 for p in content)
    else:
        n = len(content or "")
    for call in message.tool_calls or []:
        arguments = (call.get("function") or {}).get("arguments") if isinstance(call, dict) else None
        n += len(arguments) if isinstance(arguments, str) else 0
    return n


def sampling_params(req: ChatCompletionRequest, settings: Settings | None = None):
    """The request's SamplingParams; with `settings`, an omitted max_tokens is also capped at
    settings.max_completion_tokens (when that is below the sampler's default budget)."""
    from modelmill.ml import constraints
    from modelmill.ml.sampling import DEFAULT_MAX_TOKENS, SamplingParams

    # Tool schemas a grammar will enforce (strict tools, a forced call's tools) must compile: else a 400
    # naming tools[i].function.parameters, here, before a stream starts.
    constraints.check_tools(req.tool_dicts(), req.tool_choice)
    max_tokens = req.max_completion_tokens or req.max_tokens
    if max_tokens is None and settings is not None and settings.max_completion_tokens < DEFAULT_MAX_TOKENS:
        max_tokens = settings.max_completion_tokens

    return SamplingParams(
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        max_tokens=max_tokens, n=req.n, seed=req.seed, stop=req.stop, response_format=req.response_format,
        logprobs=bool(req.logprobs), top_logprobs=req.top_logprobs, logit_bias=req.logit_bias,
        presence_penalty=req.presence_penalty or 0.0, frequency_penalty=req.frequency_penalty or 0.0)


def complete(sampler, settings: Settings, served: ServedModel, req: ChatCompletionRequest,
             cancel: threading.Event | None = None) -> dict:
    """A whole chat.completion object (blocking). Setting `cancel` (the client went away) ends the
    generation at its next decoding step."""
    started = time.monotonic()
    ref = model_registry.model_ref(settings, served)
    result = sampler.generate(ref, req.message_dicts(), req.tool_dicts(), sampling_params(req, settings),
                              tool_choice=req.tool_choice, cancel=cancel)
    metrics.chat_done(False, time.monotonic() - started, result.prompt_tokens, result.completion_tokens)
    choices = [Choice(index=c.index, finish_reason=_finish(c.finish_reason), logprobs=_logprobs(c.logprobs),
                      message=ResponseMessage(content=c.content,
                                              tool_calls=_tool_calls(_parallel(req, c.tool_calls))))
               for c in result.choices]
    usage = Usage(prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens,
                  total_tokens=result.prompt_tokens + result.completion_tokens)
    return ChatCompletion(id=new_id("chatcmpl-"), created=int(time.time()), model=req.model, choices=choices,
                          usage=usage, system_fingerprint=SYSTEM_FINGERPRINT).model_dump()


def stream_sse(sampler, settings: Settings, served: ServedModel, req: ChatCompletionRequest,
               cancel: threading.Event | None = None) -> Iterator[str]:
    """Server-sent events in OpenAI's chunk format, ending with `data: [DONE]`.

    Each choice opens with a role chunk, then content deltas, then (if the model called
    tools) one tool_calls chunk, then a chunk with its finish_reason. With
    stream_options.include_usage a last chunk with empty choices carries the usage.
    An error after the stream started is sent as an `{"error": ...}` event.
    """
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    chunk_id, created, started = new_id("chatcmpl-"), int(time.time()), time.monotonic()

    def event(choices: list[ChunkChoice], usage: Usage | None = None) -> str:
        chunk = ChatCompletionChunk(id=chunk_id, created=created, model=req.model,
                                    system_fingerprint=SYSTEM_FINGERPRINT, choices=choices, usage=usage)
        return "data: " + json.dumps(chunk.model_dump(exclude=None if include_usage else {"usage"})) + "\n\n"

    try:
        ref = model_registry.model_ref(settings, served)
        opened: set[int] = set()
        usage = None
        for ev in sampler.stream(ref, req.message_dicts(), req.tool_dicts(), sampling_params(req, settings),
                                 tool_choice=req.tool_choice, cancel=cancel):
            if ev.index not in opened:
                opened.add(ev.index)
                yield event([ChunkChoice(index=ev.index, delta=Delta(role="assistant", content=""))])
            # With logprobs, a content chunk carries its tokens' entries; entries of text that is not
            # sent as content (a tool call's) ride on the event's first chunk below.
            lps = _logprobs(ev.logprobs or []) if req.logprobs else None
            if ev.delta:
                yield event([ChunkChoice(index=ev.index, delta=Delta(content=ev.delta), logprobs=lps)])
                lps = None
            if ev.tool_calls:
                calls = [ToolCallChunk(index=i, id=tc["id"], type="function", function=ToolCallChunkFunction(
                    name=tc["function"]["name"], arguments=tc["function"]["arguments"]))
                    for i, tc in enumerate(_parallel(req, ev.tool_calls))]
                yield event([ChunkChoice(index=ev.index, delta=Delta(tool_calls=calls), logprobs=lps)])
                lps = None
            if ev.finish_reason:
                yield event([ChunkChoice(index=ev.index, delta=Delta(), finish_reason=_finish(ev.finish_reason),
                                         logprobs=lps if lps and lps.content else None)])
            if ev.usage:
                usage = Usage(**{k: int(ev.usage[k]) for k in ("prompt_tokens", "completion_tokens", "total_tokens")})
                metrics.chat_done(True, time.monotonic() - started, usage.prompt_tokens, usage.completion_tokens)
        if include_usage and usage is not None:
            yield event([], usage=usage)
    except errors.ModelMillError as e:
        yield "data: " + json.dumps(e.to_dict()) + "\n\n"
    except Exception:  # noqa: BLE001 - the response has started; report the failure in-band
        log.exception("chat stream failed")
        yield "data: " + json.dumps(errors.ModelMillError("Internal error while generating").to_dict()) + "\n\n"
    yield "data: [DONE]\n\n"


def _logprobs(entries: list[dict] | None) -> ChoiceLogprobs | None:
    return None if entries is None else ChoiceLogprobs(content=[TokenLogprob(**e) for e in entries])


def _parallel(req: ChatCompletionRequest, calls: list[dict] | None) -> list[dict] | None:
    """parallel_tool_calls false: at most one call, the first the model made (docs/api-parameters.md)."""
    return calls[:1] if calls and req.parallel_tool_calls is False else calls


def _finish(reason: str | None) -> str:
    return reason if reason in FINISH_REASONS else "stop"


def _tool_calls(calls: list[dict] | None) -> list[ToolCall] | None:
    if not calls:
        return None
    return [ToolCall(id=tc["id"], function=ToolCallFunction(name=tc["function"]["name"],
                                                            arguments=tc["function"]["arguments"]))
            for tc in calls]
