"""score_model and label_model: a judge model grades the sample.

Both render the grader's `input` messages (templates in string content, in text parts and in
image URLs; the EvalItem shape is kept) for every sample, then ask `context.judge` once for the
whole batch with the grader's `sampling_params` passed through unchanged.

- score_model: the reply must be a number: a bare number, or JSON {"result": n} (the response
  format OpenAI asks its judges for) or {"score": n}, optionally in a ``` fence. The score is
  clamped to `range` (default [0, 1]), as OpenAI truncates it; `pass_threshold`, when given,
  sets passed. Anything else is model_grader_parse_error with reward 0.
- label_model: the reply must name one of `labels`: the bare label (quotes and a final full stop
  allowed, case-insensitive), JSON {"result"|"label": label}, or a sentence in which exactly one
  label occurs as a word. reward 1.0 and passed when the label is in `passing_labels`.

A judge error is model_grader_server_error (+ details); a refusal is model_grader_refusal_error.
Token usage is reported per sample and per judge model, as OpenAI's RunGraderResponse does.
"""

from __future__ import annotations

import json
import math
import re
import time
from typing import Literal

from modelmill import errors

from . import checks
from .engine import GradeResult, GraderContext, JudgeReply, apply_threshold, error_result, template_error_result
from .model_input import (MESSAGE_FIELDS, PART_FIELDS, REASONING_EFFORTS, ROLES, SAMPLING_FIELDS, InputMessage,
                          SamplingParams)
from .registry import register
from .templating import InvalidVariable, render

TEXT_PARTS = ("input_text", "output_text")
DEFAULT_RANGE = (0.0, 1.0)
MAX_DETAILS = 2000  # chars of a judge's error message kept in the result
_FENCE = re.compile(r"^```[\w-]*\s*\n?(.*?)\n?```$", re.S)


# -- prompts --------------------------------------------------------------------------------------

def render_messages(messages: list[dict], sample: dict, item: dict) -> list[dict]:
    """The grader's input messages with every template rendered."""
    return [{**m, "content": _render_content(m.get("content"), sample, item)} for m in messages]


def _render_content(content, sample: dict, item: dict):
    if isinstance(content, str):
        return render(content, sample, item)
    if isinstance(content, list):
        return [_render_content(part, sample, item) for part in content]
    if isinstance(content, dict):
        part = dict(content)
        for key in ("text", "image_url"):
            if isinstance(part.get(key), str):
                part[key] = render(part[key], sample, item)
        return part
    return content


def ask_judge(spec: dict, conversations: list[list[dict]], context: GraderContext) -> list[JudgeReply]:
    """One judge call for the batch; every failure becomes an error reply, never an exception."""
    if not conversations:
        return []
    n = len(conversations)
    if context.judge is None:
        return [JudgeReply(text="", error="no judge is configured to run model graders")] * n
    try:
        replies = list(context.judge.complete_batch(spec["model"], conversations,
                                                    dict(spec.get("sampling_params") or {})))
    except Exception as e:  # noqa: BLE001 - a failed judge is a grader error
        return [JudgeReply(text="", error=f"{type(e).__name__}: {e}")] * n
    if len(replies) != n:
        return [JudgeReply(text="", error=f"the judge returned {len(replies)} replies for {n} prompts")] * n
    return replies


# -- parsing replies ------------------------------------------------------------------------------------

def _unfence(text: str) -> str:
    text = (text or "").strip()
    match = _FENCE.match(text)
    return match.group(1).strip() if match else text


def parse_score(text: str) -> float:
    """A finite number from a judge reply; raises ValueError."""
    text = _unfence(text)
    try:
        value = float(text)
    except ValueError:
        try:
            data = json.loads(text)
        except ValueError:
            raise ValueError(f"not a number: {text[:80]!r}") from None
        if isinstance(data, dict):
            data = next((data[k] for k in ("result", "score") if k in data), None)
        if isinstance(data, bool) or not isinstance(data, (int, float)):
            raise ValueError(f"no numeric result in {text[:80]!r}") from None
        value = float(data)
    if not math.isfinite(value):
        raise ValueError(f"not a finite number: {text[:80]!r}")
    return value


