"""relative_score_model: a judge scores each group of samples (consecutive equal items) together."""

from __future__ import annotations

import json

import pytest

from modelmill.errors import InvalidRequestError
from modelmill.ml.graders import GraderContext, JudgeReply, grade_batch, validate_grader
from modelmill.ml.graders.relative_judge import groups, parse_scores

SPEC = {"type": "relative_score_model", "name": "ruler", "model": "judge",
        "input": [{"role": "system", "content": "Task: {{item.task}}. Prefer attempts that use the tool."}],
        "range": [0, 10], "pass_threshold": 5}


class FakeJudge:
    """Replies with `replies` in order, recording each conversation."""

    def __init__(self, *replies: str):
        self.replies, self.seen = list(replies), []

    def complete_batch(self, model, conversations, sampling_params):
        self.seen += conversations
        return [JudgeReply(text=self.replies.pop(0), prompt_tokens=10, completion_tokens=5) for _ in conversations]


def test_groups_are_runs_of_equal_items():
    assert groups([{"a": 1}, {"a": 1}, {"a": 2}, {"a": 1}]) == [[0, 1], [2], [3]]


def test_each_group_is_scored_in_one_judge_call_and_clamped():
    judge = FakeJudge('{"scores": [2, 12]}', "```json\n[7]\n```")
    samples = [{"output_text": "a", "messages": [{"role": "assistant", "content": "first"}]},
               {"output_text": "b"}, {"output_text": "c"}]
    items = [{"task": "add"}, {"task": "add"}, {"task": "sub"}]
    results = grade_batch(validate_grader(SPEC), samples, items, context=GraderContext(judge=judge))
    assert [r.reward for r in results] == [2.0, 10.0, 7.0] and [r.passed for r in results] == [False, True, True]
    assert len(judge.seen) == 2 and judge.seen[0][0]["content"].startswith("Task: add.")
    listing = judge.seen[0][-1]["content"]
    assert "2 attempts" in listing and '"first"' in listing and "Attempt 2:" in listing
    assert results[0].token_usage == 15 and results[1].token_usage is None


@pytest.mark.parametrize("reply", ['{"scores": [1]}', "seven", '{"scores": [1, "x"]}'])
def test_a_reply_without_one_score_per_attempt_is_a_parse_error_for_the_group(reply):
    results = grade_batch(validate_grader(SPEC), [{"output_text": "a"}] * 2, [{"task": "t"}] * 2,
                          context=GraderContext(judge=FakeJudge(reply)))
    assert all(r.errors["model_grader_parse_error"] and r.reward == 0 for r in results)


def test_sample_templates_and_bad_specs():
    spec = {**SPEC, "input": [{"role": "user", "content": "{{sample.output_text}}"}]}
    [r] = grade_batch(validate_grader(spec), [{"output_text": "a"}], [{}], context=GraderContext(judge=FakeJudge()))
    assert r.errors["invalid_variable_error"]
    with pytest.raises(InvalidRequestError) as ei:
        validate_grader({**SPEC, "range": [1, 0]}, path="grader")
    assert ei.value.param == "grader.range"
    with pytest.raises(InvalidRequestError, match="Unrecognized request argument"):
        validate_grader({**SPEC, "group_size": 4}, path="grader")
    assert parse_scores(json.dumps({"scores": [0.5, 1]}), 2) == [0.5, 1.0]
