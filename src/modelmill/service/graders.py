"""graders/run and graders/validate: the wire request -> ml.graders -> OpenAI's response.

Which graders the two endpoints accept at the top level follows OpenAI's RunGraderRequest and
ValidateGraderRequest: string_check, text_similarity, python, score_model and multi. A
label_model grader yields a pass/fail label rather than a reward, so OpenAI allows it only
inside a multi grader there (and in evals); a top-level one is a 400 on `grader.type`.

Grading blocks (torch judges, sandboxed python), so callers run these off the event loop.
"""

from __future__ import annotations

from typing import Any, Callable

from modelmill import errors
from modelmill.settings import Settings
from modelmill.service.schemas.graders import RunGraderResponse, ValidateGraderResponse
from modelmill.service.store import Store

# Top-level grader types of OpenAI's RunGraderRequest / ValidateGraderRequest.
TOP_LEVEL_TYPES = ("string_check", "text_similarity", "python", "score_model", "multi")


def build_context(settings: Settings, store: Store, get_sampler: Callable[[], Any], *,
                  project_id: str | None = None):
    """The GraderContext the API grades with: the service judge (own models + MODELMILL_JUDGES
    endpoints) and the engine's default sandbox and embedder. project_id: the project whose
    models the judge may use (its own and those shared with it; None: every model)."""
    from modelmill.ml.graders import GraderContext
    from modelmill.service.judge import ServiceJudge

    return GraderContext(judge=ServiceJudge(settings, store, get_sampler, project_id=project_id))


def validate(grader: dict) -> dict:
    """ValidateGraderResponse: the grader, normalised. InvalidRequestError names the bad field."""
    return ValidateGraderResponse(grader=validate_top_level(grader)).model_dump()


def run(context, grader: dict, model_sample: str, item: dict | None) -> dict:
    """RunGraderResponse for one sample. Grading failures are reported in metadata.errors
    (OpenAI does the same); only a malformed grader is an error response."""
    from modelmill.ml.graders import grade

    result = grade(validate_top_level(grader), model_sample, item or {}, context=context)
    return RunGraderResponse.model_validate(result.to_run_grader_response()).model_dump()


def validate_top_level(grader: dict) -> dict:
    """A grader that may stand at the top of graders/run or an RFT job, normalised; the
    InvalidRequestError's param is the field path under "grader"."""
    from modelmill.ml.graders import validate_grader

    if grader.get("type") == "label_model":
        raise errors.InvalidRequestError(
            "A label_model grader is allowed here only inside a multi grader; the top-level grader must be one "
            f"of {', '.join(TOP_LEVEL_TYPES)}", param="grader.type", code="invalid_value")
    return validate_grader(grader)
