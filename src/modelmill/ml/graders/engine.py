"""The grading engine: one result shape, one context, one registry, two entry points.

Every grader type registers a *batch* function `fn(spec, samples, items, context) ->
list[GradeResult]` with registry.register, from its own module (built-ins the same way).
Batch, because two types need the whole list at once: python graders run a list of samples in
one sandboxed process and model graders send one judge call per batch. Per-sample types use
`map_samples`, which grades samples in parallel on a thread pool and turns an unknown template
variable into `invalid_variable_error` instead of an exception.

`grade` / `grade_batch` validate the grader first (a malformed grader is the caller's error and
raises InvalidRequestError); everything that goes wrong while grading a sample is reported in
that sample's GradeResult.errors, as OpenAI's graders/run does, and never raises.
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from modelmill.ml import observers

from .registry import GRADERS, register  # noqa: F401  register: re-exported, the old home
from .templating import InvalidVariable
from .validate import validate_grader

log = logging.getLogger(__name__)

# OpenAI's RunGraderResponse.metadata.errors, in its order. Flags are bools, *_type / *_details
# strings or None.
ERROR_KEYS = (
    "formula_parse_error", "sample_parse_error", "truncated_observation_error", "unresponsive_reward_error",
    "invalid_variable_error", "other_error", "python_grader_server_error", "python_grader_server_error_type",
    "python_grader_runtime_error", "python_grader_runtime_error_details", "model_grader_server_error",
    "model_grader_refusal_error", "model_grader_parse_error", "model_grader_server_error_details",
)
DETAIL_KEYS = ("python_grader_server_error_type", "python_grader_runtime_error_details",
               "model_grader_server_error_details")


def empty_errors() -> dict:
    return {k: (None if k in DETAIL_KEYS else False) for k in ERROR_KEYS}


@dataclass
class GradeResult:
    """One sample's grade. Field meanings follow OpenAI's RunGraderResponse."""

    reward: float = 0.0
    errors: dict = field(default_factory=empty_errors)  # every ERROR_KEYS key, always present
    name: str = ""
    type: str = ""
    # Seconds spent grading this sample; graders that grade a batch at once (text_similarity,
    # model graders, multi) report the batch's wall time, python graders grade()'s own time.
    execution_time: float = 0.0
    scores: dict = field(default_factory=dict)  # grader-specific detail, e.g. {"rouge_l": 0.8}
    sub_rewards: dict = field(default_factory=dict)  # multi: sub-grader name -> reward
    token_usage: int | None = None  # judge tokens (prompt + completion); None when no judge was asked
    model_grader_token_usage_per_model: dict = field(default_factory=dict)
    passed: bool | None = None  # label_model, or any grader given a pass_threshold; else None

    @property
    def has_error(self) -> bool:
        return any(v for k, v in self.errors.items() if k not in DETAIL_KEYS)

    def to_run_grader_response(self, sampled_model_name: str | None = None) -> dict:
        """OpenAI's RunGraderResponse. A model grader's judge is its sampled model unless told."""
        if sampled_model_name is None and len(self.model_grader_token_usage_per_model) == 1:
            sampled_model_name = next(iter(self.model_grader_token_usage_per_model))
        return {
            "reward": float(self.reward),
            "metadata": {
                "name": self.name, "type": self.type, "errors": dict(self.errors),
                "execution_time": float(self.execution_time), "scores": dict(self.scores),
                "token_usage": self.token_usage, "sampled_model_name": sampled_model_name,
            },
            "sub_rewards": dict(self.sub_rewards),
            "model_grader_token_usage_per_model": {k: dict(v) for k, v in
                                                   self.model_grader_token_usage_per_model.items()},
        }


@dataclass(frozen=True)
class JudgeReply:
    """One judge answer. `error` set means the judge failed for this conversation (the text is
    then ignored); `refusal` means the model refused to grade."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    refusal: bool = False


class Judge(Protocol):
    """Answers score_model / label_model prompts. Conversations are the grader's `input`
    messages (EvalItem shape: content a string, one content part or a list of parts) with every
    template already rendered. Returns one reply per conversation, in order."""

    def complete_batch(self, model: str, conversations: list[list[dict]],
                       sampling_params: dict) -> list[JudgeReply]: ...


@dataclass(frozen=True)
class GraderContext:
    """What grading may use besides the grader and the data."""

    # Answers model graders' prompts; None makes score_model / label_model report
    # model_grader_server_error ("no judge configured").
    judge: Judge | None = None
    # sandbox.SandboxConfig for python graders; None = SandboxConfig() defaults.
    sandbox: Any = None
    # texts -> embedding rows, for the cosine metric; None = the local all-MiniLM-L6-v2 model,
    # loaded once per process and cached (resources.default_embedder).
    embedder: Callable[[list[str]], Any] | None = None
    # Threads grading samples (and a multi grader's sub-graders) in parallel; 1 = serial.
    max_workers: int = 8


# Types whose results always say passed / not passed (others only with a pass_threshold).
PASS_FAIL_TYPES = {"string_check", "label_model"}

SampleGradeFn = Callable[[dict, dict, dict, GraderContext], GradeResult]


# -- samples ----------------------------------------------------------------------------------------

def sample_from_text(text: str) -> dict:
    """The sample namespace for a model output string; output_json is the parsed text when it is
    valid JSON, else None (templating reports sample_parse_error if a grader needs it)."""
    return {"output_text": text, "output_json": _json_or_none(text), "output_tools": [], "choices": []}


