"""bench/run_all.py's summary: BENCHMARKS.md's bench_summary section from Bench JSON files.
Every JSON file here is made up in the test; no bench runs."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import run_all  # noqa: E402

MACHINE = {"cpu": "Test CPU 9000", "cores": 2, "load_average": 0.42, "date": "2026-11-22"}


def a_row(what: str, b: float, m: float, ratio: float, target: str | None, met: bool | None, unit: str = "s") -> dict:
    return {"what": what, "baseline": "plain TRL", "unit": unit, "baseline_median": b, "modelmill_median": m,
            "baseline_spread": [b * 0.9, b * 1.1], "modelmill_spread": [m * 0.8, m * 1.25], "repeats": 3,
            "ratio": ratio, "ratio_meaning": "baseline / ModelMill", "target": target, "met": met}


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    docs = {
        "first_step": {"bench": "first_step", "machine": "m", "date": "2026-11-22", "notes": [], "profile": None,
                       "rows": [
                           a_row("time to first step, modelmill-tiny, warm worker", 20.0, 1.6, 12.5, "< 3 s", True),
                           a_row("time to first step, SmolLM2, warm worker", 30.0, 16.0, 1.875, "< 15 s", False),
                           a_row("time to first step, first job after server start", 20.0, 14.0, 1.43, None, None)]},
        "serving": {"bench": "serving", "machine": "m", "date": "2026-11-20", "notes": [], "profile": None,
                    "rows": [a_row("chat completions throughput", 120.0, 480.0, 4.0, ">= 3x", True, unit="tok/s")]},
        "gpu": {"bench": "gpu", "skipped": "no CUDA device"},
        "results_sft": {"story": "sft", "model": "x", "metric": "acc", "base": 0.1, "fine_tuned": 0.5},
    }
    for name, doc in docs.items():
        (out / f"{name}.json").write_text(json.dumps(doc))
    (out / "broken.json").write_text("{not json")
    return out


def table_rows(body: str) -> list[list[str]]:
    lines = [ln for ln in body.splitlines() if ln.startswith("| ") and not ln.startswith("| bench |")]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]


def test_summary_table_lists_every_row_with_ratio_target_and_verdict(out_dir: Path, tmp_path: Path):
    md = tmp_path / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n\n<!-- BEGIN other -->\n## Other\n\nkept\n<!-- END other -->\n")
    statuses = {"job_overhead": "timed out after 300 s", "memory": "missing", "first_step": "ok", "gpu": "ok"}
    run_all.write_summary(out_dir, statuses, MACHINE, md_path=md)
    text = md.read_text()
    assert "<!-- BEGIN other -->\n## Other\n\nkept\n<!-- END other -->" in text
    body = text.split("<!-- BEGIN bench_summary -->", 1)[1].split("<!-- END bench_summary -->", 1)[0]
    assert body.startswith("\n## Summary (make bench)\n")
    assert "2026-11-22, on Test CPU 9000, 2 logical CPUs, load average 0.42 at the start" in body

    rows = table_rows(body)
    assert rows == [
        ["first_step", "time to first step, modelmill-tiny, warm worker", "s", "20.00", "1.60", "1.28-2.00",
         "12.50x", "< 3 s", "met"],
        ["first_step", "time to first step, SmolLM2, warm worker", "s", "30.00", "16.00", "12.80-20.00", "1.88x",
         "< 15 s", "**missed**"],
        ["first_step", "time to first step, first job after server start", "s", "20.00", "14.00", "11.20-17.50",
         "1.43x", "-", "-"],
        ["serving", "chat completions throughput", "tok/s", "120", "480", "384-600", "4.00x", ">= 3x", "met"],
    ]
    targets = body.split("Targets:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert targets == [
        "- met: first_step, time to first step, modelmill-tiny, warm worker: target < 3 s, measured ModelMill "
        "1.60 s, ratio 12.50x.",
        "- MISSED: first_step, time to first step, SmolLM2, warm worker: target < 15 s, measured ModelMill "
        "16.00 s, ratio 1.88x.",
        "- met: serving, chat completions throughput: target >= 3x, measured ModelMill 480 tok/s, ratio 4.00x.",
    ]
    notes = body.split("Notes:\n", 1)[1]
    assert "- bench_gpu: skipped (no CUDA device)." in notes
    assert "No GPU was lent" in notes
    assert "- bench_serving: figures from an earlier run (2026-11-20)." in notes
    assert "- bench_job_overhead: timed out after 300 s." in notes and "- bench_memory: missing." in notes
    assert "bench_first_step:" not in notes  # ok: nothing to say
    assert "results_sft" not in body and "broken" not in body  # not Bench JSON


def test_summary_is_rewritten_in_place(out_dir: Path, tmp_path: Path):
    md = tmp_path / "BENCHMARKS.md"
    run_all.write_summary(out_dir, {}, MACHINE, md_path=md)
    (out_dir / "gpu.json").write_text(json.dumps({"bench": "gpu", "machine": "m", "date": "2026-11-22",
                                                  "rows": [a_row("GPU tokens/s", 1e4, 2e4, 2.0, None, None)],
                                                  "notes": [], "profile": None}))
    run_all.write_summary(out_dir, {}, MACHINE, md_path=md)
    text = md.read_text()
    assert text.count("<!-- BEGIN bench_summary -->") == 1
    assert "No GPU was lent" not in text and "| gpu | GPU tokens/s |" in text


def test_a_bench_script_that_does_not_exist_is_reported_missing(tmp_path: Path):
    assert run_all.run_bench(run_all.Bench("not_written_yet", limit_s=5), tmp_path) == "missing"
    assert list(tmp_path.iterdir()) == []


def test_the_limits_fit_in_30_minutes_without_a_gpu():
    total = sum(b.limit_s for b in run_all.BENCHES if b.name != "gpu") + run_all.NO_CUDA_LIMIT_S
    assert total <= 30 * 60
    assert {b.name for b in run_all.BENCHES} >= {"job_overhead", "sft_efficiency", "memory", "serving",
                                                 "first_step", "gpu", "rollouts"}


def fake_bench(folder: Path, name: str, body: str) -> None:
    (folder / f"bench_{name}.py").write_text("import argparse, json, os, subprocess, sys, time\n"
                                             "p = argparse.ArgumentParser()\np.add_argument('--json')\n"
                                             "p.add_argument('--budget-s')\nargs = p.parse_args()\n" + body)


def test_run_bench_passes_json_and_budget_and_reports_failures_and_timeouts(tmp_path: Path, monkeypatch):
    """Stand-in scripts (not benches) in a stand-in bench folder."""
    monkeypatch.setattr(run_all, "HERE", tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    fake_bench(tmp_path, "fine",
               "json.dump({'bench': 'fine', 'rows': [], 'budget': args.budget_s}, open(args.json, 'w'))\n")
    (out / "fine.json").write_text('{"stale": true}')
    assert run_all.run_bench(run_all.Bench("fine", limit_s=60, budget_s=42), out) == "ok"
    assert json.loads((out / "fine.json").read_text()) == {"bench": "fine", "rows": [], "budget": "42"}

    fake_bench(tmp_path, "broken", "sys.exit(3)\n")
    (out / "broken.json").write_text('{"stale": true}')
    assert run_all.run_bench(run_all.Bench("broken", limit_s=60), out) == "failed (exit 3)"
    assert not (out / "broken.json").exists()  # no stale figures left behind

    pid_file = tmp_path / "grandchild.pid"
    fake_bench(tmp_path, "slow", "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
                                 f"open({str(pid_file)!r}, 'w').write(str(c.pid))\ntime.sleep(120)\n")
    assert run_all.run_bench(run_all.Bench("slow", limit_s=2), out) == "timed out after 2 s"
    stat = Path(f"/proc/{int(pid_file.read_text())}/stat")
    time.sleep(0.2)
    # What the bench started was stopped with it: gone, or a zombie waiting for init to reap it.
    assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"
