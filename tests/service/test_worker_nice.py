"""The in-process worker thread runs at a lower CPU priority than the API (api/app.py _niced), and
so do the threads it starts (torch's OpenMP team): training yields the cores to requests."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from modelmill.service.api.app import _niced
from modelmill.settings import Settings

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's")


def _nice_of_this_thread() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def run_niced(nice: int) -> dict:
    out = {}

    def body():
        def inner():
            out["mine"] = _nice_of_this_thread()
            child = threading.Thread(target=lambda: out.setdefault("child", _nice_of_this_thread()))
            child.start()
            child.join()
        _niced(nice, inner)

    t = threading.Thread(target=body)
    t.start()
    t.join()
    return out


def test_worker_thread_and_its_threads_are_niced(monkeypatch):
    monkeypatch.setenv("MODELMILL_WORKER_NICE", "5")
    base = _nice_of_this_thread()
    out = run_niced(Settings.from_env().worker_nice)
    assert out == {"mine": min(19, base + 5), "child": min(19, base + 5)}
    assert _nice_of_this_thread() == base  # the API's own threads keep their priority


def test_nice_zero_leaves_the_priority_alone(monkeypatch):
    monkeypatch.setenv("MODELMILL_WORKER_NICE", "0")
    base = _nice_of_this_thread()
    assert run_niced(Settings.from_env().worker_nice) == {"mine": base, "child": base}


def test_worker_nice_is_a_setting_read_once(monkeypatch):
    """MODELMILL_WORKER_NICE is read by Settings.from_env (default 10); a value that is not an integer
    is an error naming the variable, at start-up rather than when the worker starts."""
    monkeypatch.delenv("MODELMILL_WORKER_NICE", raising=False)
    assert Settings.from_env().worker_nice == 10
    monkeypatch.setenv("MODELMILL_WORKER_NICE", "low")
    with pytest.raises(ValueError, match="MODELMILL_WORKER_NICE must be an integer, not 'low'"):
        Settings.from_env()


def test_worker_child_env_carries_the_home(tmp_path, monkeypatch):
    """A `serve --worker-process` child gets MODELMILL_HOME from the settings (which may come from
    --home), set explicitly in its environment rather than written into this process's."""
    monkeypatch.setenv("MODELMILL_HOME", str(tmp_path / "env-home"))
    settings = Settings.from_env(home=tmp_path / "flag-home")
    env = settings.child_env(EXTRA="1")
    assert env["MODELMILL_HOME"] == str(tmp_path / "flag-home") and env["EXTRA"] == "1"
    assert os.environ["MODELMILL_HOME"] == str(tmp_path / "env-home")
