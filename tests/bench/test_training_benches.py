"""The training benches (bench_job_overhead, bench_sft_efficiency, bench_memory): each one's --quick smoke
run on modelmill-tiny writes a Bench JSON of the contract's shape (bench/README.md) and leaves
BENCHMARKS.md alone; plus the shared helpers in bench/training_common.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench"
sys.path.insert(0, str(BENCH))
import training_common  # noqa: E402

ROW_KEYS = {"what", "baseline", "unit", "baseline_median", "modelmill_median", "baseline_spread", "modelmill_spread",
            "repeats", "ratio", "ratio_meaning", "target", "met"}


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bench-home")


def run_quick(name: str, home: Path, tmp_path: Path) -> dict:
    md = REPO / "BENCHMARKS.md"
    before = md.read_text() if md.exists() else None
    out = tmp_path / f"{name}.json"
    proc = subprocess.run([sys.executable, str(BENCH / f"bench_{name}.py"), "--quick", "--json", str(out),
                           "--home", str(home)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (md.read_text() if md.exists() else None) == before  # a smoke run never overwrites measured figures
    doc = json.loads(out.read_text())
    assert set(doc) == {"bench", "machine", "date", "rows", "notes", "profile"} and doc["bench"] == name
    assert doc["machine"] and len(doc["date"]) == 10 and doc["notes"][0].startswith("--quick smoke run")
    assert doc["profile"] is None or isinstance(doc["profile"], str)
    for row in doc["rows"]:
        assert set(row) == ROW_KEYS and row["repeats"] == 1
        assert row["unit"] in ("tok/s", "s", "ms", "GB", "nats/token")
        for side in ("baseline", "modelmill"):
            assert row[f"{side}_median"] > 0 and row[f"{side}_spread"] == [row[f"{side}_median"]] * 2
        assert row["ratio"] > 0 and row["ratio_meaning"]
        assert (row["target"] is None) == (row["met"] is None)
        if row["met"] is not None:
            assert isinstance(row["met"], bool) and isinstance(row["target"], str)
    return doc


def _ratio(row: dict) -> float:
    higher_is_better = row["unit"] == "tok/s"
    b, m = row["baseline_median"], row["modelmill_median"]
    return m / b if higher_is_better else b / m


@pytest.mark.slow  # a quick run of the bench itself: `make bench` runs it first (-m slow)
def test_job_overhead_quick(home, tmp_path):
    doc = run_quick("job_overhead", home, tmp_path)
    assert [r["unit"] for r in doc["rows"]] == ["s", "s", "tok/s"]
    for row in doc["rows"]:
        assert row["ratio"] == pytest.approx(_ratio(row))
    # the server-start row includes the server start: ModelMill's seconds can only be larger
    assert doc["rows"][0]["modelmill_median"] > doc["rows"][1]["modelmill_median"]
    assert "Real tokens per run (side, tokens): baseline " in doc["notes"][2]


@pytest.mark.slow  # a quick run of the bench itself: `make bench` runs it first (-m slow)
def test_sft_efficiency_quick(home, tmp_path):
    doc = run_quick("sft_efficiency", home, tmp_path)
    speed, loss = doc["rows"]
    assert speed["unit"] == "tok/s" and speed["ratio"] == pytest.approx(_ratio(speed))
    assert loss["unit"] == "nats/token" and loss["ratio"] == pytest.approx(_ratio(loss))
    # both sides trained on exactly the same real tokens
    assert any(n.startswith("Real tokens per run: the same on both sides, ") for n in doc["notes"])


@pytest.mark.slow  # a quick run of the bench itself: `make bench` runs it first (-m slow)
def test_memory_quick(home, tmp_path):
    doc = run_quick("memory", home, tmp_path)
    (row,) = doc["rows"]
    assert row["unit"] == "GB" and row["ratio"] == pytest.approx(_ratio(row))
    assert 0.05 < row["modelmill_median"] < 20


def test_row_ratio_is_always_greater_is_better():
    times = training_common.row("wall", "plain", "s", [10.0, 12.0, 11.0], [11.0, 10.5], higher_is_better=False,
                                target=1 / 1.1, target_text="<= 1.10x", ratio_meaning="baseline / ModelMill")
    assert times["baseline_median"] == 11.0 and times["modelmill_median"] == 10.75
    assert times["baseline_spread"] == [10.0, 12.0] and times["repeats"] == 2
    assert times["ratio"] == pytest.approx(11.0 / 10.75) and times["met"] is True
    rates = training_common.row("tok/s", "plain", "tok/s", [100.0], [90.0], higher_is_better=True, target=0.97,
                                target_text=">= 0.97x", ratio_meaning="ModelMill / baseline")
    assert rates["ratio"] == pytest.approx(0.9) and rates["met"] is False
    info = training_common.row("x", "plain", "s", [1.0], [2.0], higher_is_better=False, target=None,
                               target_text=None, ratio_meaning="-")
    assert info["met"] is None and info["target"] is None


def test_timed_repeats_stop_before_overrunning_the_budget(monkeypatch):
    clock = iter([0.0, 0.0, 50.0, 50.0, 50.0, 95.0, 95.0])  # start, then (check, begin, end) per repeat
    monkeypatch.setattr(training_common.time, "monotonic", lambda: next(clock))
    # repeat 0 takes 50 s; repeat 1 starts at 50 (50 + 50 <= 120) and ends at 95; 95 + 50 > 120: no repeat 2
    assert list(training_common.timed_repeats(5, budget_s=120)) == [0, 1]


def test_peak_rss_is_the_childs_own_not_its_parents():
    """A child's ru_maxrss can carry its parent's peak across exec; peak_rss_mb must not."""
    ballast = b"x" * (400 << 20)  # 400 MiB resident in this (parent) process
    code = f"import sys; sys.path.insert(0, {str(BENCH)!r}); import training_common as t; print(t.peak_rss_mb())"
    child = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert len(ballast) and 5 < child < 200