def parse_label(text: str, labels: list[str]) -> str:
    """The label a judge reply names; raises ValueError."""
    text = _unfence(text)
    candidate = text
    try:
        data = json.loads(text)
        if isinstance(data, dict):
            data = next((data[k] for k in ("result", "label") if k in data), None)
        if isinstance(data, str):
            candidate = data
    except ValueError:
        pass
    bare = candidate.strip().strip("\"'`*").rstrip(".!").strip()
    if bare in labels:
        return bare
    folded = [label for label in labels if label.casefold() == bare.casefold()]
    if len(folded) == 1:
        return folded[0]
    mentioned = {label for label in labels
                 if re.search(rf"(?<!\w){re.escape(label)}(?!\w)", text, flags=re.IGNORECASE)}
    if len(mentioned) == 1:
        return mentioned.pop()
    raise ValueError(f"no single label of {labels} in {text[:80]!r}")


def score_result(spec: dict, text: str) -> GradeResult:
    value = parse_score(text)
    lo, hi = spec.get("range") or DEFAULT_RANGE
    result = GradeResult(reward=min(max(value, float(lo)), float(hi)), scores={"result": value})
    return apply_threshold(result, spec)


def label_result(spec: dict, text: str) -> GradeResult:
    label = parse_label(text, list(spec["labels"]))
    passed = label in spec["passing_labels"]
    return GradeResult(reward=1.0 if passed else 0.0, passed=passed, scores={"label": label})


# -- grading ----------------------------------------------------------------------------------------------

def _from_reply(spec: dict, reply: JudgeReply, parse) -> GradeResult:
    if reply.refusal:
        result = error_result(spec, "model_grader_refusal_error")
    elif reply.error:
        result = error_result(spec, "model_grader_server_error",
                              model_grader_server_error_details=str(reply.error)[:MAX_DETAILS])
    else:
        try:
            result = parse(spec, reply.text)
        except ValueError:
            result = error_result(spec, "model_grader_parse_error")
    prompt, completion = int(reply.prompt_tokens or 0), int(reply.completion_tokens or 0)
    result.token_usage = prompt + completion
    result.model_grader_token_usage_per_model = {spec["model"]: {
        "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
        "cached_tokens": 0}}
    return result


def _grade_with(parse):
    def grade_batch(spec: dict, samples: list[dict], items: list[dict], context: GraderContext) -> list[GradeResult]:
        started = time.perf_counter()
        results: list[GradeResult | None] = [None] * len(samples)
        conversations, where = [], []
        for i, (sample, item) in enumerate(zip(samples, items)):
            try:
                conversations.append(render_messages(spec["input"], sample, item))
                where.append(i)
            except InvalidVariable as e:
                results[i] = template_error_result(spec, e)
        for i, reply in zip(where, ask_judge(spec, conversations, context)):
            results[i] = _from_reply(spec, reply, parse)
        elapsed = time.perf_counter() - started
        for r in results:
            r.execution_time = elapsed
        return results

    return grade_batch


# -- wire models and validation --------------------------------------------------------------------

class ScoreModelGrader(checks.GraderWire):
    """OpenAI's GraderScoreModel, plus the pass_threshold of its eval variant."""

    type: Literal["score_model"]
    input: list[InputMessage]
    model: str
    range: tuple[float, float] | None = None  # [min, max]; default [0, 1]
    sampling_params: SamplingParams | None = None
    pass_threshold: float | None = None


class LabelModelGrader(checks.GraderWire):
    """OpenAI's GraderLabelModel: the judge picks one of labels; passed if it is a passing label."""

    type: Literal["label_model"]
    input: list[InputMessage]
    model: str
    labels: list[str]
    passing_labels: list[str]


