"""relative_score_model: a judge scores a GROUP of samples together, comparing them with each other
(ModelMill's grader type, after OpenPipe ART's RULER). For GRPO only the differences within a group
matter, and a judge ranks attempts side by side more consistently than it scores each alone.

A group is a run of consecutive samples whose items are equal: in RFT, the rollouts of one prompt
(TRL keeps a prompt's num_generations rollouts together); elsewhere (evals, graders/run) usually one
sample, which is then scored alone. Per group the judge gets the grader's `input` messages, their
templates rendered with the item (`{{item.*}}`; `{{sample.*}}` has no single sample here and is an
invalid_variable_error), then one user message listing every attempt (its whole conversation,
`sample.messages`, for an agentic rollout, else its output_text and output_tools) and asking for
{"scores": [...]}, one number per attempt within `range` (default [0, 1]). A reply that is not a list
of exactly that many numbers is model_grader_parse_error for the whole group. Scores are clamped to
`range`; `pass_threshold`, when given, sets passed. Any configured judge model can serve, as for
score_model (the group's token usage is reported on its first sample).
"""

from __future__ import annotations

import json
import math
import time
from typing import Literal

from . import checks
from .engine import GradeResult, GraderContext, apply_threshold, error_result, template_error_result
from .model_graders import DEFAULT_RANGE, _from_reply, _unfence, ask_judge, render_messages, validate_score_model
from .model_input import InputMessage, SamplingParams
from .registry import register
from .templating import InvalidVariable

MAX_ATTEMPT_CHARS = 4000  # of one attempt's text shown to the judge
GROUP_INSTRUCTION = (
    "Below are {n} attempts at the task above. Compare them with each other and score each one from {lo:g} "
    "(worst) to {hi:g} (best): a better attempt gets a higher score. Reply with JSON only: "
    "{{\"scores\": [one number per attempt, in order]}}.")


def groups(items: list[dict]) -> list[list[int]]:
    """Indices of runs of consecutive equal items."""
    out: list[list[int]] = []
    last = None
    for i, item in enumerate(items):
        key = json.dumps(item, sort_keys=True, default=str)
        if out and key == last:
            out[-1].append(i)
        else:
            out.append([i])
        last = key
    return out


def _attempt(sample: dict) -> str:
    shown = sample.get("messages") or {"output_text": sample.get("output_text", ""),
                                      "output_tools": sample.get("output_tools") or []}
    text = json.dumps(shown, ensure_ascii=False)
    return text if len(text) <= MAX_ATTEMPT_CHARS else text[:MAX_ATTEMPT_CHARS] + "...[cut]"


def _conversation(spec: dict, samples: list[dict], item: dict) -> list[dict]:
    lo, hi = spec.get("range") or DEFAULT_RANGE
    listing = "\n\n".join(f"Attempt {k + 1}:\n{_attempt(s)}" for k, s in enumerate(samples))
    ask = GROUP_INSTRUCTION.format(n=len(samples), lo=float(lo), hi=float(hi))
    return [*render_messages(spec["input"], {}, item), {"role": "user", "content": f"{ask}\n\n{listing}"}]


def parse_scores(text: str, n: int) -> list[float]:
    """n finite numbers from {"scores": [...]} or a bare JSON list; raises ValueError."""
    data = json.loads(_unfence(text))
    if isinstance(data, dict):
        data = data.get("scores")
    if not isinstance(data, list) or len(data) != n:
        raise ValueError(f"expected {n} scores")
    if any(isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) for x in data):
        raise ValueError("scores must be finite numbers")
    return [float(x) for x in data]


def grade_batch(spec: dict, samples: list[dict], items: list[dict], context: GraderContext) -> list[GradeResult]:
    started = time.perf_counter()
    results: list[GradeResult | None] = [None] * len(samples)
    conversations, asked = [], []
    for group in groups(items):
        try:
            conversations.append(_conversation(spec, [samples[i] for i in group], items[group[0]]))
            asked.append(group)
        except InvalidVariable as e:
            for i in group:
                results[i] = template_error_result(spec, e)
    lo, hi = spec.get("range") or DEFAULT_RANGE
    for group, reply in zip(asked, ask_judge(spec, conversations, context)):
        base = _from_reply(spec, reply, lambda s, text: GradeResult(reward=0.0))  # judge errors, token usage
        scores, failed = None, base
        if not base.has_error:
            try:
                scores = parse_scores(reply.text, len(group))
            except (ValueError, RecursionError):
                failed = error_result(spec, "model_grader_parse_error")
        for k, i in enumerate(group):
            if scores is None:
                result = error_result(spec, *[f for f, v in failed.errors.items() if v is True],
                                      **{f: v for f, v in failed.errors.items() if isinstance(v, str)})
            else:
                result = apply_threshold(GradeResult(reward=min(max(scores[k], float(lo)), float(hi)),
                                                     scores={"result": scores[k]}), spec)
            if k == 0:
                result.token_usage = base.token_usage
                result.model_grader_token_usage_per_model = base.model_grader_token_usage_per_model
            results[i] = result
    elapsed = time.perf_counter() - started
    for r in results:
        r.execution_time = elapsed
    return results


class RelativeScoreModelGrader(checks.GraderWire):
    """ModelMill's relative judge: score_model's fields, scoring a group of samples together."""

    type: Literal["relative_score_model"]
    input: list[InputMessage]
    model: str
    range: tuple[float, float] | None = None
    sampling_params: SamplingParams | None = None
    pass_threshold: float | None = None


def validate(spec: dict, path: str) -> None:
    """score_model's checks: the same fields mean the same."""
    validate_score_model(spec, path)


register("relative_score_model", grade_batch, validate=validate, model=RelativeScoreModelGrader)
