"""The learning-results suite (bench/results): the Results JSON each story writes and the
BENCHMARKS.md section built from it. `run.py --quick` runs every story's code path on
modelmill-tiny with tiny data, against a live server, writing only under tmp_path."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.bench.helpers import RESULTS, results_module

CONTRACT_KEYS = {"story", "model", "metric", "base", "fine_tuned", "target", "met", "wall_s", "details"}


@pytest.fixture
def common():
    with results_module("common") as module:
        yield module


def test_section_is_rebuilt_from_story_json_and_leaves_other_sections(tmp_path, common):
    md = tmp_path / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n\n<!-- BEGIN other -->\n## Other\n\nkept\n<!-- END other -->\n")
    out = tmp_path / "out"
    rows = [common.row("accuracy", 0.1, 0.9, ">= 0.85", True), common.row("second", 0.2, 0.3, None, None)]
    common.write_json(common.result("sft", "m", "accuracy", 0.1, 0.9, ">= 0.85", True, 75.0,
                                    {"rows": rows, "notes": ["a note"], "date": "2026-01-02", "machine": "box"}), out)
    common.write_json(common.result("rft", "m", "reward", 0.0, 0.1, ">= 0.35", False, 3600.0, {}), out)
    for _ in range(2):  # rewriting replaces the section, never duplicates it
        common.write_section(out, md)
    text = md.read_text()
    assert text.count("<!-- BEGIN results -->") == 1 and "kept" in text
    assert "| sft | accuracy | 0.100 | 0.900 | >= 0.85 | **met** | 1 min 15 s | 2026-01-02 | box |" in text
    assert "|  | second | 0.200 | 0.300 | - | - |" in text
    assert "| rft | reward | 0.000 | 0.100 | >= 0.35 | **missed** | 60 min 00 s |" in text
    assert "- a note" in text
    assert text.index("| sft |") < text.index("| rft |")


@pytest.mark.timeout(900)  # every story's quick path in one subprocess: several minutes on 2 cores
def test_quick_run_writes_every_story(tmp_path):
    pytest.importorskip("bfcl_eval", reason="bfcl-eval is installed by `make results`")
    out, md = tmp_path / "out", tmp_path / "BENCHMARKS.md"
    proc = subprocess.run([sys.executable, str(RESULTS / "run.py"), "--quick", "--out", str(out),
                           "--benchmarks-md", str(md), "--home", str(tmp_path / "home")],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for story in ("sft", "intent", "dpo", "dpo_arith", "rft", "rft_gcd"):
        data = json.loads((out / f"results_{story}.json").read_text())
        assert set(data) == CONTRACT_KEYS
        assert data["story"] == story and data["model"] == "modelmill-tiny"
        assert isinstance(data["base"], (int, float)) and isinstance(data["fine_tuned"], (int, float))
        assert isinstance(data["met"], bool) and data["wall_s"] > 0 and data["target"]
        assert data["details"]["quick"] is True and data["details"]["rows"][0]["metric"] == data["metric"]
    text = md.read_text()
    assert "<!-- BEGIN results -->" in text
    for story in ("sft", "intent", "dpo", "dpo_arith", "rft", "rft_gcd"):
        assert f"| {story} | " in text
    sft = json.loads((out / "results_sft.json").read_text())["details"]
    assert {a["group"] for a in sft["base_answers"]} == {"smart_home", "bfcl_seen", "bfcl_unseen"}
    assert not set(sft["split"]["unseen_functions"]) & set(sft["split"]["seen_functions"] + sft["split"]["other_functions"])
