"""string_check: compare the rendered `input` with the rendered `reference`; reward 1.0 or 0.0.

OpenAI's operations: eq (equal, case-sensitive), ne (not equal, case-sensitive), like (input
contains reference, case-sensitive), ilike (input contains reference, case-insensitive). Despite
the SQL names there are no wildcards: `%` and `_` are literal characters.
"""

from __future__ import annotations

from .engine import GradeResult, GraderContext, map_samples, register
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


register("string_check", grade_batch)
