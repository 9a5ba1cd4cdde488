"""The grader registry: type -> how to grade it, how to check it, what it looks like on the wire.

Every grader type calls `register` once, from its own module (string_check.py, multi.py, ...);
the built-ins use the same path a new type would (simonw/llm's plugin hook). This module imports
no grader module and no other part of the engine, so a grader module can import the engine and
the validator, and they can read GRADERS, without an import circle.

    register("my_type", grade_batch, validate=check, model=MyTypeGrader)

- grade: fn(spec, samples, items, context) -> list[GradeResult], one result per sample (engine.py).
- validate: fn(spec, path) -> a normalised copy or None; raises InvalidRequestError naming the field
  under `path` (validate.py runs the checks every type shares first). None: the shared checks only.
- model: the pydantic wire model (checks.GraderWire subclass) with a `type: Literal[...]` field. Its
  fields are the fields the type accepts (an unknown one is refused), and the service's
  /openapi.json describes graders with the discriminated union of every registered model
  (wire_union). A model may name the forward reference `SubGrader`: the union of every *other*
  registered type (multi's sub-graders). None: any field is accepted and the type is not described.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Callable, Union

BatchGradeFn = Callable[[dict, list, list, Any], list]
ValidateFn = Callable[[dict, str], "dict | None"]


@dataclass(frozen=True)
class GraderType:
    type: str
    grade: BatchGradeFn
    validate: ValidateFn | None = None
    model: Any = None  # a pydantic BaseModel subclass, or None

    @property
    def fields(self) -> tuple[str, ...] | None:
        """The fields a grader of this type may have (type and name included); None: any."""
        return tuple(self.model.model_fields) if self.model is not None else None


# type -> its registration. Built-ins add themselves when modelmill.ml.graders is imported.
GRADERS: dict[str, GraderType] = {}


def register(type_name: str, grade: BatchGradeFn, *, validate: ValidateFn | None = None,
             model: Any = None) -> GraderType:
    """Add (or replace) a grader type."""
    entry = GraderType(type_name, grade, validate, model)
    GRADERS[type_name] = entry
    return entry


def wire_union(*, exclude: tuple[str, ...] = ()) -> Any:
    """The pydantic discriminated union (on `type`) of the registered wire models, minus `exclude`.
    Built from what is registered when called: call it after the types have registered (importing
    modelmill.ml.graders registers the built-ins)."""
    models = [entry.model for name, entry in GRADERS.items() if entry.model is not None and name not in exclude]
    for name, entry in GRADERS.items():
        if entry.model is not None and name not in exclude and not entry.model.__pydantic_complete__:
            others = _union([e.model for n, e in GRADERS.items() if e.model is not None and n != name])
            entry.model.model_rebuild(_types_namespace={"SubGrader": others})
    return _union(models)


def _union(models: list) -> Any:
    from pydantic import Field

    if not models:
        raise LookupError("no grader type with a wire model is registered")
    if len(models) == 1:
        return models[0]
    return Annotated[Union[tuple(models)], Field(discriminator="type")]
