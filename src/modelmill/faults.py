"""Crash points for the reliability suite (tools/reliability/crash_suite.py).

`crash_point(name)` marks a place where a crash is worth testing: in the middle of a store write
(statements run, COMMIT not yet sent), a checkpoint fully staged but not yet published, the final
adapter written but not yet renamed into place. With MODELMILL_CRASH_AT="name:N" in the
environment, the process SIGKILLs itself the Nth time `crash_point(name)` runs, exactly as a
power cut or the OOM killer would stop it: no cleanup, no finally blocks.

Unset (always, outside the suite), a crash point costs one dict lookup.
"""

from __future__ import annotations

import os
import signal
import threading

ENV = "MODELMILL_CRASH_AT"
POINTS = ("store_commit", "checkpoint_publish", "adapter_publish", "batch_record")

_hits: dict[str, int] = {}
_lock = threading.Lock()


def crash_point(name: str) -> None:
    # Not a setting: a test hook the crash suite sets per worker process, read here at each crash point.
    spec = os.environ.get(ENV)
    if not spec:
        return
    target, _, nth = spec.partition(":")
    if target != name:
        return
    with _lock:
        _hits[name] = _hits.get(name, 0) + 1
        hit = _hits[name]
    if hit == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
