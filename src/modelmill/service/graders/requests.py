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
from modelmill.ml.graders import GraderContext, grade, validate_grader
from modelmill.settings import Settings
from modelmill.service.schemas.graders import RunGraderResponse, ValidateGraderResponse
from modelmill.service.store import Store

# Top-level grader types of OpenAI's RunGraderRequest / ValidateGraderRequest, plus ModelMill's
# relative_score_model (ml/graders/relative_judge.py; docs/agentic_rft.md).
TOP_LEVEL_TYPES = ("string_check", "text_similarity", "python", "score_model", "multi", "relative_score_model")


def build_context(settings: Settings, store: Store, get_sampler: Callable[[], Any], *,
                  project_id: str | None = None):
    """The GraderContext the API grades with: the service judge (own models + MODELMILL_JUDGES
    endpoints), the sandbox as settings bound it (sandbox_config) and the engine's default embedder.
    project_id: the project whose models the judge may use (its own and those shared with it; None:
    every model)."""
    from modelmill.service.graders.judge import ServiceJudge

    return GraderContext(judge=ServiceJudge(settings, store, get_sampler, project_id=project_id),
                         sandbox=sandbox_config(settings))


def sandbox_config(settings: Settings):
    """The python-grader sandbox's SandboxConfig: its defaults, bounded as settings say
    (MODELMILL_SANDBOX_BOUND, MODELMILL_SANDBOX_CGROUP)."""
    from modelmill.ml.graders.sandbox import SandboxConfig

    return SandboxConfig(bound=settings.sandbox_bound, cgroup_parent=settings.sandbox_cgroup)


def validate(grader: dict, judges: Callable[[str], bool] | None = None) -> dict:
    """ValidateGraderResponse: the grader, normalised. InvalidRequestError names the bad field.
    judges: whether a judge model is served (judge_checker); None skips that check."""
    checked = validate_top_level(grader)
    if judges is not None:
        check_judge_models(checked, judges)
    return ValidateGraderResponse(grader=checked).model_dump()


def judge_checker(settings: Settings, store: Store, project_id: str | None) -> Callable[[str], bool]:
    """judges(model) for check_judge_models, as the project's ServiceJudge would route it."""
    from modelmill.service.graders.judge import judge_available

    return lambda model: judge_available(settings, store, model, project_id=project_id)


def check_judge_models(grader: dict, judges: Callable[[str], bool], path: str = "grader") -> None:
    """A validated grader's judge models (score_model / label_model, inside multi too) must be ones
    ModelMill can answer with: a MODELMILL_JUDGES entry or a model the project may use. Otherwise
    400 naming the field, e.g. `method.reinforcement.grader.graders.judge.model` (with path)."""
    kind = grader.get("type")
    if kind in ("score_model", "label_model", "relative_score_model"):
        model = grader.get("model")
        if not judges(model):
            raise errors.InvalidRequestError(
                f"The judge model '{model}' at {path}.model is not served by ModelMill and no MODELMILL_JUDGES "
                "entry names it; use a model ModelMill serves (see GET /v1/models) or configure an endpoint "
                "for it", param=f"{path}.model", code="model_not_found")
    elif kind == "multi":
        subs = grader.get("graders") or {}
        if isinstance(subs.get("type"), str):  # one grader object rather than a map of names
            check_judge_models(subs, judges, f"{path}.graders")
        else:
            for name, sub in subs.items():
                check_judge_models(sub, judges, f"{path}.graders.{name}")


def run(context, grader: dict, model_sample: str, item: dict | None) -> dict:
    """RunGraderResponse for one sample. Grading failures are reported in metadata.errors
    (OpenAI does the same); only a malformed grader is an error response."""
    result = grade(validate_top_level(grader), model_sample, item or {}, context=context)
    return RunGraderResponse.model_validate(result.to_run_grader_response()).model_dump()


def validate_top_level(grader: dict, *, path: str = "grader") -> dict:
    """A grader that may stand at the top of graders/run or an RFT job, normalised; the
    InvalidRequestError's param is the field path under `path`."""
    if grader.get("type") == "label_model":
        raise errors.InvalidRequestError(
            "A label_model grader is allowed here only inside a multi grader; the top-level grader must be one "
            f"of {', '.join(TOP_LEVEL_TYPES)}", param=f"{path}.type", code="invalid_value")
    return validate_grader(grader, path=path)
