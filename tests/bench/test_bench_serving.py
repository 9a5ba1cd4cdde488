"""bench/bench_serving.py --quick: a live server, two fine-tuned modelmill-tiny models, every row of
the Bench JSON contract (bench/README.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
ROW_KEYS = {"what", "baseline", "unit", "baseline_median", "modelmill_median", "baseline_spread", "modelmill_spread",
            "repeats", "ratio", "ratio_meaning", "target", "met"}


@pytest.mark.slow  # a quick run of the bench itself: `make bench` runs it first (-m slow)
def test_quick_run_writes_the_bench_json(tmp_path: Path):
    out = tmp_path / "serving.json"
    env = dict(os.environ, MODELMILL_HOME=str(tmp_path / "home"))
    subprocess.run([sys.executable, str(BENCH / "bench_serving.py"), "--quick", "--json", str(out), "--no-write"],
                   check=True, timeout=900, env=env)
    doc = json.loads(out.read_text())
    assert set(doc) == {"bench", "machine", "date", "rows", "notes", "profile"}
    assert doc["bench"] == "serving" and doc["machine"] and len(doc["date"]) == 10
    assert [r["unit"] for r in doc["rows"]] == ["s", "tok/s", "s", "s", "tok/s", "tok/s"]
    for r in doc["rows"]:
        assert set(r) == ROW_KEYS
        assert r["baseline_median"] > 0 and r["modelmill_median"] > 0 and r["repeats"] >= 1
        assert r["baseline_spread"][0] <= r["baseline_median"] <= r["baseline_spread"][1]
        assert r["modelmill_spread"][0] <= r["modelmill_median"] <= r["modelmill_spread"][1]
        faster = r["baseline_median"] / r["modelmill_median"] if r["unit"] == "s" else \
            r["modelmill_median"] / r["baseline_median"]
        assert abs(r["ratio"] - faster) < 1e-9
    concurrent, mixed = [r for r in doc["rows"] if r["target"] is not None]
    assert concurrent["target"] == ">= 3x" and concurrent["met"] is (concurrent["ratio"] >= 3.0)
    assert mixed["target"] == ">= 0.9x" and mixed["met"] is (mixed["ratio"] >= 0.9)
    assert all(r["met"] is None for r in doc["rows"] if r["target"] is None)
    assert (doc["profile"] is None) is (concurrent["met"] and mixed["met"])  # a missed target comes with a profile
    batches = next(n for n in doc["notes"] if n.startswith("Batched generate() calls"))
    assert "rows)" in batches and "none logged" not in batches  # the server's batch log was read
