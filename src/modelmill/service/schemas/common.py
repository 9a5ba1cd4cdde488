"""Shared pieces of the wire models: strict requests, list envelopes, None-omitting dumps."""

from __future__ import annotations

import math
from typing import Any, ClassVar, Generic, Literal, TypeVar, get_args

from pydantic import BaseModel, ConfigDict, model_serializer


class OpenAIRequest(BaseModel):
    """Base of every request body. A field that is not OpenAI's (or a documented ModelMill one) is
    refused, as OpenAI refuses it: api/errors.py turns pydantic's extra_forbidden into a 400
    "Unrecognized request argument supplied: <dotted path>". Silently ignoring it would let a
    misspelled `hyperparameters.n_epoch` or a stray top-level `test_file` train a job its author
    did not mean (docs/api.md, "Unknown fields")."""

    model_config = ConfigDict(extra="forbid")


class WireModel(BaseModel):
    """Base of every response object. Fields named in `omit_if_none` are left out when None
    (OpenAI omits them); every other field is always present, null or not."""

    model_config = ConfigDict(extra="forbid")
    omit_if_none: ClassVar[frozenset[str]] = frozenset()

    @model_serializer(mode="wrap")
    def _omit(self, handler) -> dict[str, Any]:
        out = handler(self)
        for key in self.omit_if_none:
            if out.get(key) is None:
                out.pop(key, None)
        return out


def unix(t: float | None) -> int | None:
    return None if t is None else int(t)


def finite_numbers(d: dict | None) -> dict[str, float]:
    """Keep the finite numeric entries (JSON has no NaN, and OpenAI's metrics are numbers)."""
    out = {}
    for k, v in (d or {}).items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if math.isfinite(v):
            out[k] = v
    return out


def listing(data: list, has_more: bool, empty: str | None = "") -> dict:
    """A list page's fields. OpenAI's schema types first_id / last_id as strings (not nullable) for files,
    batches and evals, so an empty page gets "" there; jobs and permissions say null (`empty=None`)."""
    return {"data": data, "first_id": data[0].id if data else empty, "last_id": data[-1].id if data else empty,
            "has_more": has_more}


# OpenAI's deletion answers ({"id" or "<x>_id", "object", "deleted": true}); each subclass declares its
# object and id. A comment, not a docstring: pydantic would make a docstring every subclass's description.
class Deletion(WireModel):
    deleted: bool = True


Item = TypeVar("Item")


class CursorList(WireModel, Generic[Item]):
    """OpenAI's list envelope where first_id / last_id are strings ("" on an empty page): files, batches,
    evals, eval runs and output items. `CursorList[XObject]` lists XObject; of() builds each item with
    XObject.of(record, *args). The subclasses (FileList...) name the schema in /openapi.json; they have
    no docstring of their own, which would become that schema's description."""

    object: Literal["list"] = "list"
    data: list[Item]
    first_id: str
    last_id: str
    has_more: bool

    @classmethod
    def of(cls, page, *args):
        """The wire page of a store Page of records; args go on to the item type's of()."""
        item_type = get_args(cls.model_fields["data"].annotation)[0]
        return cls(**listing([item_type.of(record, *args) for record in page.items], page.has_more))
