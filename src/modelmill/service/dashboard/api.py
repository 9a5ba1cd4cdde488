"""/dashboard/api: the JSON the dashboard's pages poll, beyond what /v1 already serves.

Same auth as /v1 (a bearer key, or the dashboard's session cookie), and the same scoping: only
the key's project's jobs, files and models. Plain `def` handlers: FastAPI runs them in its
threadpool (file reports tokenize).
"""

from __future__ import annotations

import time
from typing import Literal

from fastapi import APIRouter, Depends, Query, Request

from modelmill.settings import Settings
from modelmill.service.models import registry as model_registry
from modelmill.service.api import deps
from modelmill.service.dashboard import jobs_view, state
from modelmill.service.schemas.jobs import JobObject
from modelmill.service.store import Store

router = APIRouter(prefix="/dashboard/api", tags=["dashboard"], dependencies=[Depends(deps.authenticated)])


@router.get("/jobs")
def jobs(request: Request, limit: int = Query(100, ge=1, le=1000), store: Store = Depends(deps.get_store),
         project: str = Depends(deps.get_project)) -> dict:
    """The jobs table: newest first, with progress, elapsed seconds and tokens (estimated while running)."""
    reports, now = state.file_reports(request), time.time()
    page = store.jobs.list(limit=limit, project_id=project)
    for job in page.items:
        if job.status == "running" and job.trained_tokens is None:
            state.warmer(request).warm(job.training_file)  # for the token estimate on the next poll
    rows = [jobs_view.job_row(j, now, reports.tokens_per_epoch(j.training_file)) for j in page.items]
    return {"object": "list", "data": rows, "has_more": page.has_more, "now": now}


@router.get("/jobs/{job_id}")
def job_detail(job_id: str, request: Request, store: Store = Depends(deps.get_store),
               settings: Settings = Depends(deps.get_settings), project: str = Depends(deps.get_project)) -> dict:
    """Everything the job page shows: the job, its metric series and charts, checkpoints (best
    marked), the events log, resolved hyperparameters, the newest before/after eval table and (agentic
    RFT) the sampled trajectory of each eval step."""
    job = store.jobs.get(job_id, project_id=project)
    reports = state.file_reports(request)
    if job.trained_tokens is None and job.status == "running":
        state.warmer(request).warm(job.training_file)  # for the token estimate on the next poll
    events = store.events.all_for(job_id)
    checkpoints, best_by = jobs_view.checkpoint_rows(job.method_type, store.checkpoints.all_for(job_id))
    return {
        "job": JobObject.of(job, settings.owner).model_dump(),
        "row": jobs_view.job_row(job, time.time(), reports.tokens_per_epoch(job.training_file)),
        "base_model": job.base_model,
        "hyperparameters": job.hyperparameters, "hyperparameters_resolved": job.hyperparameters_resolved,
        "metrics": jobs_view.metric_series(events),
        "checkpoints": checkpoints, "best_by": best_by,
        "events": jobs_view.event_rows(events),
        "eval_comparison": jobs_view.eval_comparison(events),
        "trajectories": jobs_view.trajectories(events),
    }


@router.get("/files/{file_id}/report")
def file_report(file_id: str, request: Request,
                method: Literal["supervised", "preference", "reinforcement", "dpo"] | None = None,
                model: str | None = None, project: str = Depends(deps.get_project)) -> dict:
    """ml.data's validation report plus token-length statistics (cached per file)."""
    return state.file_reports(request).get(file_id, method=method, model=model, project_id=project)


@router.get("/models")
def models(store: Store = Depends(deps.get_store), settings: Settings = Depends(deps.get_settings),
           project: str = Depends(deps.get_project)) -> dict:
    """Base, fine-tuned and checkpoint models with their kind (/v1/models has no room for it)."""
    served = model_registry.list_served(store, settings, project_id=project)
    return {"object": "list", "data": [model_row(m, settings) for m in served]}


def model_row(m: model_registry.ServedModel, settings: Settings) -> dict:
    ready = m.kind != "base" or (settings.models_dir / m.id / "config.json").is_file()
    return {"id": m.id, "kind": m.kind, "base_model": m.base_model, "created": m.created, "owned_by": m.owned_by,
            "job_id": m.job_id, "ready": ready}
