"""/v1/fine_tuning/alpha/graders/{run,validate}.

graders/run grades in the app's grader executor (service/core/limits.py), not in FastAPI's request
thread pool: a slow grader (torch judge, sandboxed python) must not hold the threads every other
route needs. The executor caps how many run at once, in all and per project, queues the rest in
order and answers 429 past the queue bound. validate only compiles, so it stays a plain `def`.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from modelmill.service.graders import requests as graders
from modelmill.service.api import deps
from modelmill.service.schemas.graders import RunGraderRequest, ValidateGraderRequest

router = APIRouter(prefix="/fine_tuning/alpha/graders", tags=["graders"])


@router.post("/run")
async def run_grader(body: RunGraderRequest, request: Request) -> dict:
    # The router's auth dependency has run; the first context of a project imports ml.graders: not
    # on the event loop.
    context = await run_in_threadpool(deps.grader_context, request)
    # A malformed grader or a judge model nobody serves is a 400 now, before it queues for a slot.
    await run_in_threadpool(graders.validate, body.grader, _judges(request))
    return await deps.grader_executor(request).run(deps.project(request), graders.run, context, body.grader,
                                                   body.model_sample, body.item, request=request)


@router.post("/validate")
def validate_grader(body: ValidateGraderRequest, request: Request) -> dict:
    return graders.validate(body.grader, _judges(request))


def _judges(request: Request):
    return graders.judge_checker(deps.settings(request), deps.store(request), deps.project(request))