def normalize_sample(sample: Any) -> dict:
    """A str or a dict with any of output_text / output_json / output_tools / choices -> a dict
    with all four. Missing fields come from choices[0].message (Chat Completions shape)."""
    if isinstance(sample, str):
        return sample_from_text(sample)
    if not isinstance(sample, dict):
        raise TypeError(f"a sample must be a str or a dict, not {type(sample).__name__}")
    out = dict(sample)
    choices = out.get("choices") if isinstance(out.get("choices"), list) else []
    message = choices[0].get("message", {}) if choices and isinstance(choices[0], dict) else {}
    if not isinstance(out.get("output_text"), str):
        content = message.get("content") if isinstance(message, dict) else None
        out["output_text"] = content if isinstance(content, str) else ""
    if "output_json" not in out:
        out["output_json"] = _json_or_none(out["output_text"])
    if "output_tools" not in out:
        tools = message.get("tool_calls") if isinstance(message, dict) else None
        out["output_tools"] = tools if isinstance(tools, list) else []
    out["choices"] = choices
    return out


def _json_or_none(text: str):
    try:
        return json.loads(text)
    except (ValueError, TypeError, RecursionError):
        return None


# -- results -------------------------------------------------------------------------------------------

def error_result(spec: dict, *flags: str, **details) -> GradeResult:
    """Reward 0 with the given error flags (and *_details / *_type values) set."""
    result = GradeResult(name=spec.get("name", ""), type=spec.get("type", ""))
    for flag in flags:
        result.errors[flag] = True
    result.errors.update(details)
    return result


def template_error_result(spec: dict, err: InvalidVariable) -> GradeResult:
    return error_result(spec, "sample_parse_error" if err.sample_parse else "invalid_variable_error")


def merge_errors(into: dict, other: dict) -> None:
    """OR the flags; keep the first non-empty detail string."""
    for key, value in other.items():
        if key in DETAIL_KEYS:
            into[key] = into.get(key) or value
        else:
            into[key] = bool(into.get(key)) or bool(value)


# -- running -------------------------------------------------------------------------------------------

def grade(grader: dict, sample: Any, item: dict | None = None, *,
          context: GraderContext | None = None) -> GradeResult:
    """Grade one sample (a str or a sample dict) against one dataset item."""
    return grade_batch(grader, [sample], [item if item is not None else {}], context=context)[0]


def grade_batch(grader: dict, samples: list, items: list | None = None, *,
                context: GraderContext | None = None) -> list[GradeResult]:
    """Grade samples[i] against items[i]; results in input order. Raises InvalidRequestError
    for a malformed grader, ValueError when the two lists differ in length."""
    spec = validate_grader(grader)
    items = list(items) if items is not None else [{} for _ in samples]
    if len(items) != len(samples):
        raise ValueError(f"{len(samples)} samples but {len(items)} items")
    for i, item in enumerate(items):
        if item is not None and not isinstance(item, dict):
            raise TypeError(f"items[{i}] must be a dict, not {type(item).__name__}")
    samples_N = [normalize_sample(s) for s in samples]
    items_N = [item or {} for item in items]
    started = time.perf_counter()
    results = run_grader(spec, samples_N, items_N, context or GraderContext())
    observers.notify(observers.GRADE, spec["type"], len(results), sum(1 for r in results if r.has_error),
                     time.perf_counter() - started)
    return results


def run_grader(spec: dict, samples: list[dict], items: list[dict], context: GraderContext) -> list[GradeResult]:
    """Grade an already validated spec over normalized samples. A bug inside a grader becomes
    other_error on every sample of the batch, never an exception."""
    if not samples:
        return []
    started = time.perf_counter()
    try:
        results = GRADERS[spec["type"]].grade(spec, samples, items, context)
        if len(results) != len(samples):
            raise RuntimeError(f"{spec['type']} grader returned {len(results)} results for {len(samples)} samples")
    except Exception:  # noqa: BLE001 - a grader bug is reported per sample, never raised
        log.exception("%s grader %r failed", spec.get("type"), spec.get("name"))
        elapsed = time.perf_counter() - started
        results = [error_result(spec, "other_error") for _ in samples]
        for r in results:
            r.execution_time = elapsed
    has_pass = spec["type"] in PASS_FAIL_TYPES or spec.get("pass_threshold") is not None
    for r in results:
        r.name = r.name or spec.get("name", "")
        r.type = r.type or spec["type"]
        if has_pass and r.passed is None and r.has_error:
            r.passed = False  # a sample that could not be graded did not pass
    return results


def map_samples(fn: SampleGradeFn, spec: dict, samples: list[dict], items: list[dict],
                context: GraderContext) -> list[GradeResult]:
    """Run a per-sample grade function over a batch, in parallel, timing each sample."""

    def one(pair) -> GradeResult:
        sample, item = pair
        started = time.perf_counter()
        try:
            result = fn(spec, sample, item, context)
        except InvalidVariable as e:
            result = template_error_result(spec, e)
        except Exception:  # noqa: BLE001 - one sample's failure must not sink the batch
            log.exception("%s grader %r failed on a sample", spec.get("type"), spec.get("name"))
            result = error_result(spec, "other_error")
        result.execution_time = time.perf_counter() - started
        return result

    pairs = list(zip(samples, items))
    workers = min(max(1, context.max_workers), len(pairs))
    if workers == 1:
        return [one(p) for p in pairs]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grader") as pool:
        return list(pool.map(one, pairs))  # map keeps input order


def apply_threshold(result: GradeResult, spec: dict) -> GradeResult:
    """passed = reward >= pass_threshold when the grader has one and graded without error."""
    threshold = spec.get("pass_threshold")
    if threshold is not None and not result.has_error:
        result.passed = result.reward >= float(threshold)
    elif threshold is not None:
        result.passed = False
    return result
