"""/v1/chat/completions for base, fine-tuned and checkpoint models.

Generation and tokenisation run in the app's chat executor (service/core/limits.py), not in FastAPI's
request thread pool, capped per project; a client that disconnects stops its generation within one
decoding step (service/api/disconnect.py).
"""

from __future__ import annotations

import functools
import threading

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from modelmill.service.chat import completions as chat

from modelmill.service.chat import params as chat_params

from modelmill.service.models import registry as model_registry

from modelmill.service.chat import stored_completions
from modelmill.service.api import deps
from modelmill.service.api.disconnect import run_until_disconnect, stream_until_disconnect
from modelmill.service.schemas.chat import ChatCompletionRequest

router = APIRouter(tags=["chat"])


@router.post("/chat/completions", response_model=None)
async def create_chat_completion(body: ChatCompletionRequest, request: Request):
    settings, store, project_id = deps.settings(request), deps.store(request), deps.project(request)
    chat.check_text_size(body, settings)  # before anything is resolved or tokenised
    # OpenAI parameters ModelMill does not honour, and the n / top_logprobs limits (images: check_images below)
    chat_params.check(body, settings, images_later=True)
    chat.check_token_limits(body, settings)  # past the server's token limits: a 400 before a model loads
    served = await run_in_threadpool(functools.partial(model_registry.resolve, store, settings, body.model,
                                                       project_id=project_id))
    await run_in_threadpool(chat_params.check_images, settings, served, body)  # a 400 unless a VLM can read them
    sampler = await run_in_threadpool(deps.sampler, request)
    chat.sampling_params(body, settings)  # a bad parameter is a 400 before any streaming starts
    await run_in_threadpool(chat_params.check_logit_bias, sampler, settings, served, body)  # token ids in vocab
    executor, cancel = deps.chat_executor(request), threading.Event()
    if body.stream:
        chunks = functools.partial(chat.stream_sse, sampler, settings, served, body, cancel=cancel)
        if body.store:  # kept once the stream has ended (service/chat/stored_completions.py)
            chunks = functools.partial(stored_completions.save_stream, store, project_id, body,
                                       functools.partial(chat.stream_sse, sampler, settings, served, cancel=cancel))
        return StreamingResponse(stream_until_disconnect(executor, project_id, cancel, chunks),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    complete = functools.partial(chat.complete, sampler, settings, served, body, cancel=cancel)
    completion = await run_until_disconnect(executor, project_id, request, cancel, complete)
    if body.store:
        await run_in_threadpool(stored_completions.save, store, project_id, body, completion)
    return completion
