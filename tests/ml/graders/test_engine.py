"""The engine: samples, parallel order, failures as results, the wire response, the registry."""

from __future__ import annotations

import random
import threading
import time

import pytest

from modelmill.ml.graders import (GRADERS, GradeResult, GraderContext, JudgeReply, grade, grade_batch,
                                  normalize_sample, register, sample_from_text)
from modelmill.ml.graders.engine import ERROR_KEYS, map_samples
from modelmill.ml.graders.sandbox import SandboxConfig
from tests.spec_check import assert_matches


def test_sample_from_text():
    assert sample_from_text('{"a": 1}') == {"output_text": '{"a": 1}', "output_json": {"a": 1},
                                            "output_tools": [], "choices": []}
    assert sample_from_text("plain")["output_json"] is None


def test_normalize_sample_from_chat_choices():
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    choices = [{"index": 0, "message": {"role": "assistant", "content": "42", "tool_calls": [call]},
                "finish_reason": "tool_calls"}]
    sample = normalize_sample({"choices": choices})
    assert sample["output_text"] == "42" and sample["output_json"] == 42 and sample["output_tools"] == [call]
    kept = normalize_sample({"output_text": "x", "output_json": {"k": 1}, "extra": True})
    assert kept["output_json"] == {"k": 1} and kept["extra"] is True and kept["output_tools"] == []
    with pytest.raises(TypeError):
        normalize_sample(42)


@pytest.fixture
def sleepy_type():
    """A registered test grader: sleeps a random moment, reward = the sample's index."""
    seen_threads = set()

    def one(spec, sample, item, context):
        seen_threads.add(threading.get_ident())
        time.sleep(random.uniform(0, 0.02))
        return GradeResult(reward=float(item["i"]))

    register("sleepy", lambda spec, samples, items, ctx: map_samples(one, spec, samples, items, ctx))
    yield seen_threads
    del GRADERS["sleepy"]


def test_grade_batch_is_parallel_and_keeps_order(sleepy_type):
    n = 40
    started = time.perf_counter()
    results = grade_batch({"type": "sleepy", "name": "s"}, ["x"] * n, [{"i": i} for i in range(n)],
                          context=GraderContext(max_workers=8))
    assert [r.reward for r in results] == list(range(n))
    assert len(sleepy_type) > 1
    assert time.perf_counter() - started < n * 0.01  # serial would take ~0.4 s
    assert all(r.name == "s" and r.type == "sleepy" for r in results)


def test_a_crashing_grader_gives_other_error_per_sample():
    def broken(spec, samples, items, context):
        raise RuntimeError("bug")

    register("broken", broken)
    try:
        results = grade_batch({"type": "broken"}, ["a", "b"], [{}, {}])
    finally:
        del GRADERS["broken"]
    assert [r.errors["other_error"] for r in results] == [True, True]
    assert results[0].name == "broken"  # the name defaults to the type


def test_batch_argument_checks():
    grader = {"type": "string_check", "name": "c", "input": "a", "reference": "a", "operation": "eq"}
    with pytest.raises(ValueError):
        grade_batch(grader, ["a", "b"], [{}])
    with pytest.raises(TypeError):
        grade_batch(grader, ["a"], ["not a dict"])
    assert grade_batch(grader, [], []) == []
    assert grade(grader, "a").reward == 1.0  # item defaults to {}


def test_errors_dict_has_exactly_openais_keys():
    result = grade({"type": "string_check", "name": "c", "input": "a", "reference": "a", "operation": "eq"}, "a")
    assert tuple(result.errors) == ERROR_KEYS


# -- every grader type's result matches OpenAI's RunGraderResponse ------------------------------------

def _judge():
    class Judge:
        def complete_batch(self, model, conversations, sampling_params):
            return [JudgeReply(text="positive" if "label" in model else "0.6", prompt_tokens=5, completion_tokens=1)
                    for _ in conversations]
    return Judge()


CHECK = {"type": "string_check", "name": "check", "input": "{{sample.output_text}}", "reference": "{{item.ref}}",
         "operation": "eq"}
SIMILARITY = {"type": "text_similarity", "name": "sim", "input": "{{sample.output_text}}", "reference": "{{item.ref}}",
              "evaluation_metric": "rouge_l", "pass_threshold": 0.5}
PYTHON = {"type": "python", "name": "py", "source": "def grade(sample, item):\n    return 0.75\n"}
SCORE = {"type": "score_model", "name": "score", "model": "judge",
         "input": [{"role": "user", "content": "{{item.ref}}"}]}
LABEL = {"type": "label_model", "name": "label", "model": "label-judge", "labels": ["positive", "negative"],
         "passing_labels": ["positive"], "input": [{"role": "user", "content": "{{sample.output_text}}"}]}
MULTI = {"type": "multi", "name": "multi", "calculate_output": "(check + sim + score + label) / 4",
         "graders": {"check": CHECK, "sim": SIMILARITY, "score": SCORE, "label": LABEL}}
BAD_FORMULA = dict(MULTI, calculate_output="check / (sim - sim)")
MISSING_VARIABLE = dict(CHECK, input="{{item.nope}}")


@pytest.mark.parametrize("grader", [CHECK, SIMILARITY, PYTHON, SCORE, LABEL, MULTI, BAD_FORMULA, MISSING_VARIABLE],
                         ids=lambda g: f"{g['type']}-{g['name']}-{g.get('input', '')[:8]}")
def test_run_grader_response_matches_openai_schema(grader):
    context = GraderContext(judge=_judge(), sandbox=SandboxConfig(backend="unsafe-subprocess"))
    for sample in ("the answer", '{"k": [1, 2]}'):
        result = grade(grader, sample, {"ref": "the answer"}, context=context)
        response = result.to_run_grader_response()
        assert_matches(response, "RunGraderResponse")
        assert response["metadata"]["name"] == grader["name"]
        assert response["metadata"]["type"] == grader["type"]


def test_run_grader_response_values():
    context = GraderContext(judge=_judge(), sandbox=SandboxConfig(backend="unsafe-subprocess"))
    response = grade(MULTI, "the answer", {"ref": "the answer"}, context=context).to_run_grader_response()
    assert response["reward"] == pytest.approx((1 + 1 + 0.6 + 1) / 4)
    assert response["sub_rewards"] == {"check": 1.0, "sim": 1.0, "score": 0.6, "label": 1.0}
    assert response["metadata"]["token_usage"] == 12
    assert set(response["model_grader_token_usage_per_model"]) == {"judge", "label-judge"}
    assert response["metadata"]["sampled_model_name"] is None  # two judges: none is "the" sampled model
    named = grade(PYTHON, "x", context=context).to_run_grader_response("ft:m")
    assert named["metadata"]["sampled_model_name"] == "ft:m"
    bad = grade(BAD_FORMULA, "the answer", {"ref": "the answer"}, context=context).to_run_grader_response()
    assert bad["metadata"]["errors"]["formula_parse_error"] is True and bad["reward"] == 0.0
