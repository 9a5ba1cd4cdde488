"""Graders: one engine for RFT rewards, evals, graders/run and before/after reports.

    from modelmill.ml.graders import grade, validate_grader
    result = grade({"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
                    "reference": "{{item.answer}}", "operation": "eq"}, "Paris", {"answer": "Paris"})
    result.reward, result.to_run_grader_response()

Grader types live one per module and register themselves in engine.GRADERS (and their checks
in validate.VALIDATORS) when this package is imported; a new type registers the same way.
"""

from .engine import (GRADERS, GradeResult, GraderContext, Judge, JudgeReply, grade, grade_batch,
                     normalize_sample, register, sample_from_text)
from .templating import InvalidVariable, render
from .validate import VALIDATORS, validate_grader

# Built-in grader types (importing registers them).
from . import string_check, text_similarity, python_grader, model_graders, multi  # noqa: E402,F401  isort: skip

__all__ = [
    "GRADERS", "VALIDATORS", "GradeResult", "GraderContext", "InvalidVariable", "Judge", "JudgeReply", "grade",
    "grade_batch", "normalize_sample", "register", "render", "sample_from_text", "validate_grader",
]
