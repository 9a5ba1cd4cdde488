"""The load suite (make reliability) in miniature, so it cannot rot between its real runs: a few
clients against a live server while a job trains, then four workers racing for two jobs. Checks
the outcome figures (no 5xx, no "database is locked", each job claimed once) and that the server's
own time (`openai-processing-ms`) was read for every request; latency is not judged here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # `make reliability` runs it before the full load suite (-m slow)
def test_load_suite_quick():  # its clients in 2 processes: the path `--client-processes` takes
    proc = subprocess.run([sys.executable, "-m", "tools.reliability.load_suite", "--clients", "3", "--requests", "12",
                           "--jobs", "2", "--client-processes", "2", "--no-write"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    docs = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    load, race = docs
    assert load["requests"] == 36 and load["server_errors"] == 0 and load["db_locked"] == 0
    assert sum(k["n"] for k in load["per_kind"].values()) == 36
    assert load["metadata_server_p50_ms"] >= 0  # a number, not nan: every response carried the header
    # where the time went: the server's event-loop lag (from /metrics and its shutdown log) and each
    # request's split, client before sending / server app / loop and wire / client after the headers
    assert load["loop_lag"]["ticks"] > 0 and load["loop_lag"]["p99_ms"] >= 0 and load["loop_stalls"]["samples"] > 0
    assert load["split"]["server_app_50_ms"] >= 0 and load["split"]["slowest_1pct"]["n"] >= 1
    assert race == {**race, "jobs": 2, "succeeded": 2, "claimed_once": 2, "steps_twice": 0, "integrity": "ok"}
