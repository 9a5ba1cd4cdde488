"""bench/bench_first_step.py: rows and phases from made-up runs (fast), and (slow) a --quick run
against a live server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))
import bench_first_step  # noqa: E402


def run(client_s: float) -> dict:
    return {"client_s": client_s, "stored_s": client_s - 0.03, "phases": [[0.0, "Created"], [client_s, "metrics"]]}


def test_rows_judge_the_absolute_target_on_the_warm_median():
    results = [{"model": "modelmill-tiny", "cold": run(9.0), "warm": [run(2.0), run(4.0), run(2.5)],
                "valid": [run(2.2)], "valid_first": [run(6.0)], "baseline": [20.0, 25.0, 22.0]},
               {"model": "SmolLM2-135M-Instruct", "cold": run(30.0), "warm": [run(16.0), run(17.0)],
                "valid": [], "valid_first": [], "baseline": [40.0, 44.0]}]
    rows = {r["what"]: r for r in bench_first_step.build_rows(results)}
    warm = rows["time to first step, modelmill-tiny, warm worker"]
    assert (warm["modelmill_median"], warm["baseline_median"], warm["modelmill_spread"]) == (2.5, 22.0, [2.0, 4.0])
    assert warm["ratio"] == pytest.approx(22.0 / 2.5) and warm["repeats"] == 3
    assert (warm["target"], warm["met"], warm["unit"]) == ("< 3 s", True, "s")
    cold = rows["time to first step, modelmill-tiny, first job after server start"]
    assert cold["modelmill_median"] == 9.0 and cold["target"] is None and cold["met"] is None
    assert rows["time to first step, modelmill-tiny, job with a validation file (base eval after training)"]["met"]
    first = [r for w, r in rows.items() if "base eval first" in w]
    assert len(first) == 1 and first[0]["modelmill_median"] == 6.0 and first[0]["met"] is None
    smol = rows["time to first step, SmolLM2-135M-Instruct, warm worker"]
    assert (smol["modelmill_median"], smol["target"], smol["met"]) == (16.5, "< 15 s", False)
    assert not any("SmolLM2" in w and "validation" in w for w in rows)


def test_phases_run_from_create_to_the_first_metrics_event():
    events = [{"t": 100.0, "type": "message", "message": "Created fine-tuning job: x", "data": {}},
              {"t": 100.5, "type": "message", "message": "Fine-tuning job started", "data": {}},
              {"t": 101.25, "type": "metrics", "message": "Step 1/10", "data": {"step": 1}},
              {"t": 101.5, "type": "metrics", "message": "Step 2/10", "data": {"step": 2}}]
    assert bench_first_step.phases(events, t0=99.9) == [
        [0.1, "Created fine-tuning job: x"], [0.6, "Fine-tuning job started"], [1.35, "metrics step 1"]]


@pytest.mark.slow
def test_quick_run_against_a_live_server(tmp_path: Path):
    out = tmp_path / "first_step.json"
    subprocess.run([sys.executable, str(BENCH / "bench_first_step.py"), "--quick", "--no-validation",
                    "--json", str(out)], check=True, timeout=900)
    doc = json.loads(out.read_text())
    assert doc["bench"] == "first_step" and doc["rows"]
    warm = doc["rows"][0]
    assert warm["what"] == "time to first step, modelmill-tiny, warm worker" and warm["modelmill_median"] > 0
    assert warm["met"] is (warm["modelmill_median"] < 3.0)
    [run_] = doc["runs"]["modelmill-tiny"]["warm"]
    assert run_["phases"][-1][1] == "metrics step 1" and abs(run_["stored_s"] - run_["client_s"]) < 1.0
