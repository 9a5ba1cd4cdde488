"""What every grader type's validate and wire model build on: field checks that raise
InvalidRequestError naming the field (`param` = the field's path, e.g. `grader.graders.a.input`),
and the wire models' base class.

The checks are written by hand, not left to pydantic, because their messages are the API's
documented 400s (`grader.input must be a string`, `... invalid template variable {{x}}: ...`) and a
template's variables are checked too. The wire models (GraderWire subclasses, one per type, in the
type's own module) are the one declaration of each type's fields: validate.py refuses a field a
type's model does not have, and the service's /openapi.json describes graders with them.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict

from modelmill import errors

from . import templating


class GraderWire(BaseModel):
    """Base of a grader type's wire model: OpenAI's Grader* shape. Every grader has a `type`
    (Literal, the union's discriminator, declared by the subclass) and an optional `name` (a
    missing one becomes the type). Unknown fields are refused, as OpenAI refuses them."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = None


def bad(param: str, message: str) -> errors.InvalidRequestError:
    return errors.InvalidRequestError(message, param=param, code="invalid_value")


def string(spec: dict, key: str, path: str, *, template: bool = False, required: bool = True) -> None:
    value = spec.get(key)
    if value is None and not required:
        return
    if not isinstance(value, str):
        raise bad(f"{path}.{key}", f"{path}.{key} must be a string")
    if template:
        check_template(value, f"{path}.{key}")


def check_template(text: str, param: str) -> None:
    try:
        templating.check_template(text)
    except templating.InvalidVariable as e:
        raise bad(param, f"{param}: invalid template variable {{{{{e.variable}}}}}: {e.reason}") from None


def number(spec: dict, key: str, path: str) -> None:
    value = spec.get(key)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise bad(f"{path}.{key}", f"{path}.{key} must be a finite number")


def enum(spec: dict, key: str, path: str, allowed) -> None:
    if spec.get(key) not in allowed:
        raise bad(f"{path}.{key}", f"{path}.{key} must be one of {', '.join(allowed)}; got {spec.get(key)!r}")
