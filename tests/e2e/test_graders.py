"""graders/run and graders/validate through the official openai SDK against a live server."""

from __future__ import annotations

import json

import openai
import pytest

from tests.spec_check import assert_matches

STRING_CHECK = {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
                "reference": "{{item.label}}", "operation": "eq"}
FUZZY = {"type": "text_similarity", "name": "fuzzy", "input": "{{sample.output_text}}",
         "reference": "{{item.label}}", "evaluation_metric": "fuzzy_match"}


def test_run_string_check(client):
    raw = client.fine_tuning.alpha.graders.with_raw_response.run(
        grader=STRING_CHECK, model_sample="kitchen on", item={"label": "kitchen on"})
    assert_matches(json.loads(raw.http_response.text), "RunGraderResponse")
    result = raw.parse()
    assert result.reward == 1.0
    assert result.metadata.type == "string_check" and result.metadata.name == "exact"
    assert result.metadata.errors.other_error is False


def test_run_multi(client):
    result = client.fine_tuning.alpha.graders.run(
        grader={"type": "multi", "name": "combo", "calculate_output": "0.5 * exact + 0.5 * fuzzy",
                "graders": {"exact": STRING_CHECK, "fuzzy": FUZZY}},
        model_sample="kitchen on", item={"label": "kitchen on"})
    assert result.reward == pytest.approx(1.0)
    assert set(result.sub_rewards) == {"exact", "fuzzy"}


def test_validate(client):
    ok = client.fine_tuning.alpha.graders.validate(grader=FUZZY)
    assert ok.grader.type == "text_similarity" and ok.grader.evaluation_metric == "fuzzy_match"
    with pytest.raises(openai.BadRequestError) as e:
        client.fine_tuning.alpha.graders.validate(grader={**STRING_CHECK, "operation": "contains"})
    assert e.value.status_code == 400 and e.value.param == "grader.operation"
