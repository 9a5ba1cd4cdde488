"""Text the store writes on a worker's behalf, made storable whatever produced it.

A worker records text it did not choose: a grader's error message, an exception's str, a metric
name. Such text may hold a lone UTF-16 surrogate (a python grader raising "\\ud800") or a NUL:
SQLite's driver cannot encode the first, Postgres rejects the second, and JSON responses can
hold neither. One such event used to crash the worker on every claim until the job ended
`worker_lost`. So every job event and every field a lease writes passes through clean(): each
such character becomes U+FFFD (the API's own inputs are refused at the edge instead, with a 400).
"""

from __future__ import annotations

import re

REPLACEMENT = "\ufffd"
# Surrogate code points in a Python str are always unpaired (decoding JSON or UTF-8 joins real pairs).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def clean(value):
    """value with every NUL and unpaired surrogate in its strings (dict keys too) replaced by U+FFFD."""
    if isinstance(value, str):
        return _UNSTORABLE.sub(REPLACEMENT, value)
    if isinstance(value, dict):
        return {clean(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(clean(v) for v in value)
    return value
