"""Shared pieces of the wire models: lenient requests, list envelopes, None-omitting dumps."""

from __future__ import annotations

import logging
import math
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, model_serializer, model_validator

log = logging.getLogger("modelmill.api")


class OpenAIRequest(BaseModel):
    """Base of every request body: unknown fields are accepted and logged, never rejected,
    so clients written for a newer OpenAI API keep working (as vLLM's OpenAIBaseModel does)."""

    model_config = ConfigDict(extra="allow")

    @model_validator(mode="after")
    def _log_unknown_fields(self):
        if self.model_extra:
            log.info("%s: ignoring unknown fields %s", type(self).__name__, sorted(self.model_extra))
        return self


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
