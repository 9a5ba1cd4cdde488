"""Graders: one engine for RFT rewards, evals, graders/run and before/after reports.

    from modelmill.ml.graders import grade, validate_grader
    result = grade({"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
                    "reference": "{{item.answer}}", "operation": "eq"}, "Paris", {"answer": "Paris"})
    result.reward, result.to_run_grader_response()

Grader types live one per module; each registers its grade function, its validate function and
its pydantic wire model with registry.register when this package is imported, and a new type
registers the same way. registry.wire_union() is the discriminated union (on `type`) of the
registered wire models, which the service's /openapi.json uses.
"""

from .engine import (GradeResult, GraderContext, Judge, JudgeReply, grade, grade_batch, normalize_sample,
                     sample_from_text)
from .registry import GRADERS, GraderType, register, wire_union
from .templating import InvalidVariable, render
from .validate import validate_grader

# Built-in grader types (importing registers them).
from . import string_check, text_similarity, python_grader, model_graders, multi  # noqa: E402,F401  isort: skip
from . import relative_judge  # noqa: E402,F401  isort: skip  (ModelMill's relative judge, after RULER)

__all__ = [
    "GRADERS", "GradeResult", "GraderContext", "GraderType", "InvalidVariable", "Judge", "JudgeReply", "grade",
    "grade_batch", "normalize_sample", "register", "render", "sample_from_text", "validate_grader", "wire_union",
]
