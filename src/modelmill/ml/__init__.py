"""The training and inference layer (torch, transformers, TRL, PEFT).

import_ml_stack(): the first import of these libraries from more than one thread at once can fail.
transformers initialises itself lazily through modules that import each other; when two threads
of one process (the API's request threads and its in-process worker's warm-up) import it at the
same moment, CPython's deadlock avoidance hands one of them a partially initialised module and it
raises "ImportError: cannot import name ... (most likely due to a circular import)". Every first
import of the stack from a service thread goes through this lock, so one thread does it whole.
"""

from __future__ import annotations

import importlib
import threading

_IMPORT_LOCK = threading.RLock()
ML_STACK = ("torch", "transformers")


def import_ml_stack(modules: tuple[str, ...] = ML_STACK) -> None:
    """Import `modules` (after ML_STACK) under one process-wide lock; cheap once they are imported."""
    with _IMPORT_LOCK:
        for module in (*ML_STACK, *modules):
            importlib.import_module(module)
