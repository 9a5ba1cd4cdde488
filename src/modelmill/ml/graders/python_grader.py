"""python: the user's `grade(sample, item) -> float`, run in the sandbox (sandbox/).

The whole batch goes to `sandbox.run_python_grader` in one call (one sandboxed process grades
every sample). Each sample's SandboxOutcome maps onto OpenAI's error keys: the grader's own
failures (exception, timeout, non-number or non-finite score) are python_grader_runtime_error
with the details; the sandbox's (could not start, killed by the kernel) are
python_grader_server_error with a type. A timeout also sets unresponsive_reward_error. Any
error means reward 0, as OpenAI documents. `pass_threshold`, when given, sets passed.

The sample the grader sees has OpenAI's documented keys: output_text, output_json ({} when the
output was not JSON), output_tools and choices (plus any other keys the caller's sample had).
"""

from __future__ import annotations

import math
import time
from typing import Literal

from modelmill import errors

from . import checks
from .engine import GradeResult, GraderContext, apply_threshold, error_result
from .registry import register

MAX_SOURCE_BYTES = 256 * 1024  # OpenAI's limit on a python grader's source


def check_source(source, param: str = "grader.source") -> None:
    """Raise InvalidRequestError(param=param) unless source is at most 256 kB of Python that
    compiles and defines grade(sample, item) at module level (the sandbox's own check)."""
    from . import sandbox

    try:
        sandbox.check_source(source, MAX_SOURCE_BYTES)
    except errors.InvalidRequestError as e:
        message = e.message.replace("grader.source", param) if param != "grader.source" else e.message
        raise errors.InvalidRequestError(message, param=param, code=e.code) from None


def python_sample(sample: dict) -> dict:
    """The `sample` argument grade() receives."""
    out = dict(sample)
    if out.get("output_json") is None:
        out["output_json"] = {}
    return out


def grade_batch(spec: dict, samples: list[dict], items: list[dict], context: GraderContext) -> list[GradeResult]:
    started = time.perf_counter()
    try:
        from . import sandbox

        config = context.sandbox if context.sandbox is not None else sandbox.SandboxConfig()
        outcomes = sandbox.run_python_grader(spec["source"], [python_sample(s) for s in samples], items, config)
    except Exception as e:  # noqa: BLE001 - the sandbox itself failed: a server error for every sample
        kind = "sandbox_unavailable" if isinstance(e, ImportError) else type(e).__name__
        outcomes = None
        results = [error_result(spec, "python_grader_server_error", python_grader_server_error_type=kind)
                   for _ in samples]
    if outcomes is not None:
        results = [_from_outcome(spec, outcome) for outcome in outcomes]
    elapsed = time.perf_counter() - started
    for r in results:
        r.execution_time = r.execution_time or elapsed
    return results


def _from_outcome(spec: dict, outcome) -> GradeResult:
    flags = outcome.errors()
    score = outcome.score
    if not any(flags[k] for k in ("python_grader_runtime_error", "python_grader_server_error")):
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
            flags = {"python_grader_runtime_error": True,
                     "python_grader_runtime_error_details": f"grade() returned an invalid score: {score!r}"[:200]}
        else:
            result = GradeResult(reward=float(score), execution_time=outcome.execution_time)
            return apply_threshold(result, spec)
    result = error_result(spec, *[k for k, v in flags.items() if v is True],
                          **{k: v for k, v in flags.items() if not isinstance(v, bool)})
    details = flags.get("python_grader_runtime_error_details") or ""
    if details.startswith("timeout"):
        result.errors["unresponsive_reward_error"] = True
    result.execution_time = outcome.execution_time
    return apply_threshold(result, spec)


class PythonGrader(checks.GraderWire):
    """OpenAI's GraderPython, plus the pass_threshold of its eval variant. source defines
    grade(sample, item) -> float; image_tag is accepted and ignored (one sandbox image)."""

    type: Literal["python"]
    source: str
    image_tag: str | None = None
    pass_threshold: float | None = None


def validate(spec: dict, path: str) -> None:
    check_source(spec.get("source"), param=f"{path}.source")
    checks.string(spec, "image_tag", path, required=False)
    checks.number(spec, "pass_threshold", path)


register("python", grade_batch, validate=validate, model=PythonGrader)
