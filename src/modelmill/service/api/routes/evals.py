"""/v1/evals: evals, their runs and output items; plus the HTML report each run's report_url
points to (/evals/{eval_id}/runs/{run_id}, outside /v1, for browsers).

Request bodies are JSON objects, described in /openapi.json by their wire models
(schemas/eval_requests.py) and checked field by field by service/evals/requests.py. Plain `def`
handlers: FastAPI runs them in its threadpool, so reading a data source or rendering a report never
blocks the event loop. Everything is scoped to the caller's project:
another project's eval, run or output item is a 404, exactly like a missing one.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Body, Depends, Query, Request
from fastapi.responses import HTMLResponse

from modelmill.settings import Settings
from modelmill.service.api import deps
from modelmill.service.evals import report, requests
from modelmill.service.schemas.eval_requests import CreateEvalBody, CreateEvalRunBody, UpdateEvalBody
from modelmill.service.schemas.evals import (EvalDeleted, EvalList, EvalObject, EvalRunDeleted, EvalRunList,
                                             EvalRunObject, OutputItemList, OutputItemObject)
from modelmill.service.store import Store

router = APIRouter(prefix="/evals", tags=["evals"])
report_router = APIRouter(tags=["evals"])

Order = Literal["asc", "desc"]


def _base(request: Request) -> str:
    return str(request.base_url)


@router.post("")
def create_eval(body: CreateEvalBody = Body(...), store: Store = Depends(deps.get_store),
                settings: Settings = Depends(deps.get_settings), project: str = Depends(deps.get_project)) -> dict:
    return EvalObject.of(requests.create_eval(store, body.root, project_id=project, settings=settings)).model_dump()


@router.get("")
def list_evals(after: str | None = None, limit: int = Query(20, ge=1, le=10_000), order: Order = "asc",
               order_by: Literal["created_at", "updated_at"] = "created_at", store: Store = Depends(deps.get_store),
               project: str = Depends(deps.get_project)) -> dict:
    page = store.evals.list(after=after, limit=limit, order=order, order_by=order_by, project_id=project)
    return EvalList.of(page).model_dump()


@router.get("/{eval_id}")
def retrieve_eval(eval_id: str, store: Store = Depends(deps.get_store),
                  project: str = Depends(deps.get_project)) -> dict:
    return EvalObject.of(store.evals.get(eval_id, project_id=project)).model_dump()


@router.post("/{eval_id}")
def update_eval(eval_id: str, body: UpdateEvalBody = Body(...), store: Store = Depends(deps.get_store),
                project: str = Depends(deps.get_project)) -> dict:
    return EvalObject.of(requests.update_eval(store, eval_id, body.root, project_id=project)).model_dump()


@router.delete("/{eval_id}")
def delete_eval(eval_id: str, store: Store = Depends(deps.get_store), project: str = Depends(deps.get_project)) -> dict:
    store.evals.delete(eval_id, project_id=project)
    return EvalDeleted(eval_id=eval_id).model_dump()


@router.post("/{eval_id}/runs")
def create_run(eval_id: str, request: Request, body: CreateEvalRunBody = Body(...),
               store: Store = Depends(deps.get_store), settings: Settings = Depends(deps.get_settings),
               project: str = Depends(deps.get_project)) -> dict:
    run = requests.create_run(store, settings, eval_id, body.root, project_id=project)
    return EvalRunObject.of(run, _base(request)).model_dump()


@router.get("/{eval_id}/runs")
def list_runs(eval_id: str, request: Request, after: str | None = None, limit: int = Query(20, ge=1, le=10_000),
              order: Order = "asc",
              status: Literal["queued", "in_progress", "completed", "canceled", "failed"] | None = None,
              store: Store = Depends(deps.get_store), project: str = Depends(deps.get_project)) -> dict:
    page = store.evals.list_runs(eval_id, after=after, limit=limit, order=order, status=status, project_id=project)
    return EvalRunList.of(page, _base(request)).model_dump()


@router.get("/{eval_id}/runs/{run_id}")
def retrieve_run(eval_id: str, run_id: str, request: Request, store: Store = Depends(deps.get_store),
                 project: str = Depends(deps.get_project)) -> dict:
    return EvalRunObject.of(store.evals.get_run(eval_id, run_id, project_id=project), _base(request)).model_dump()


@router.post("/{eval_id}/runs/{run_id}")
@router.post("/{eval_id}/runs/{run_id}/cancel")  # the openai SDK's path; the spec's is the run's own
def cancel_run(eval_id: str, run_id: str, request: Request, store: Store = Depends(deps.get_store),
               project: str = Depends(deps.get_project)) -> dict:
    return EvalRunObject.of(store.evals.cancel_run(eval_id, run_id, project_id=project), _base(request)).model_dump()


@router.delete("/{eval_id}/runs/{run_id}")
def delete_run(eval_id: str, run_id: str, store: Store = Depends(deps.get_store),
               project: str = Depends(deps.get_project)) -> dict:
    store.evals.delete_run(eval_id, run_id, project_id=project)
    return EvalRunDeleted(run_id=run_id).model_dump()


@router.get("/{eval_id}/runs/{run_id}/output_items")
def list_output_items(eval_id: str, run_id: str, after: str | None = None, limit: int = Query(20, ge=1, le=10_000),
                      order: Order = "asc", status: Literal["pass", "fail"] | None = None,
                      store: Store = Depends(deps.get_store), project: str = Depends(deps.get_project)) -> dict:
    page = store.evals.list_items(eval_id, run_id, after=after, limit=limit, order=order, status=status,
                                  project_id=project)
    return OutputItemList.of(page).model_dump()


@router.get("/{eval_id}/runs/{run_id}/output_items/{output_item_id}")
def retrieve_output_item(eval_id: str, run_id: str, output_item_id: str, store: Store = Depends(deps.get_store),
                         project: str = Depends(deps.get_project)) -> dict:
    return OutputItemObject.of(store.evals.get_item(eval_id, run_id, output_item_id, project_id=project)).model_dump()


@report_router.get("/evals/{eval_id}/runs/{run_id}", response_class=HTMLResponse)
def run_report(eval_id: str, run_id: str, request: Request, store: Store = Depends(deps.get_store),
               project: str = Depends(deps.get_project)):
    return report.render(request, store, eval_id, run_id, project_id=project)
