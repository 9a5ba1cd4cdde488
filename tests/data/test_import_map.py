"""`modelmill import openai`'s --model-map parsing (the import itself: tests/e2e/test_data_cli.py)."""

from __future__ import annotations

import pytest

from modelmill.cli import main
from modelmill.datagen.importer import map_model, parse_model_map


def test_model_map_pairs_and_globs():
    pairs = parse_model_map(["gpt-4o-mini*=SmolLM2-135M-Instruct, gpt-4.1-2025-04-14=Qwen2.5-7B", "x=y"])
    assert pairs == [("gpt-4o-mini*", "SmolLM2-135M-Instruct"), ("gpt-4.1-2025-04-14", "Qwen2.5-7B"), ("x", "y")]
    assert map_model("gpt-4o-mini-2024-07-18", pairs) == "SmolLM2-135M-Instruct"
    assert map_model("gpt-4.1-2025-04-14", pairs) == "Qwen2.5-7B"
    assert map_model("gpt-4.1-mini", pairs) is None


@pytest.mark.parametrize("spec", ["gpt-4o-mini", "=b", "a=", ","])
def test_bad_model_map_is_a_clear_error(spec, capsys):
    assert main(["import", "openai", "--model-map", spec, "--base-url", "http://127.0.0.1:9/v1"]) == 2
    assert "--model-map" in capsys.readouterr().err
