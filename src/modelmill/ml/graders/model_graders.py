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

from .engine import (GradeResult, GraderContext, JudgeReply, apply_threshold, error_result, register,
                     template_error_result)
from .templating import InvalidVariable, render

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


register("score_model", _grade_with(score_result))
register("label_model", _grade_with(label_result))
