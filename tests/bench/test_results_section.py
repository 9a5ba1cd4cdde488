"""bench/results/common.write_section merges one story's fresh Results JSON into the `results` section
already in BENCHMARKS.md: the other stories' rows and notes stay byte for byte, the re-run story's
previous block stays below the new one as its one earlier run. Pure Python, no server, no model."""

from __future__ import annotations

import pytest

from tests.bench.helpers import results_module

INTRO = "Written by `make results` (`bench/results/run.py`): hand-edited intro, replaced by the writer's own."
HEADER = ("| story | metric | base | fine-tuned | target | met / missed | wall time | date | machine |\n"
          "|---|---|---:|---:|---|---|---:|---|---|")
SFT_ROWS = ("| sft | exact call | 0.000 | 0.917 | >= 85% | **met** | 86 min 30 s | 2026-11-21 | box |\n"
            "|  | held-out functions | 0.000 | 0.467 | reported, no target | - |  |  |  |")
INTENT_ROWS = ("| intent | exact label | 0.000 | 0.600 | >= 0.85 | **missed** | 8 min 46 s | 2026-12-03 | box |\n"
               "|  | training time, minutes | - | 6.800 | < 20 | **met** |  |  |  |")
OLDEST_INTENT_ROWS = ("| intent (earlier run, kept for comparison) | polite only | 0.000 | 0.567 | >= 0.85 | **missed** "
                      "| 8 min 07 s | 2026-12-03 | box |")
DPO_ROWS = "| dpo | preference accuracy | 0.250 | 0.167 | > base | **missed** | 11 min 36 s | 2026-11-21 | box |"
SFT_NOTES = "**sft** (SmolLM2-135M-Instruct):\n\n- Training: 214 lines.\n- No large model runs offline."
INTENT_NOTES = ("**intent** (SmolLM2-135M-Instruct):\n\n- Latest run: **0.800** in-process.\n\n"
                "Earlier run (polite templates only):\n\n- Training: 144 lines.")
DPO_NOTES = "**dpo** (SmolLM2-135M-Instruct):\n\n- Judge: a `score_model` grader."


@pytest.fixture
def common():
    with results_module("common") as module:
        yield module


def section(*parts: str) -> str:
    return "<!-- BEGIN results -->\n## Learning results\n\n" + "\n".join(parts) + "\n<!-- END results -->"


@pytest.fixture
def md(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    body = "\n".join([INTRO, "", HEADER, SFT_ROWS, INTENT_ROWS, OLDEST_INTENT_ROWS, DPO_ROWS, "",
                      SFT_NOTES, "", INTENT_NOTES, "", DPO_NOTES])
    path.write_text("# Benchmarks\n\n" + section(body) + "\n\n<!-- BEGIN other -->\nkept\n<!-- END other -->\n")
    return path


def intent_result(common, accuracy: float, note: str) -> dict:
    rows = [common.row("exact label", 0.0, accuracy, ">= 0.85", accuracy >= 0.85),
            common.row("training time, minutes", None, 7.0, "< 20", True)]
    return common.result("intent", "SmolLM2-135M-Instruct", "exact label", 0.0, accuracy, ">= 0.85",
                         accuracy >= 0.85, 600.0, {"rows": rows, "notes": [note], "date": "2026-12-04",
                                                   "machine": "box"})


def test_one_story_rerun_keeps_the_others_and_one_earlier_run(tmp_path, md, common):
    out = tmp_path / "out"
    common.write_json(intent_result(common, 0.9, "lr 3.0, 5 epochs."), out)
    common.write_section(out, md)
    text = md.read_text()
    new_rows = ("| intent | exact label | 0.000 | 0.900 | >= 0.85 | **met** | 10 min 00 s | 2026-12-04 | box |\n"
                "|  | training time, minutes | - | 7.000 | < 20 | **met** |  |  |  |")
    earlier_rows = INTENT_ROWS.replace("| intent |", "| intent (earlier run, kept for comparison) |", 1)
    new_notes = "**intent** (SmolLM2-135M-Instruct):\n\n- lr 3.0, 5 epochs."
    earlier_notes = INTENT_NOTES.replace("**intent**", "**intent (earlier run, kept for comparison)**", 1)
    # The other stories' blocks are untouched and in place; the new intent block sits where the old one
    # was, with the previous run right below it and the oldest run gone.
    body = "\n".join([HEADER, SFT_ROWS, new_rows, earlier_rows, DPO_ROWS, "",
                      SFT_NOTES, "", new_notes, "", earlier_notes, "", DPO_NOTES])
    assert text.endswith(f"\n\n{body}\n<!-- END results -->\n\n<!-- BEGIN other -->\nkept\n<!-- END other -->\n")
    assert "hand-edited intro" not in text and OLDEST_INTENT_ROWS not in text

    common.write_section(out, md)  # the same JSON again: nothing changes, no earlier run of itself
    assert md.read_text() == text

    common.write_json(intent_result(common, 0.95, "NEFTune."), out)
    common.write_section(out, md)
    text = md.read_text()
    assert text.count("| intent (earlier run, kept for comparison) |") == 1
    assert text.count("**intent (earlier run, kept for comparison)**") == 1
    assert "| intent | exact label | 0.000 | 0.950 |" in text
    assert new_rows.replace("| intent |", "| intent (earlier run, kept for comparison) |", 1) in text
    assert "- lr 3.0, 5 epochs.\n\n**dpo**" in text and "Earlier run (polite templates only)" not in text
    assert text.index("0.950") < text.index("0.900") < text.index("| dpo |")


def test_a_story_never_seen_is_appended_and_no_json_changes_nothing(tmp_path, md, common):
    out = tmp_path / "out"
    before = md.read_text()
    common.write_section(out, md)
    assert md.read_text() == before
    common.write_json(common.result("rft", "m", "reward", 0.2, 0.4, ">= 0.35", True, 60.0,
                                    {"notes": ["a note"]}), out)
    common.write_section(out, md)
    text = md.read_text()
    assert f"{DPO_ROWS}\n| rft | reward | 0.200 | 0.400 | >= 0.35 | **met** | 1 min 00 s |  |  |\n\n" in text
    assert text.endswith(f"{DPO_NOTES}\n\n**rft** (m):\n\n- a note\n<!-- END results -->\n\n"
                         "<!-- BEGIN other -->\nkept\n<!-- END other -->\n")
    for block in (SFT_ROWS, INTENT_ROWS, OLDEST_INTENT_ROWS, SFT_NOTES, INTENT_NOTES):
        assert block in text
    assert "earlier run" not in text.replace(OLDEST_INTENT_ROWS, "").replace("Earlier run (polite", "")


def test_without_a_section_the_body_is_the_fresh_one(common):
    r = intent_result(common, 0.9, "a note")
    assert common.merged_body(None, [r]) == common.section_body([r])
