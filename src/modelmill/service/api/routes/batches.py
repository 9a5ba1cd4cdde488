"""/v1/batches: create (the input file checked line by line), list, retrieve and cancel, all in the
caller's project (another project's batch is a 404, exactly like a missing one).

Plain `def` handlers: FastAPI runs them in its threadpool, so reading and checking an input file
(or writing a cancelled batch's files) never blocks the event loop.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query

from modelmill.settings import Settings
from modelmill.service.batches import requests as batches
from modelmill.service.api import deps
from modelmill.service.schemas.batches import BatchList, BatchObject, CreateBatchRequest
from modelmill.service.store import Store

router = APIRouter(prefix="/batches", tags=["batches"])


@router.post("")
def create_batch(body: CreateBatchRequest, store: Store = Depends(deps.get_store),
                 settings: Settings = Depends(deps.get_settings), project: str = Depends(deps.get_project)) -> dict:
    return BatchObject.of(batches.create(store, settings, body, project_id=project)).model_dump()


@router.get("")
def list_batches(after: str | None = None, limit: int = Query(20, ge=1, le=100), store: Store = Depends(deps.get_store),
                 project: str = Depends(deps.get_project)) -> dict:
    return BatchList.of(store.batches.list(project_id=project, after=after, limit=limit)).model_dump()


@router.get("/{batch_id}")
def retrieve_batch(batch_id: str, store: Store = Depends(deps.get_store),
                   project: str = Depends(deps.get_project)) -> dict:
    return BatchObject.of(store.batches.get(batch_id, project_id=project)).model_dump()


@router.post("/{batch_id}/cancel")
def cancel_batch(batch_id: str, store: Store = Depends(deps.get_store), settings: Settings = Depends(deps.get_settings),
                 project: str = Depends(deps.get_project)) -> dict:
    return BatchObject.of(batches.cancel(store, settings, batch_id, project_id=project)).model_dump()
