"""/v1/chat/completions for base, fine-tuned and checkpoint models."""

from __future__ import annotations

import functools

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from modelmill.service import chat, model_registry
from modelmill.service.api import deps
from modelmill.service.schemas.chat import ChatCompletionRequest

router = APIRouter(tags=["chat"])


@router.post("/chat/completions", response_model=None)
async def create_chat_completion(body: ChatCompletionRequest, request: Request):
    settings, store = deps.settings(request), deps.store(request)
    served = await run_in_threadpool(functools.partial(model_registry.resolve, store, settings, body.model,
                                                       project_id=deps.project(request)))
    sampler = await run_in_threadpool(deps.sampler, request)
    chat.sampling_params(body)  # a bad parameter is a 400 before any streaming starts
    if body.stream:
        return StreamingResponse(chat.stream_sse(sampler, settings, served, body), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return await run_in_threadpool(chat.complete, sampler, settings, served, body)
