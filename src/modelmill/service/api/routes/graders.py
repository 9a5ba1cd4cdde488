"""/v1/fine_tuning/alpha/graders/{run,validate}.

Plain `def` handlers: FastAPI runs them in its threadpool, so grading (torch judges, sandboxed
python graders) never blocks the event loop.
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from modelmill.service import graders
from modelmill.service.api import deps
from modelmill.service.schemas.graders import RunGraderRequest, ValidateGraderRequest

router = APIRouter(prefix="/fine_tuning/alpha/graders", tags=["graders"])


@router.post("/run")
def run_grader(body: RunGraderRequest, request: Request) -> dict:
    return graders.run(deps.grader_context(request), body.grader, body.model_sample, body.item)


@router.post("/validate")
def validate_grader(body: ValidateGraderRequest) -> dict:
    return graders.validate(body.grader)
