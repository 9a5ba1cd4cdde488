"""Shared by the tests of bench/results: its modules import each other by bare name (they run as
scripts), so a test imports one with bench/results on sys.path, only for as long as it is used."""

from __future__ import annotations

import contextlib
import importlib
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"


@contextlib.contextmanager
def results_module(name: str):
    """bench/results/<name>.py, imported with bench/results on sys.path until the block ends."""
    sys.path.insert(0, str(RESULTS))
    try:
        yield importlib.import_module(name)
    finally:
        sys.path.remove(str(RESULTS))
