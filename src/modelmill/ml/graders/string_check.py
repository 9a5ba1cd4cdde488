"""string_check: compare the rendered `input` with the rendered `reference`; reward 1.0 or 0.0.

OpenAI's operations: eq (equal, case-sensitive), ne (not equal, case-sensitive), like (input
contains reference, case-sensitive), ilike (input contains reference, case-insensitive). Despite
the SQL names there are no wildcards: `%` and `_` are literal characters.
"""

from __future__ import annotations

from typing import Literal

from . import checks
from .engine import GradeResult, GraderContext, map_samples
from .registry import register
from .templating import render

OPERATIONS = {
    "eq": lambda text, ref: text == ref,
    "ne": lambda text, ref: text != ref,
    "like": lambda text, ref: ref in text,
    # casefold, not lower: "STRASSE" should contain "straße" the way a person reads it.
    "ilike": lambda text, ref: ref.casefold() in text.casefold(),
}


def grade_one(spec: dict, sample: dict, item: dict, context: GraderContext) -> GradeResult:
    text = render(spec["input"], sample, item)
    reference = render(spec["reference"], sample, item)
    passed = OPERATIONS[spec["operation"]](text, reference)
    return GradeResult(reward=1.0 if passed else 0.0, passed=passed)


def grade_batch(spec: dict, samples: list[dict], items: list[dict], context: GraderContext) -> list[GradeResult]:
    return map_samples(grade_one, spec, samples, items, context)


class StringCheckGrader(checks.GraderWire):
    """OpenAI's GraderStringCheck. input and reference are templates."""

    type: Literal["string_check"]
    input: str
    reference: str
    operation: Literal["eq", "ne", "like", "ilike"]


def validate(spec: dict, path: str) -> None:
    checks.string(spec, "input", path, template=True)
    checks.string(spec, "reference", path, template=True)
    checks.enum(spec, "operation", path, tuple(OPERATIONS))


register("string_check", grade_batch, validate=validate, model=StringCheckGrader)
