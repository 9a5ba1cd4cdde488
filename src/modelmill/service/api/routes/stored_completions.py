"""Stored chat completions (made with `store: true`): list, read, messages, update metadata, delete.

Scoped to the caller's project: another project's completion is a 404 exactly like a missing one.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Body, Depends, Query, Request

from modelmill.service.chat import stored_completions
from modelmill.service.api import deps
from modelmill.service.api.query_params import query_maps
from modelmill.service.store import Store

router = APIRouter(prefix="/chat/completions", tags=["chat"])

Order = Literal["asc", "desc"]


@router.get("")
@query_maps("metadata")
def list_stored_completions(request: Request, model: str | None = None, after: str | None = None,
                            limit: int = Query(20, ge=1, le=100), order: Order = "asc",
                            store: Store = Depends(deps.get_store), project: str = Depends(deps.get_project)) -> dict:
    metadata = stored_completions.metadata_filter(dict(request.query_params))
    page = store.stored_completions.list(project_id=project, model=model, metadata=metadata, after=after,
                                         limit=limit, order=order)
    return stored_completions.list_object(page)


@router.get("/{completion_id}")
def get_stored_completion(completion_id: str, store: Store = Depends(deps.get_store),
                          project: str = Depends(deps.get_project)) -> dict:
    return stored_completions.completion_object(store.stored_completions.get(completion_id, project_id=project))


@router.post("/{completion_id}")
def update_stored_completion(completion_id: str, body: dict[str, Any] = Body(...),
                             store: Store = Depends(deps.get_store),
                             project: str = Depends(deps.get_project)) -> dict:
    return stored_completions.update_metadata(store, completion_id, body, project_id=project)


@router.delete("/{completion_id}")
def delete_stored_completion(completion_id: str, store: Store = Depends(deps.get_store),
                             project: str = Depends(deps.get_project)) -> dict:
    store.stored_completions.delete(completion_id, project_id=project)
    return {"object": "chat.completion.deleted", "id": completion_id, "deleted": True}


@router.get("/{completion_id}/messages")
def list_stored_messages(completion_id: str, after: str | None = None, limit: int = Query(20, ge=1, le=100),
                         order: Order = "asc", store: Store = Depends(deps.get_store),
                         project: str = Depends(deps.get_project)) -> dict:
    record = store.stored_completions.get(completion_id, project_id=project)
    return stored_completions.messages_page(record, after=after, limit=limit, order=order)
