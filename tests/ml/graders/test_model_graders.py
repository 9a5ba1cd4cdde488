"""score_model / label_model with a fake Judge: prompts, parsing, range, labels, errors, usage."""

from __future__ import annotations

import pytest

from modelmill.ml.graders import GraderContext, JudgeReply, grade, grade_batch
from modelmill.ml.graders.model_graders import parse_label, parse_score

from .conftest import prompt_text

INPUT = [
    {"role": "system", "content": "Grade the answer. Reply with a number."},
    {"role": "user", "content": "Reference: {{item.ref}}\nAnswer: {{sample.output_text}}"},
]


def score_model(**extra) -> dict:
    return {"type": "score_model", "name": "judge", "model": "judge-1", "input": INPUT, **extra}


def label_model(**extra) -> dict:
    return {"type": "label_model", "name": "sentiment", "model": "judge-1",
            "labels": ["positive", "neutral", "negative"], "passing_labels": ["positive"], "input": [
                {"type": "message", "role": "system",
                 "content": {"type": "input_text", "text": "Classify: positive, neutral or negative."}},
                {"type": "message", "role": "user",
                 "content": [{"type": "input_text", "text": "Statement: {{sample.output_text}}"},
                             {"type": "input_image", "image_url": "https://example.com/{{item.img}}.png"}]}],
            **extra}


@pytest.mark.parametrize("text, expected", [
    ("0.7", 0.7), (" 1 ", 1.0), ("-2.5e-1", -0.25), ('{"result": 0.4}', 0.4), ('{"score": 3}', 3.0),
    ('{"steps": [{"description": "x", "conclusion": "y"}], "result": 0.9}', 0.9),
    ("```json\n{\"result\": 0.2}\n```", 0.2),
])
def test_parse_score(text, expected):
    assert parse_score(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["", "good", "score: 0.5", "nan", "inf", "true", '{"result": "0.5"}', "[0.5]",
                                  '{"other": 1}', "1e999"])
def test_parse_score_rejects(text):
    with pytest.raises(ValueError):
        parse_score(text)


@pytest.mark.parametrize("text, expected", [
    ("positive", "positive"), ("Positive.", "positive"), ('"negative"', "negative"),
    ('{"result": "neutral"}', "neutral"),
    ('{"label": "negative"}', "negative"), ("The sentiment is positive.", "positive"), ("**neutral**", "neutral"),
])
def test_parse_label(text, expected):
    assert parse_label(text, ["positive", "neutral", "negative"]) == expected


@pytest.mark.parametrize("text", ["", "happy", "positive or negative", "unpositive"])
def test_parse_label_rejects(text):
    with pytest.raises(ValueError):
        parse_label(text, ["positive", "neutral", "negative"])


def test_score_model_renders_prompts_and_calls_the_judge_once_per_batch(fake_judge):
    judge = fake_judge(lambda conv: "0.8" if "Answer: yes" in prompt_text(conv) else "0.1")
    params = {"temperature": 0.0, "seed": 7, "max_completions_tokens": 16, "reasoning_effort": "low"}
    results = grade_batch(score_model(sampling_params=params), ["yes", "no", "yes"], [{"ref": "r1"}, {"ref": "r2"},
                          {"ref": "r3"}], context=GraderContext(judge=judge))
    assert [r.reward for r in results] == pytest.approx([0.8, 0.1, 0.8])
    assert len(judge.calls) == 1
    model, conversations, sampling = judge.calls[0]
    assert model == "judge-1" and sampling == params
    assert conversations[1] == [{"role": "system", "content": "Grade the answer. Reply with a number."},
                                {"role": "user", "content": "Reference: r2\nAnswer: no"}]


def test_score_model_range_clamps_and_threshold(fake_judge):
    judge = fake_judge(lambda conv: {"a": "7", "b": "-3", "c": "12"}[prompt_text(conv)[-1]])
    grader = score_model(range=[0, 10], pass_threshold=5)
    results = grade_batch(grader, ["a", "b", "c"], [{"ref": ""}] * 3, context=GraderContext(judge=judge))
    assert [r.reward for r in results] == [7.0, 0.0, 10.0]
    assert [r.scores["result"] for r in results] == [7.0, -3.0, 12.0]
    assert [r.passed for r in results] == [True, False, True]
    default = grade(score_model(), "a", {"ref": ""}, context=GraderContext(judge=fake_judge(lambda c: "1.5")))
    assert default.reward == 1.0  # default range [0, 1]