def _content_part(part, param: str) -> None:
    if isinstance(part, str):
        return checks.check_template(part, param)
    if not isinstance(part, dict):
        raise checks.bad(param, f"{param} must be a string or a content object")
    kind = part.get("type")
    if kind in PART_FIELDS:
        errors.reject_unknown_fields(part, PART_FIELDS[kind], param)
    if kind in TEXT_PARTS:
        checks.string(part, "text", param, template=True)
    elif kind == "input_image":
        checks.string(part, "image_url", param, template=True)
        checks.string(part, "detail", param, required=False)
    elif kind == "input_audio":
        audio = part.get("input_audio")
        if not isinstance(audio, dict) or not isinstance(audio.get("data"), str):
            raise checks.bad(f"{param}.input_audio", f"{param}.input_audio must be an object with data and format")
        checks.enum(audio, "format", f"{param}.input_audio", ("mp3", "wav"))
    else:
        raise checks.bad(f"{param}.type", f"{param}.type must be one of input_text, output_text, input_image, "
                                          f"input_audio; got {kind!r}")


def _messages(spec: dict, path: str) -> None:
    messages = spec.get("input")
    if not isinstance(messages, list) or not messages:
        raise checks.bad(f"{path}.input", f"{path}.input must be a non-empty list of messages")
    for i, message in enumerate(messages):
        param = f"{path}.input[{i}]"
        if not isinstance(message, dict):
            raise checks.bad(param, f"{param} must be a message object with role and content")
        errors.reject_unknown_fields(message, MESSAGE_FIELDS, param)
        checks.enum(message, "role", param, ROLES)
        if message.get("type", "message") != "message":
            raise checks.bad(f"{param}.type", f"{param}.type must be 'message'")
        content = message.get("content")
        if isinstance(content, list):
            for j, part in enumerate(content):
                _content_part(part, f"{param}.content[{j}]")
        elif content is None:
            raise checks.bad(f"{param}.content", f"{param}.content is required")
        else:
            _content_part(content, f"{param}.content")


def _model(spec: dict, path: str) -> None:
    if not isinstance(spec.get("model"), str) or not spec["model"].strip():
        raise checks.bad(f"{path}.model", f"{path}.model must be a non-empty model name")
    _messages(spec, path)


def _sampling_params(spec: dict, path: str) -> None:
    params = spec.get("sampling_params")
    if params is None:
        return
    param = f"{path}.sampling_params"
    if not isinstance(params, dict):
        raise checks.bad(param, f"{param} must be an object")
    errors.reject_unknown_fields(params, SAMPLING_FIELDS, param)
    for key in ("temperature", "top_p"):
        checks.number(params, key, param)
    for key, least in (("seed", None), ("max_completions_tokens", 1)):
        value = params.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or (least is not None and value < least)):
            raise checks.bad(f"{param}.{key}", f"{param}.{key} must be an integer" + (f" >= {least}" if least else ""))
    if params.get("reasoning_effort") is not None:
        checks.enum(params, "reasoning_effort", param, REASONING_EFFORTS)


def validate_score_model(spec: dict, path: str) -> None:
    _model(spec, path)
    _sampling_params(spec, path)
    checks.number(spec, "pass_threshold", path)
    bounds = spec.get("range") if spec.get("range") is not None else DEFAULT_RANGE
    ok = (isinstance(bounds, (list, tuple)) and len(bounds) == 2
          and all(not isinstance(b, bool) and isinstance(b, (int, float)) and math.isfinite(b) for b in bounds))
    if not ok or bounds[0] >= bounds[1]:
        raise checks.bad(f"{path}.range", f"{path}.range must be [min, max] with min < max")


def _label_list(spec: dict, key: str, path: str) -> list:
    labels = spec.get(key)
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) and x for x in labels):
        raise checks.bad(f"{path}.{key}", f"{path}.{key} must be a non-empty list of non-empty strings")
    if len(set(labels)) != len(labels):
        raise checks.bad(f"{path}.{key}", f"{path}.{key} has duplicates")
    return labels


def validate_label_model(spec: dict, path: str) -> None:
    _model(spec, path)
    _sampling_params(spec, path)
    labels = _label_list(spec, "labels", path)
    passing = _label_list(spec, "passing_labels", path)
    missing = [x for x in passing if x not in labels]
    if missing:
        raise checks.bad(f"{path}.passing_labels", f"{path}.passing_labels must be a subset of labels; "
                                                   f"not in labels: {', '.join(missing)}")


register("score_model", _grade_with(score_result), validate=validate_score_model, model=ScoreModelGrader)
register("label_model", _grade_with(label_result), validate=validate_label_model, model=LabelModelGrader)
