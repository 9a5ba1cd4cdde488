"""validate_grader: check a grader object against OpenAI's shapes, return it normalised.

Shapes: GraderStringCheck, GraderTextSimilarity, GraderPython, GraderScoreModel,
GraderLabelModel and GraderMulti in OpenAI's spec, plus what OpenAI's guide documents on top
(pass_threshold on text_similarity / python / score_model, a map of named graders in multi).
Every problem raises errors.InvalidRequestError whose `param` is the path of the bad field,
e.g. `grader.graders.a.operation` or `grader.input[1].content[0].text`. Templates are checked
too (namespace item or sample, a known sample variable, a parseable path), and so is a multi
grader's formula. A field the grader's type does not have (the fields of its registered wire
model: OpenAI's shape plus the documented pass_threshold) is refused as OpenAI refuses it,
"Unrecognized request argument supplied: grader.<field>", so a misspelled `modle` or
`pass_treshold` is never silently ignored.

This module runs the checks every type shares (an object, a registered type, a string name, no
unknown field), then the type's own validate from the registry (each lives in the type's module).

Normalised means: a missing `name` becomes the grader's type (every result needs a name).
"""

from __future__ import annotations

from modelmill import errors

from .checks import bad
from .registry import GRADERS


def validate_grader(spec: dict, *, path: str = "grader") -> dict:
    """The grader, checked and normalised; raises InvalidRequestError(param=<field path>)."""
    if not isinstance(spec, dict):
        raise bad(path, f"{path} must be a grader object")
    kind = spec.get("type")
    if not isinstance(kind, str) or kind not in GRADERS:  # a list or an object is no type (and unhashable)
        raise bad(f"{path}.type", f"{path}.type must be one of {', '.join(sorted(GRADERS))}; got {kind!r}")
    if spec.get("name") is not None and not isinstance(spec["name"], str):
        raise bad(f"{path}.name", f"{path}.name must be a string")
    entry = GRADERS[kind]
    if entry.fields is not None:  # a type registered without a wire model keeps its own fields
        errors.reject_unknown_fields(spec, entry.fields, path)
    # a registered type without a validate gets the shared checks only; a validate may return a
    # normalised copy (multi does)
    out = (entry.validate(spec, path) if entry.validate else None) or dict(spec)
    if not out.get("name"):
        out["name"] = kind
    return out
