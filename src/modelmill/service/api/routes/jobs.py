"""/v1/fine_tuning/jobs: create, list, retrieve, cancel, pause, resume, events, checkpoints; all in the
caller's project (another project's job is a 404, exactly like a missing one)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request
from starlette.concurrency import run_in_threadpool

from modelmill import errors
from modelmill.settings import Settings
from modelmill.service.jobs import eval_reports as job_evals
from modelmill.service.api import deps
from modelmill.service.api.query_params import query_maps
from modelmill.service.jobs import requests as job_requests
from modelmill.service.jobs.requests import create_job
from modelmill.service.schemas.jobs import CheckpointList, CreateJobRequest, EventList, JobList, JobObject
from modelmill.service.store import Store

router = APIRouter(prefix="/fine_tuning/jobs", tags=["fine-tuning"])


def _job(job, settings: Settings, store: Store) -> dict:
    return JobObject.of(job, settings.owner, job_evals.eval_id_of(store, job)).model_dump()


@router.post("")
async def create(body: CreateJobRequest, request: Request) -> dict:
    """An agentic job's MCP servers are started here to list their tools (up to a minute of sandboxed
    work): that runs on the graders' executor (service/core/limits.py), capped per project and in all
    like graders/run, and not in the request thread pool every other route needs. A request that
    cannot get a slot within MCP_QUEUE_WAIT_SECONDS, or finds its project's queue full, is a 429."""
    store, settings, project = deps.store(request), deps.settings(request), deps.project(request)

    def create_and_show() -> dict:
        return _job(create_job(store, settings, body, project_id=project), settings, store)

    if job_requests.environment_of(body) is None \
            or not await run_in_threadpool(job_requests.starts_mcp_servers, body, settings):
        return await run_in_threadpool(create_and_show)
    try:
        return await deps.grader_executor(request).run(project, create_and_show, request=request,
                                                       queue_timeout=job_requests.MCP_QUEUE_WAIT_SECONDS)
    except errors.RateLimitError as e:  # the executor's 429, naming the field that asked for the servers
        raise errors.RateLimitError(f"{job_requests.ENVIRONMENT_PARAM}: its MCP servers were not started: "
                                    f"{e.message}", retry_after=int(e.headers["Retry-After"]),
                                    param=job_requests.ENVIRONMENT_PARAM) from None


@router.get("")
@query_maps("metadata")
def list_jobs(request: Request, after: str | None = None, limit: int = Query(20, ge=1, le=10_000),
              store: Store = Depends(deps.get_store), settings: Settings = Depends(deps.get_settings),
              project: str = Depends(deps.get_project)) -> dict:
    page = store.jobs.list(after=after, limit=limit, metadata=_metadata_filter(request), project_id=project)
    return JobList(data=[JobObject.of(j, settings.owner, job_evals.eval_id_of(store, j)) for j in page.items],
                   has_more=page.has_more).model_dump()


@router.get("/{job_id}")
def retrieve(job_id: str, store: Store = Depends(deps.get_store), settings: Settings = Depends(deps.get_settings),
             project: str = Depends(deps.get_project)) -> dict:
    return _job(store.jobs.get(job_id, project_id=project), settings, store)


def _job_action(action: str):
    """POST /{job_id}/<action>: store.jobs.<action> (cancel, pause, resume), then the job as it now is."""
    def route(job_id: str, store: Store = Depends(deps.get_store), settings: Settings = Depends(deps.get_settings),
              project: str = Depends(deps.get_project)) -> dict:
        return _job(getattr(store.jobs, action)(job_id, project_id=project), settings, store)

    route.__name__ = route.__qualname__ = action  # the OpenAPI operation id, as a plain `def cancel` would give
    return router.post(f"/{{job_id}}/{action}")(route)


cancel, pause, resume = (_job_action(action) for action in ("cancel", "pause", "resume"))


@router.get("/{job_id}/events")
def events(job_id: str, after: str | None = None, limit: int = Query(20, ge=1, le=10_000),
           store: Store = Depends(deps.get_store), project: str = Depends(deps.get_project)) -> dict:
    store.jobs.get(job_id, project_id=project)
    return EventList.of(store.events.list(job_id, after=after, limit=limit)).model_dump()


@router.get("/{job_id}/checkpoints")
def checkpoints(job_id: str, after: str | None = None, limit: int = Query(10, ge=1, le=10_000),
                store: Store = Depends(deps.get_store), project: str = Depends(deps.get_project)) -> dict:
    store.jobs.get(job_id, project_id=project)
    return CheckpointList.of(store.checkpoints.list(job_id, after=after, limit=limit)).model_dump()


def _metadata_filter(request: Request) -> dict[str, str]:
    """metadata[key]=value query parameters (how the openai SDK sends `metadata={...}`)."""
    out = {}
    for name, value in request.query_params.multi_items():
        if name == "metadata":  # OpenAI's metadata=null (jobs without metadata): not served, so refused
            raise errors.InvalidRequestError("metadata must be sent as metadata[key]=value; ModelMill does not "
                                             "filter for jobs without metadata (metadata=null)", param="metadata")
        if name.startswith("metadata[") and name.endswith("]"):
            key = name[len("metadata["):-1]
            if not key:
                raise errors.InvalidRequestError("metadata filter needs a key: metadata[key]=value", param="metadata")
            out[key] = value
    return out
