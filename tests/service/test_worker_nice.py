"""The in-process worker thread runs at a lower CPU priority than the API (api/app.py _niced), and
so do the threads it starts (torch's OpenMP team): training yields the cores to requests."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from modelmill.service.api.app import _niced

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's")


def _nice_of_this_thread() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def run_niced() -> dict:
    out = {}

    def body():
        def inner():
            out["mine"] = _nice_of_this_thread()
            child = threading.Thread(target=lambda: out.setdefault("child", _nice_of_this_thread()))
            child.start()
            child.join()
        _niced(inner)

    t = threading.Thread(target=body)
    t.start()
    t.join()
    return out


def test_worker_thread_and_its_threads_are_niced(monkeypatch):
    monkeypatch.setenv("MODELMILL_WORKER_NICE", "5")
    base = _nice_of_this_thread()
    out = run_niced()
    assert out == {"mine": min(19, base + 5), "child": min(19, base + 5)}
    assert _nice_of_this_thread() == base  # the API's own threads keep their priority


def test_nice_zero_leaves_the_priority_alone(monkeypatch):
    monkeypatch.setenv("MODELMILL_WORKER_NICE", "0")
    base = _nice_of_this_thread()
    assert run_niced() == {"mine": base, "child": base}
