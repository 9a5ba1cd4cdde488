"""/v1/responses: create (JSON or a typed event stream), read, delete, and a response's input items.

Everything is scoped to the caller's project: another project's response (read, deleted, or
named as previous_response_id) is a 404 exactly like a missing one.
"""

from __future__ import annotations

import functools
import threading
from typing import Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from modelmill.service.chat import completions as chat

from modelmill.service.responses import requests as responses

from modelmill.service.responses import runner as responses_run
from modelmill.service.api import deps
from modelmill.service.api.disconnect import run_until_disconnect, stream_until_disconnect
from modelmill.service.schemas.responses import CreateResponseRequest
from modelmill.service.store import Store

router = APIRouter(prefix="/responses", tags=["responses"])


@router.post("", response_model=None)
async def create_response(body: CreateResponseRequest, request: Request):
    """Generation runs in the chat executor and stops when the client goes away, as chat
    completions do (service/api/disconnect.py)."""
    settings, store, project = deps.settings(request), deps.store(request), deps.project(request)
    prep = await run_in_threadpool(functools.partial(responses.prepare, store, settings, body, project_id=project))
    sampler = await run_in_threadpool(deps.sampler, request)
    with responses.chat_errors():  # named as the Responses request names them
        chat.check_text_size(prep.chat, settings)  # the conversation (history included) within the size bounds
        chat.check_token_limits(prep.chat, settings)  # past the server's limits: a 400 before it queues
        chat.sampling_params(prep.chat, settings)  # a bad parameter is a 400 before any streaming starts
    executor, cancel = deps.chat_executor(request), threading.Event()
    if body.stream:
        events = functools.partial(responses_run.stream, sampler, settings, store, prep, project, cancel=cancel)
        return StreamingResponse(stream_until_disconnect(executor, project, cancel, events),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    create = functools.partial(responses_run.create, sampler, settings, store, prep, project, cancel=cancel)
    return await run_until_disconnect(executor, project, request, cancel, create)


@router.get("/{response_id}")
def get_response(response_id: str, stream: bool | None = None, include: list[str] | None = Query(None),
                 include_sdk: list[str] | None = Query(None, alias="include[]"),  # the SDK's list spelling
                 starting_after: int | None = None,
                 include_obfuscation: bool | None = None,  # only shapes a stream, which is refused: nothing to do
                 store: Store = Depends(deps.get_store), project: str = Depends(deps.get_project)) -> dict:
    record = store.responses.get(response_id, project_id=project)
    responses.refuse_retrieve_options(stream=stream, include=(include or []) + (include_sdk or []),
                                      starting_after=starting_after)
    return record.response


@router.delete("/{response_id}")
def delete_response(response_id: str, store: Store = Depends(deps.get_store),
                    project: str = Depends(deps.get_project)) -> dict:
    store.responses.delete(response_id, project_id=project)
    return {"id": response_id, "object": "response.deleted", "deleted": True}


@router.get("/{response_id}/input_items")
def list_input_items(response_id: str, after: str | None = None, limit: int = Query(20, ge=1, le=100),
                     order: Literal["asc", "desc"] = "desc", include: list[str] | None = Query(None),
                     include_sdk: list[str] | None = Query(None, alias="include[]"),
                     store: Store = Depends(deps.get_store),
                     project: str = Depends(deps.get_project)) -> dict:
    record = store.responses.get(response_id, project_id=project)
    responses.refuse_retrieve_options(stream=None, include=(include or []) + (include_sdk or []))
    return responses.input_items_page(record, after=after, limit=limit, order=order)
