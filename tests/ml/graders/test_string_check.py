"""string_check: eq / ne / like / ilike with templated input and reference; reward 1.0 or 0.0."""

from __future__ import annotations

import pytest

from modelmill.ml.graders import grade


def check(operation: str, input_template: str = "{{sample.output_text}}", reference: str = "{{item.ref}}") -> dict:
    return {"type": "string_check", "name": "check", "input": input_template, "reference": reference,
            "operation": operation}


@pytest.mark.parametrize("operation, output, ref, expected", [
    ("eq", "Paris", "Paris", 1.0), ("eq", "paris", "Paris", 0.0), ("eq", "Paris ", "Paris", 0.0),
    ("ne", "Paris", "London", 1.0), ("ne", "Paris", "Paris", 0.0), ("ne", "paris", "Paris", 1.0),
    ("like", "The capital is Paris.", "Paris", 1.0), ("like", "The capital is paris.", "Paris", 0.0),
    ("like", "abc", "abcd", 0.0), ("like", "anything", "", 1.0),
    ("like", "100% sure", "100%", 1.0), ("like", "1000 sure", "10%", 0.0),  # no SQL wildcards
    ("ilike", "The capital is PARIS.", "paris", 1.0), ("ilike", "The capital is Rome.", "paris", 0.0),
    ("ilike", "STRASSE", "straße", 1.0),
])
def test_operations(operation, output, ref, expected):
    result = grade(check(operation), output, {"ref": ref})
    assert result.reward == expected
    assert result.passed is (expected == 1.0)
    assert not result.has_error


def test_both_sides_are_templated():
    grader = check("eq", input_template="{{sample.output_json.answer}}", reference="{{item.gold.text}}")
    assert grade(grader, '{"answer": "42"}', {"gold": {"text": "42"}}).reward == 1.0
    # Non-string values render as JSON on both sides.
    grader = check("eq", input_template="{{sample.output_json.answer}}", reference="{{item.gold}}")
    assert grade(grader, '{"answer": 42}', {"gold": 42}).reward == 1.0


def test_literal_strings_need_no_template():
    assert grade(check("eq", input_template="get_weather", reference="get_weather"), "ignored", {}).reward == 1.0
