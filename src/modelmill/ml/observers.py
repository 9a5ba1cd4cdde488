"""Hooks through which whoever runs ml code may watch it, without ml importing them.

The service's Prometheus metrics (service/core/metrics.py) register here; a notebook registers nothing
and pays one empty loop per call. An observer must be cheap and must not raise (one that does is
logged and skipped: watching never breaks decoding or grading).
"""

from __future__ import annotations

import logging
from typing import Callable

log = logging.getLogger(__name__)

# Called as fn(requests, rows) when the local sampler (ml/batching.py) starts decoding a batch:
# how many requests it joined, and how many sequences (prompts x choices) they decode together.
BATCH: list[Callable[[int, int], None]] = []
# Called as fn(grader_type, samples, errors, seconds) after each top-level grading call
# (ml/graders/engine.grade_batch): samples graded, how many of them carry an error, and wall time.
GRADE: list[Callable[[str, int, int, float], None]] = []


def notify(observers: list[Callable], *args) -> None:
    for fn in list(observers):
        try:
            fn(*args)
        except Exception:  # noqa: BLE001 - a broken observer must not break the work it watches
            log.exception("observer %r failed", fn)
