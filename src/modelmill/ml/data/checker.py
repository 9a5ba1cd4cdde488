"""The per-line problem collector every line check writes to, and small helpers for messages."""

from __future__ import annotations

import json
from typing import Any

from modelmill.ml.jsonl import type_name
from modelmill.ml.types import LineProblem
from modelmill.ml.vision import ImagePolicy

MAX_PROBLEMS = 100  # problems kept per file (and per line); the rest are counted in one "too_many_problems"


class Checker:
    """Collects problems for one line (validators for new methods build one per line); small
    helpers keep the per-field checks one-liners."""

    def __init__(self, line: int, image_policy: ImagePolicy | None = None):
        self.line = line
        # Where image_url parts may come from (ml/vision.py); None = a text-only base model, which
        # refuses them (unsupported_content_part).
        self.image_policy = image_policy
        self.problems: list[LineProblem] = []  # at most MAX_PROBLEMS, then one too_many_problems
        self.n = 0  # problems found so far, counting those past the cap: compare this, not len()
        self.images = 0  # image_url parts seen on this line (at most MAX_IMAGES_PER_EXAMPLE)

    def add(self, field: str, code: str, message: str) -> None:
        self.n += 1
        if self.n <= MAX_PROBLEMS:
            self.problems.append(LineProblem(self.line, field, code, message))
            return
        rest = self.n - MAX_PROBLEMS
        self.problems[MAX_PROBLEMS:] = [LineProblem(self.line, "", "too_many_problems",
                                                    f"{rest} more problem{'s' * (rest != 1)} on this line not shown "
                                                    f"(only the first {MAX_PROBLEMS} are listed)")]

    def type_is(self, value: Any, expected: type | tuple, field: str, what: str) -> bool:
        ok = isinstance(value, expected) and not (isinstance(value, bool) and bool not in _as_tuple(expected))
        if not ok:
            self.add(field, "invalid_type", f"expected {what}, got {type_name(value)}")
        return ok

    def required(self, obj: dict, key: str, path: str) -> bool:
        if key not in obj:
            self.add(join_path(path, key), "missing_field", f"missing required field '{key}'")
            return False
        return True



def _as_tuple(t: type | tuple) -> tuple:
    return t if isinstance(t, tuple) else (t,)


def join_path(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def short(v: Any, limit: int = 60) -> str:
    """repr() for messages, cut so a hostile 4 MB value cannot bloat the error."""
    r = repr(v) if isinstance(v, str) else json.dumps(v) if _json_scalar(v) else type_name(v)
    return r if len(r) <= limit else r[:limit] + "..."


def _json_scalar(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, float))
