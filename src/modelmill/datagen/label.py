"""`modelmill data label`: unlabelled prompts -> SFT lines answered by a teacher (distillation).

    prompts = read_prompts(path)                                  # InvalidRequestError names the line
    result = label(prompts, teacher, LabelConfig(n=4), grader=spec)
    result.lines, result.rejected, result.failed

Each prompt line is {"messages": [...], "tools"?: [...], "parallel_tool_calls"?: bool, ...}; any
other keys travel with it as the grader's `item` (e.g. a reference answer). The teacher's answer,
tool calls included, becomes the line's final assistant message. With a grader, only answers it
passes are kept; with n > 1, the best of n by the grader's reward (rejection sampling).

Nothing is dropped silently: every prompt ends as a line, a rejection (grader said no, or the
answer is not a valid training line) or a failure (the teacher never answered), each counted and
listed by prompt line number in the summary.
"""

from __future__ import annotations

import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from modelmill.errors import InvalidRequestError
from modelmill.ml.data.checker import Checker
from modelmill.ml.data.messages import check_messages, check_tools
from modelmill.ml.graders import GraderContext, JudgeReply, grade_batch, validate_grader

from .output import check_sft_line
from .teacher import Teacher, TeacherError, assistant_message

PROMPT_ONLY_KEYS = {"messages", "tools", "parallel_tool_calls"}


@dataclass(frozen=True)
class LabelConfig:
    n: int = 1  # answers asked per prompt; >1 keeps the best by the grader (or the first, without one)
    concurrency: int = 4  # prompts in flight at the teacher
    max_tokens: int | None = None  # per answer; None = the teacher's default
    temperature: float | None = None  # None = the teacher's default (1.0 with n > 1 makes sense)
    min_reward: float = 0.5  # a grader with no pass/fail verdict (no pass_threshold) passes at >= this


@dataclass
class LabelResult:
    lines: list[dict] = field(default_factory=list)
    rejected: dict[int, str] = field(default_factory=dict)  # prompt line number -> why
    failed: dict[int, str] = field(default_factory=dict)  # prompt line number -> the teacher's last error
    grader_errors: int = 0  # graded answers whose grading errored
    graded: int = 0
    reasons: Counter = field(default_factory=Counter)

    def summary(self, total: int) -> str:
        out = [f"labelled {len(self.lines)} of {total} prompts"]
        if self.rejected:
            why = ", ".join(f"{n} {r}" for r, n in self.reasons.items())
            out.append(f"rejected {len(self.rejected)} ({why}; prompt lines {_lines(self.rejected)})")
        if self.failed:
            out.append(f"teacher failed on {len(self.failed)} (prompt lines {_lines(self.failed)}): "
                       f"{next(iter(self.failed.values()))}")
        return "; ".join(out)


def read_prompts(path: Path) -> list[tuple[int, dict]]:
    """(line number, prompt) for each non-blank line; a bad line is an error naming it."""
    prompts = []
    with Path(path).open(encoding="utf-8") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except ValueError as e:
                raise InvalidRequestError(f"{path}: line {number}: not JSON ({e})", param=f"line {number}") from None
            problem = _prompt_problem(obj)
            if problem:
                raise InvalidRequestError(f"{path}: line {number}: {problem}", param=f"line {number}")
            prompts.append((number, obj))
    if not prompts:
        raise InvalidRequestError(f"{path}: no prompts (the file is empty): nothing to label", param="prompts")
    return prompts


def _prompt_problem(obj) -> str | None:
    if not isinstance(obj, dict) or "messages" not in obj:
        return 'each line must be an object with "messages"'
    c = Checker(0)
    names = check_tools(obj["tools"], "tools", c) if "tools" in obj else None
    check_messages(obj["messages"], "messages", c, tool_names=names, allow_parallel=True, require_target=False)
    if c.problems:
        return f"{c.problems[0].field}: {c.problems[0].message}"
    if obj["messages"][-1].get("role") not in ("user", "tool"):
        return "the last message must be from the user (or a tool result): that is what the teacher answers"
    return None


