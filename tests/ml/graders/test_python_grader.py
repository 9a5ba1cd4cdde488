"""python graders through the sandbox's "unsafe-subprocess" backend (no bwrap needed here; the
sandbox's own tests cover isolation): scores, the error mapping, batching, source checks."""

from __future__ import annotations

import pytest

from modelmill import errors
from modelmill.ml.graders import GraderContext, grade, grade_batch, validate_grader
from modelmill.ml.graders.sandbox import SandboxConfig

CTX = GraderContext(sandbox=SandboxConfig(backend="unsafe-subprocess", wall_seconds=1.0))

SOURCE = '''
import json

def grade(sample, item):
    text = sample["output_text"]
    if text == "raise":
        raise ValueError("bad input " + item["x"])
    if text == "string":
        return "1.0"
    if text == "nan":
        return float("nan")
    if text == "spin":
        while True:
            pass
    if "v" in sample["output_json"]:
        return float(sample["output_json"]["v"])
    return 1.0 if text == item["x"] else 0.25
'''


def python(**extra) -> dict:
    return {"type": "python", "name": "py", "source": SOURCE, **extra}


def test_scores_and_error_mapping_in_one_batch():
    samples = ["a", "b", '{"v": 0.5}', "raise", "string", "nan", "spin", "a"]
    results = grade_batch(python(), samples, [{"x": "a"}] * len(samples), context=CTX)
    assert [r.reward for r in results] == [1.0, 0.25, 0.5, 0.0, 0.0, 0.0, 0.0, 1.0]
    assert not any(r.has_error for r in (results[0], results[1], results[2], results[7]))
    raised = results[3].errors
    assert raised["python_grader_runtime_error"] and "ValueError: bad input a" in raised[
        "python_grader_runtime_error_details"]
    assert "must return a number" in results[4].errors["python_grader_runtime_error_details"]
    assert "non-finite" in results[5].errors["python_grader_runtime_error_details"]
    assert results[6].errors["python_grader_runtime_error"] and results[6].errors["unresponsive_reward_error"]
    assert all(not r.errors["python_grader_server_error"] for r in results)


def test_non_json_output_gives_an_empty_output_json():
    assert grade(python(), "b", {"x": "a"}, context=CTX).reward == 0.25


def test_pass_threshold():
    assert grade(python(pass_threshold=0.5), "a", {"x": "a"}, context=CTX).passed is True
    assert grade(python(pass_threshold=0.5), "b", {"x": "a"}, context=CTX).passed is False


def test_unavailable_sandbox_is_a_server_error():
    context = GraderContext(sandbox=SandboxConfig(backend="bwrap", bwrap="/nonexistent/bwrap"))
    result = grade(python(), "a", {"x": "a"}, context=context)
    assert result.reward == 0.0
    assert result.errors["python_grader_server_error"] is True
    assert result.errors["python_grader_server_error_type"] == "sandbox_unavailable"


@pytest.mark.parametrize("source, fragment", [
    ("def other(sample, item):\n    return 1.0\n", "must define"),
    ("def grade(sample, item)\n    return 1.0\n", "does not compile"),
    ("def grade(sample):\n    return 1.0\n", "two positional arguments"),
    ("def grade(sample, item):\n    return 1.0\n" + "#" * (256 * 1024), "limit"),
    (42, "string"),
])
def test_source_is_checked(source, fragment):
    with pytest.raises(errors.InvalidRequestError) as info:
        validate_grader({"type": "python", "name": "py", "source": source})
    assert info.value.param == "grader.source"
    assert fragment in info.value.message


def test_source_error_path_inside_multi():
    with pytest.raises(errors.InvalidRequestError) as info:
        validate_grader({"type": "multi", "name": "m", "calculate_output": "code",
                         "graders": {"code": {"type": "python", "name": "code", "source": "x = 1"}}})
    assert info.value.param == "grader.graders.code.source"
