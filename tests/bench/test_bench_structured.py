"""bench/bench_structured.py --quick on modelmill-tiny: both rows of the Bench JSON contract
(bench/README.md), and the 8 concurrent structured requests really decoded as one batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.mark.slow  # a quick run of the bench itself: `make bench` runs it first (-m slow)
def test_quick_run_writes_the_bench_json(tmp_path: Path):
    out = tmp_path / "structured.json"
    env = dict(os.environ, MODELMILL_HOME=str(tmp_path / "home"), OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, str(BENCH / "bench_structured.py"), "--quick", "--threads", "1", "--json", str(out),
                    "--home", str(tmp_path / "home")], check=True, timeout=600, env=env)
    doc = json.loads(out.read_text())
    assert doc["bench"] == "structured" and set(doc) == {"bench", "machine", "date", "rows", "notes", "profile"}
    cost, concurrent = doc["rows"]
    for r in doc["rows"]:
        assert r["unit"] == "tok/s" and r["baseline_median"] > 0 and r["modelmill_median"] > 0
        assert abs(r["ratio"] - r["modelmill_median"] / r["baseline_median"]) < 1e-9
    assert cost["met"] is (cost["ratio"] >= 1 / 1.15) and concurrent["met"] is (concurrent["ratio"] >= 3.0)
    assert any(n.startswith("Grammar masks") for n in doc["notes"])
    batches = next(n for n in doc["notes"] if n.startswith("Batched generate() calls"))
    assert batches.endswith(")]")  # the concurrent requests shared batches (8 in one on a quiet machine)