def label(prompts: list[tuple[int, dict]], teacher: Teacher, config: LabelConfig, grader: dict | None = None,
          context: GraderContext | None = None, progress: bool = True) -> LabelResult:
    """Ask the teacher about every prompt, grade, and keep what passes (in prompt order)."""
    spec = validate_grader(grader) if grader is not None else None
    if spec is not None and context is None:
        context = GraderContext(judge=TeacherJudge(teacher))
    result = LabelResult()
    bar = tqdm(total=len(prompts), desc="label", unit="prompt", disable=not progress)
    answers: dict[int, list[dict] | str] = {}

    def ask(item: tuple[int, dict]) -> tuple[int, list[dict] | str]:
        number, prompt = item
        try:
            reply = teacher.complete(_request(prompt, config))
        except TeacherError as e:
            return number, str(e)
        return number, [assistant_message(c) for c in reply.get("choices", [])]

    pool = ThreadPoolExecutor(max_workers=max(1, config.concurrency))
    try:
        for number, got in pool.map(ask, prompts):
            answers[number] = got
            bar.update(1)
    finally:  # on Ctrl-C, send nothing more: what was answered is in the cache for the rerun
        pool.shutdown(wait=False, cancel_futures=True)
        bar.close()
    for number, prompt in prompts:
        got = answers[number]
        if isinstance(got, str):
            result.failed[number] = got
            continue
        _keep_best(number, prompt, got, spec, config, context, result)
    if spec is not None and result.graded and result.grader_errors == result.graded:
        raise GraderFailed(f"the grader errored on every answer ({result.graded} of them), e.g. "
                           f"{result.reasons.most_common(1)[0][0] if result.reasons else 'see above'}: "
                           "check the grader with `graders/run` first")
    return result


class GraderFailed(InvalidRequestError):
    code = "grader_failed"


def _request(prompt: dict, config: LabelConfig) -> dict:
    body = {k: prompt[k] for k in PROMPT_ONLY_KEYS if k in prompt}
    if config.n > 1:
        body["n"] = config.n
    if config.max_tokens is not None:
        body["max_tokens"] = config.max_tokens
    if config.temperature is not None:
        body["temperature"] = config.temperature
    return body


def _keep_best(number: int, prompt: dict, answers: list[dict], spec: dict | None, config: LabelConfig,
               context: GraderContext | None, result: LabelResult) -> None:
    base = {k: prompt[k] for k in PROMPT_ONLY_KEYS if k in prompt}
    lines = []
    for message in answers:
        line = {**base, "messages": [*prompt["messages"], message]}
        try:
            check_sft_line(line, f"prompt line {number}")
        except InvalidRequestError as e:
            why = e.message.split(": not a valid training line: ", 1)[-1]
            result.reasons[f"invalid answer ({why[:100]})"] += 1
            result.rejected[number] = e.message
            continue
        lines.append(line)
    if not lines:
        return
    if spec is None:
        result.lines.append(lines[0])
        result.rejected.pop(number, None)
        return
    item = {k: v for k, v in prompt.items() if k not in PROMPT_ONLY_KEYS} | {"messages": prompt["messages"]}
    samples = [_sample(line["messages"][-1]) for line in lines]
    graded = grade_batch(spec, samples, [item] * len(samples), context=context)
    result.graded += len(graded)
    best, best_reward = None, None
    for line, g in zip(lines, graded):
        if g.has_error:
            result.grader_errors += 1
            flags = [k for k, v in g.errors.items() if v is True]
            result.reasons[f"grader error ({', '.join(flags)})"] += 1
            continue
        ok = g.passed if g.passed is not None else g.reward >= config.min_reward
        if ok and (best_reward is None or g.reward > best_reward):
            best, best_reward = line, g.reward
    if best is None:
        if not any(g.has_error for g in graded):
            result.reasons["not passed by the grader"] += 1
        result.rejected[number] = "no answer passed the grader"
        return
    result.rejected.pop(number, None)
    result.lines.append(best)


def _sample(message: dict) -> dict:
    """The grader's `sample` for one answer (the Chat Completions choice shape)."""
    return {"output_text": message.get("content") or "", "output_tools": message.get("tool_calls") or [],
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}


class TeacherJudge:
    """Model graders' judge: the teacher's endpoint, answering the grader's `model`."""

    def __init__(self, teacher: Teacher):
        self.teacher = teacher

    def complete_batch(self, model: str, conversations: list[list[dict]], sampling_params: dict) -> list[JudgeReply]:
        out = []
        keep = ("temperature", "top_p", "max_tokens", "seed")
        params = {k: v for k, v in (sampling_params or {}).items() if k in keep}
        for messages in conversations:
            try:
                reply = self.teacher.client.chat.completions.create(model=model, messages=messages, **params)
            except Exception as e:  # noqa: BLE001 - reported per sample as model_grader_server_error
                out.append(JudgeReply(text="", error=str(e)[:300]))
                continue
            usage = reply.usage
            out.append(JudgeReply(text=reply.choices[0].message.content or "",
                                  prompt_tokens=usage.prompt_tokens if usage else 0,
                                  completion_tokens=usage.completion_tokens if usage else 0))
        return out


def _lines(d: dict) -> str:
    numbers = sorted(d)
    return ", ".join(map(str, numbers[:10])) + (f" and {len(numbers) - 10} more" if len(numbers) > 10 else "")
