"""multi: named graders or a single one, the formula over sub-rewards, OR-ed errors, usage sums."""

from __future__ import annotations

import pytest

from modelmill import errors
from modelmill.ml.graders import GraderContext, JudgeReply, grade, grade_batch, validate_grader

NAME = {"name": "name_grader", "type": "text_similarity", "input": "{{sample.output_json.name}}",
        "reference": "{{item.name}}", "evaluation_metric": "fuzzy_match", "pass_threshold": 0.9}
EMAIL = {"name": "email_grader", "type": "string_check", "input": "{{sample.output_json.email}}",
         "reference": "{{item.email}}", "operation": "eq"}
ITEM = {"name": "John Doe", "email": "john.doe@gmail.com"}


def multi(graders, formula: str) -> dict:
    return {"type": "multi", "name": "contact", "graders": graders, "calculate_output": formula}


def test_openai_guide_example():
    grader = multi({"name": NAME, "email": EMAIL}, "(name + email) / 2")
    exact = grade(grader, '{"name": "John Doe", "email": "john.doe@gmail.com"}', ITEM)
    assert exact.reward == 1.0 and exact.sub_rewards == {"name": 1.0, "email": 1.0}
    wrong_email = grade(grader, '{"name": "John Doe", "email": "jd@x.com"}', ITEM)
    assert wrong_email.reward == 0.5 and wrong_email.sub_rewards == {"name": 1.0, "email": 0.0}
    typo = grade(grader, '{"name": "Jon Doe", "email": "john.doe@gmail.com"}', ITEM)
    assert 0.5 < typo.reward < 1.0
    assert typo.sub_rewards["name"] == pytest.approx(2 * typo.reward - 1.0)
    assert typo.type == "multi" and typo.name == "contact"


def test_openai_tool_call_example():
    grader = multi({
        "function_name": {"name": "function_name", "type": "string_check", "input": "get_acceptors",
                          "reference": "{{sample.output_tools[0].function.name}}", "operation": "eq"},
        "arguments": {"name": "arguments", "type": "string_check", "input": "{\"smiles\": \"{{item.smiles}}\"}",
                      "reference": "{{sample.output_tools[0].function.arguments}}", "operation": "eq"},
    }, "0.5 * function_name + 0.5 * arguments")
    sample = {"output_text": "", "output_tools": [{"id": "c1", "type": "function", "function": {
        "name": "get_acceptors", "arguments": "{\"smiles\": \"CCO\"}"}}]}
    assert grade(grader, sample, {"smiles": "CCO"}).reward == 1.0
    assert grade(grader, sample, {"smiles": "CO"}).reward == 0.5


def test_single_grader_form():
    grader = multi(EMAIL, "email_grader * 0.5 + string_check * 0.5")  # its name and its type both work
    result = grade(grader, '{"email": "john.doe@gmail.com"}', ITEM)
    assert result.reward == 1.0 and result.sub_rewards == {"email_grader": 1.0}
    unnamed = dict(EMAIL, name="Example string check grader")  # not an identifier: only the type is a name
    assert grade(multi(unnamed, "2 * string_check"), '{"email": "john.doe@gmail.com"}', ITEM).reward == 2.0


def test_errors_are_ored_and_formula_still_runs():
    grader = multi({"name": NAME, "email": EMAIL}, "name + email")
    result = grade(grader, '{"name": "John Doe"}', ITEM)  # no email field in the sample
    assert result.errors["invalid_variable_error"] is True
    assert result.sub_rewards == {"name": 1.0, "email": 0.0}
    assert result.reward == 1.0


def test_runtime_formula_failure_is_formula_parse_error():
    grader = multi({"name": NAME, "email": EMAIL}, "name / email")
    bad = grade(grader, '{"name": "John Doe", "email": "nope"}', ITEM)
    assert bad.errors["formula_parse_error"] is True and bad.reward == 0.0
    good = grade(grader, '{"name": "John Doe", "email": "john.doe@gmail.com"}', ITEM)
    assert good.reward == 1.0 and not good.has_error


def test_model_sub_graders_sum_usage(fake_judge):
    judge = fake_judge(lambda conv: JudgeReply(text="0.5", prompt_tokens=10, completion_tokens=2))
    score = {"type": "score_model", "name": "s", "model": "j",
             "input": [{"role": "user", "content": "{{sample.output_text}}"}]}
    label = {"type": "label_model", "name": "l", "model": "j", "labels": ["a", "b"], "passing_labels": ["a"],
             "input": [{"role": "user", "content": "x"}]}
    other = dict(score, model="k")
    grader = multi({"s": score, "t": score, "o": other, "l": label}, "s + t + o + l")
    results = grade_batch(grader, ["x", "y"], [{}, {}], context=GraderContext(judge=judge))
    for r in results:
        assert r.token_usage == 48
        assert r.model_grader_token_usage_per_model == {
            "j": {"prompt_tokens": 30, "completion_tokens": 6, "total_tokens": 36, "cached_tokens": 0},
            "k": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12, "cached_tokens": 0}}
        assert r.errors["model_grader_parse_error"] is True  # "0.5" is no label
        assert r.reward == pytest.approx(1.5)
    assert len(judge.calls) == 4  # one call per sub-grader, each for the whole batch


@pytest.mark.parametrize("grader, param", [
    (multi({"a": EMAIL}, "a + b"), "grader.calculate_output"),
    (multi({"a": EMAIL}, "a.__class__"), "grader.calculate_output"),
    (multi({"a": EMAIL}, "__import__('os')"), "grader.calculate_output"),
    (multi({"my-grader": EMAIL}, "1"), "grader.graders.my-grader"),
    (multi({"a": multi({"b": EMAIL}, "b")}, "a"), "grader.graders.a.type"),
    (multi({}, "1"), "grader.graders"),
    (multi([EMAIL], "1"), "grader.graders"),
    (multi({"a": dict(EMAIL, operation="contains")}, "a"), "grader.graders.a.operation"),
    (multi(dict(EMAIL, operation="contains"), "string_check"), "grader.graders.operation"),
    ({"type": "multi", "name": "m", "graders": {"a": EMAIL}}, "grader.calculate_output"),
])
def test_validation(grader, param):
    with pytest.raises(errors.InvalidRequestError) as info:
        validate_grader(grader)
    assert info.value.param == param
