"""The training and inference layer (torch, transformers, TRL, PEFT).

ml_imports() / import_ml_stack(): the first import of these libraries from more than one thread at
once can fail. transformers initialises itself lazily through modules that import each other; when
two threads of one process (the API's request threads and its in-process worker's warm-up) import
it at the same moment, CPython's deadlock avoidance hands one of them a partially initialised module
and it raises "ImportError: cannot import name ... (most likely due to a circular import)". So every
import of a third-party ML library that can run on a service thread happens under one process-wide
lock: the worker's warm-up, and the top-level imports of the modules a request can load first
(sampling/, batching.py). Only third-party modules are imported under the lock, never a
modelmill module: a thread that holds a modelmill module's import lock while it waits for this
lock must never be waited on by the lock's holder.
"""

from __future__ import annotations

import importlib
import threading
from contextlib import contextmanager

_IMPORT_LOCK = threading.RLock()
ML_STACK = ("torch", "transformers")


@contextmanager
def ml_imports():
    """Hold the import lock: `with ml_imports(): import torch ...` (third-party modules only)."""
    with _IMPORT_LOCK:
        yield


def import_ml_stack(modules: tuple[str, ...] = ()) -> None:
    """Import ML_STACK and then `modules` (third-party) under the lock; cheap once they are imported."""
    with ml_imports():
        for module in (*ML_STACK, *modules):
            importlib.import_module(module)
