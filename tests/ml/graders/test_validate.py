"""validate_grader: OpenAI's shapes, normalisation, and the exact field path of each problem."""

from __future__ import annotations

import pytest

from modelmill import errors
from modelmill.ml.graders import validate_grader

CHECK = {"type": "string_check", "name": "c", "input": "{{sample.output_text}}", "reference": "{{item.a}}",
         "operation": "eq"}
SIM = {"type": "text_similarity", "name": "s", "input": "x", "reference": "y", "evaluation_metric": "bleu"}
SCORE = {"type": "score_model", "name": "m", "model": "judge", "input": [
    {"role": "system", "content": "grade"},
    {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "{{item.q}}"},
                                                    {"type": "input_image", "image_url": "https://x/y.png"}]}]}
LABEL = {"type": "label_model", "name": "l", "model": "judge", "labels": ["yes", "no"], "passing_labels": ["yes"],
         "input": [{"role": "user", "content": {"type": "input_text", "text": "{{sample.output_text}}"}}]}
PY = {"type": "python", "name": "p", "source": "def grade(sample, item):\n    return 1.0\n", "image_tag": "2025-05-08"}


@pytest.mark.parametrize("grader", [CHECK, SIM, dict(SIM, pass_threshold=0.5), SCORE, LABEL, PY,
                                    dict(SCORE, range=[0, 100], pass_threshold=50,
                                         sampling_params={"temperature": 0, "top_p": 1, "seed": 3,
                                                          "max_completions_tokens": 100, "reasoning_effort": "low"}),
                                    {"type": "multi", "name": "mm", "graders": {"a": CHECK, "b": SIM, "p": PY},
                                     "calculate_output": "max(a, b) ^ 2 + p"}])
def test_valid_graders_pass_and_are_returned(grader):
    assert validate_grader(grader) == grader


def test_missing_name_defaults_to_type():
    out = validate_grader({k: v for k, v in CHECK.items() if k != "name"})
    assert out["name"] == "string_check"


@pytest.mark.parametrize("grader,param", [
    (CHECK | {"x_extra": 1}, "grader.x_extra"),
    (SIM | {"pass_treshold": 0.5}, "grader.pass_treshold"),
    ({"type": "multi", "name": "mm", "graders": {"a": CHECK | {"oops": 1}}, "calculate_output": "a"},
     "grader.graders.a.oops"),
    ({"type": "score_model", "name": "s", "model": "m", "modle": "m2",
      "input": [{"role": "user", "content": "x"}]}, "grader.modle"),
    ({"type": "score_model", "name": "s", "model": "m", "input": [{"role": "user", "content": "x", "weight": 1}]},
     "grader.input[0].weight"),
    ({"type": "score_model", "name": "s", "model": "m", "input": [{"role": "user", "content": "x"}],
      "sampling_params": {"max_tokens": 5}}, "grader.sampling_params.max_tokens"),
])
def test_unknown_fields_are_refused_naming_their_path(grader, param):
    """As OpenAI refuses them: a misspelled field is never silently ignored."""
    with pytest.raises(errors.InvalidRequestError) as e:
        validate_grader(grader)
    assert e.value.param == param and e.value.message == f"Unrecognized request argument supplied: {param}"


def _with(base: dict, **changes) -> dict:
    out = dict(base)
    for key, value in changes.items():
        if value is ...:
            out.pop(key, None)
        else:
            out[key] = value
    return out


@pytest.mark.parametrize("grader, param", [
    ("not a grader", "grader"),
    ({"name": "x"}, "grader.type"),
    (_with(CHECK, type="regex"), "grader.type"),
    (_with(CHECK, name=3), "grader.name"),
    (_with(CHECK, operation="contains"), "grader.operation"),
    (_with(CHECK, input=...), "grader.input"),
    (_with(CHECK, reference=5), "grader.reference"),
    (_with(CHECK, input="{{items.a}}"), "grader.input"),
    (_with(CHECK, reference="{{sample.text}}"), "grader.reference"),
    (_with(SIM, evaluation_metric="rouge_6"), "grader.evaluation_metric"),
    (_with(SIM, pass_threshold="high"), "grader.pass_threshold"),
    (_with(SCORE, model=""), "grader.model"),
    (_with(SCORE, input=[]), "grader.input"),
    (_with(SCORE, input=[{"role": "robot", "content": "x"}]), "grader.input[0].role"),
    (_with(SCORE, input=[{"role": "user"}]), "grader.input[0].content"),
    (_with(SCORE, input=[{"role": "user", "content": "x", "type": "note"}]), "grader.input[0].type"),
    (_with(SCORE, input=[{"role": "user", "content": [{"type": "input_text", "text": "{{x.y}}"}]}]),
     "grader.input[0].content[0].text"),
    (_with(SCORE, input=[{"role": "user", "content": "ok"}, {"role": "user", "content": [{"type": "video"}]}]),
     "grader.input[1].content[0].type"),
    (_with(SCORE, input=[{"role": "user", "content": {"type": "input_audio", "input_audio": {"data": "x",
                                                                                             "format": "ogg"}}}]),
     "grader.input[0].content.input_audio.format"),
    (_with(SCORE, range=[1, 0]), "grader.range"),
    (_with(SCORE, range=[0, 1, 2]), "grader.range"),
    (_with(SCORE, sampling_params={"temperature": "hot"}), "grader.sampling_params.temperature"),
    (_with(SCORE, sampling_params={"max_completions_tokens": 0}), "grader.sampling_params.max_completions_tokens"),
    (_with(SCORE, sampling_params={"seed": 1.5}), "grader.sampling_params.seed"),
    (_with(SCORE, sampling_params={"reasoning_effort": "extreme"}), "grader.sampling_params.reasoning_effort"),
    (_with(SCORE, sampling_params=[]), "grader.sampling_params"),
    (_with(LABEL, labels=[]), "grader.labels"),
    (_with(LABEL, labels=["yes", "yes"]), "grader.labels"),
    (_with(LABEL, passing_labels=["maybe"]), "grader.passing_labels"),
    (_with(LABEL, passing_labels=...), "grader.passing_labels"),
    (_with(PY, source="x = 1"), "grader.source"),
    (_with(PY, image_tag=1), "grader.image_tag"),
    ({"type": "multi", "name": "m", "graders": {"a": _with(SCORE, input=[{"role": "x", "content": "y"}])},
      "calculate_output": "a"}, "grader.graders.a.input[0].role"),
    ({"type": "multi", "name": "m", "graders": {"a": CHECK, "b": _with(LABEL, passing_labels=["no", "x"])},
      "calculate_output": "a + b"}, "grader.graders.b.passing_labels"),
    ({"type": "multi", "name": "m", "graders": {"a": CHECK}, "calculate_output": 3}, "grader.calculate_output"),
])
def test_errors_name_the_field(grader, param):
    with pytest.raises(errors.InvalidRequestError) as info:
        validate_grader(grader)
    assert info.value.param == param, info.value.message
    assert info.value.status == 400
