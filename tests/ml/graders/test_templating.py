"""OpenAI's templating rules: {{item.x}}, {{sample.output_text}}, output_json, output_tools."""

from __future__ import annotations

import pytest

from modelmill.ml.graders import InvalidVariable, grade, render, sample_from_text
from modelmill.ml.graders.templating import parse_path

ITEM = {"answer": "Paris", "meta": {"tags": ["geo", "capital"], "score": 0.5, "ok": True, "none": None},
        "key with spaces": "spaced", "n": 3}
TOOLS = [{"id": "call_1", "type": "function",
          "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]


def test_item_and_nested_values():
    sample = sample_from_text("hi")
    assert render("A: {{item.answer}}", sample, ITEM) == "A: Paris"
    assert render("{{ item.meta.tags[1] }}", sample, ITEM) == "capital"  # whitespace inside braces
    assert render('{{item["key with spaces"]}}', sample, ITEM) == "spaced"
    assert render("{{item.meta['tags'][0]}}", sample, ITEM) == "geo"


def test_non_strings_render_as_json():
    sample = sample_from_text("hi")
    assert render("{{item.n}}", sample, ITEM) == "3"
    assert render("{{item.meta.score}}", sample, ITEM) == "0.5"
    assert render("{{item.meta.ok}}", sample, ITEM) == "true"
    assert render("{{item.meta.none}}", sample, ITEM) == "null"
    assert render("{{item.meta.tags}}", sample, ITEM) == '["geo", "capital"]'


def test_sample_namespace():
    sample = sample_from_text('{"city": "Paris", "n": [1, 2]}')
    sample["output_tools"] = TOOLS
    assert render("{{sample.output_text}}", sample, ITEM) == '{"city": "Paris", "n": [1, 2]}'
    assert render("{{sample.output_json.city}}", sample, ITEM) == "Paris"
    assert render("{{sample.output_json.n}}", sample, ITEM) == "[1, 2]"
    assert render("{{sample.output_tools[0].function.name}}", sample, ITEM) == "get_weather"
    assert render("{{sample.output_tools[0].function.arguments}}", sample, ITEM) == '{"city": "Paris"}'


def test_text_without_variables_is_untouched():
    sample = sample_from_text("x")
    assert render("no braces { here } {{ }", sample, ITEM) == "no braces { here } {{ }"


@pytest.mark.parametrize("template", [
    "{{item.missing}}", "{{item.meta.tags[5]}}", "{{item.answer.deeper}}", "{{item}}", "{{other.answer}}",
    "{{sample.unknown_field}}", "{{item.meta.tags.x}}", "{{item..x}}", "{{ 1 + 2 }}",
])
def test_unknown_or_malformed_variable_raises(template):
    with pytest.raises(InvalidVariable):
        render(template, sample_from_text("x"), ITEM)


def test_output_json_of_non_json_sample_is_a_sample_parse_problem():
    with pytest.raises(InvalidVariable) as info:
        render("{{sample.output_json.city}}", sample_from_text("not json"), ITEM)
    assert info.value.sample_parse


def test_parse_path():
    assert parse_path(' item.a[0]["b c"].d ') == ["item", "a", 0, "b c", "d"]


def _check(input_template: str) -> dict:
    return {"type": "string_check", "name": "c", "input": input_template, "reference": "Paris", "operation": "eq"}


def test_grading_reports_invalid_variable_without_crashing():
    result = grade(_check("{{item.nope}}"), "Paris", ITEM)
    assert result.reward == 0.0
    assert result.errors["invalid_variable_error"] is True
    assert not result.errors["other_error"]


def test_grading_reports_sample_parse_error_for_output_json_of_text():
    result = grade(_check("{{sample.output_json.city}}"), "plain text", ITEM)
    assert result.reward == 0.0
    assert result.errors["sample_parse_error"] is True
    ok = grade(_check("{{sample.output_json.city}}"), '{"city": "Paris"}', ITEM)
    assert ok.reward == 1.0 and not ok.has_error
