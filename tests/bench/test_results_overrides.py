"""bench/results/run.py --set FIELD=VALUE: one field of a story's config changed for one run, read as JSON
where it parses; an unknown field stops the run before anything trains. Pure Python, no server, no model."""

from __future__ import annotations

import pytest

from tests.bench.helpers import results_module


@pytest.fixture
def run():
    with results_module("run") as module:
        yield module


def test_values_are_read_as_json_where_they_parse_else_as_text(run):
    assert run.parse_overrides(["compare_plain=false", "train_pairs=40", 'hyperparameters={"n_epochs": 2}',
                                "model=SmolLM2-135M-Instruct"]) == {
        "compare_plain": False, "train_pairs": 40, "hyperparameters": {"n_epochs": 2},
        "model": "SmolLM2-135M-Instruct"}


def test_a_pair_without_an_equals_sign_is_refused(run):
    with pytest.raises(SystemExit, match="expected FIELD=VALUE"):
        run.parse_overrides(["compare_plain"])


def test_configure_replaces_only_the_named_fields_of_the_config_that_runs(run):
    with results_module("dpo_arith_story") as story:
        full, quick = story.FULL, story.QUICK
        try:
            run.configure(story, False, {"compare_plain": False, "train_pairs": 40})
            assert story.FULL.compare_plain is False and story.FULL.train_pairs == 40
            assert story.FULL.heldout_pairs == full.heldout_pairs and story.FULL.model == full.model
            assert story.QUICK is quick  # --quick runs QUICK; the other one is untouched
        finally:
            story.FULL, story.QUICK = full, quick


def test_a_misspelt_field_stops_the_run_and_names_it(run):
    with results_module("dpo_arith_story") as story:
        full = story.FULL
        with pytest.raises(SystemExit, match="no config field compare_plan"):
            run.configure(story, False, {"compare_plan": False})
        assert story.FULL is full