def test_score_model_parse_error(fake_judge):
    result = grade(score_model(), "x", {"ref": "y"}, context=GraderContext(judge=fake_judge(lambda c: "I think 0.5")))
    assert result.reward == 0.0
    assert result.errors["model_grader_parse_error"] is True
    assert result.token_usage is not None and result.token_usage > 0  # the judge still used tokens


def test_judge_errors(fake_judge):
    boom = grade(score_model(), "x", {"ref": "y"}, context=GraderContext(judge=fake_judge(raises=RuntimeError("down"))))
    assert boom.errors["model_grader_server_error"] is True
    assert "down" in boom.errors["model_grader_server_error_details"]
    assert boom.reward == 0.0
    reply = JudgeReply(text="", error="HTTP 503 from upstream")
    failed = grade(score_model(), "x", {"ref": "y"}, context=GraderContext(judge=fake_judge(lambda c: reply)))
    assert failed.errors["model_grader_server_error_details"] == "HTTP 503 from upstream"
    none = grade(score_model(), "x", {"ref": "y"}, context=GraderContext())
    assert none.errors["model_grader_server_error"] and "no judge" in none.errors["model_grader_server_error_details"]
    refusal = JudgeReply(text="", error="refusal: cannot", refusal=True)
    refused = grade(score_model(), "x", {"ref": "y"}, context=GraderContext(judge=fake_judge(lambda c: refusal)))
    assert refused.errors["model_grader_refusal_error"] and not refused.errors["model_grader_server_error"]


def test_wrong_number_of_replies_is_a_server_error():
    class Short:
        def complete_batch(self, model, conversations, sampling_params):
            return [JudgeReply(text="1")]

    results = grade_batch(score_model(), ["a", "b"], [{"ref": ""}] * 2, context=GraderContext(judge=Short()))
    assert all(r.errors["model_grader_server_error"] for r in results)


def test_token_usage(fake_judge):
    judge = fake_judge(lambda conv: JudgeReply(text="0.5", prompt_tokens=100, completion_tokens=7))
    result = grade(score_model(), "x", {"ref": "y"}, context=GraderContext(judge=judge))
    assert result.token_usage == 107
    assert result.model_grader_token_usage_per_model == {
        "judge-1": {"prompt_tokens": 100, "completion_tokens": 7, "total_tokens": 107, "cached_tokens": 0}}
    response = result.to_run_grader_response()
    assert response["metadata"]["sampled_model_name"] == "judge-1"
    assert response["metadata"]["token_usage"] == 107


def test_template_error_skips_the_judge_for_that_sample(fake_judge):
    judge = fake_judge(lambda conv: "1")
    results = grade_batch(score_model(), ["a", "b"], [{"ref": "r"}, {}], context=GraderContext(judge=judge))
    assert results[0].reward == 1.0 and results[1].errors["invalid_variable_error"]
    assert len(judge.calls[0][1]) == 1


def test_label_model(fake_judge):
    judge = fake_judge(lambda conv: {"great": "positive", "meh": "Neutral.", "awful": '{"result": "negative"}',
                                     "???": "no idea"}[prompt_text(conv).split("Statement: ")[1].split("\n")[0]])
    results = grade_batch(label_model(), ["great", "meh", "awful", "???"], [{"img": "cat"}] * 4,
                          context=GraderContext(judge=judge))
    assert [r.reward for r in results] == [1.0, 0.0, 0.0, 0.0]
    assert [r.passed for r in results] == [True, False, False, False]
    assert [r.scores.get("label") for r in results] == ["positive", "neutral", "negative", None]
    assert results[3].errors["model_grader_parse_error"]
    user = judge.calls[0][1][0][1]
    assert user["content"][0] == {"type": "input_text", "text": "Statement: great"}
    assert user["content"][1]["image_url"] == "https://example.com/cat.png"  # templates in image URLs too
    assert judge.calls[0][1][0][0]["content"] == {"type": "input_text",
                                                  "text": "Classify: positive, neutral or negative."}
