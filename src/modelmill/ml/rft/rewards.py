"""RFT's rewards: the reasoning format, completion -> grader sample, the TRL reward function,
per-step grading statistics and the grader-failure safety rail. ml/rft/train.py runs the training.

The reasoning format. Small instruct models (SmolLM2) are not reasoning models: they have no
hidden reasoning channel. So every prompt gets REASONING_INSTRUCTION as a system instruction
(`with_instruction`): reason first, then put the final answer on a last line starting with
"Answer:". The grader sees only that final answer:
- sample["output_text"] is the text after the LAST "Answer:" marker (case-insensitive, anywhere in
  the text; "Final answer:", "**Answer:**" and "your answer: ..." count too), to the end of the
  completion, stripped. It may span lines (a JSON answer does).
- sample["output_reasoning"] is the text before that marker (python graders see this key; the
  {{sample.*}} templates only know OpenAI's fields).
- A completion without the marker is graded as a whole: output_text is the full completion
  (stripped) and output_reasoning is "". A small model that ignores the format still gets a
  reward signal; set RFTConfig.require_answer_marker to grade such completions as an empty answer.
  Measured: SmolLM2-135M-Instruct writes the marker in about 1 of 18 samples at 64 tokens whether the
  instruction is a system message or appended to the user message, so for it the fallback is the
  common case.
- When the prompt declares tools, tool calls are parsed in the model's own format (the parser of
  its chat family, chat_families; `<tool_call>` blocks for ChatML) into sample["output_tools"] (OpenAI's shape) and removed from the text first.
- output_json is output_text parsed as JSON, else None (graders.sample_from_text).

Rewards. Every sample's reward is its GradeResult.reward as the grader returns it (0 when the
grader reported an error for it, as OpenAI's graders/run does).
"""

from __future__ import annotations

import json
import re
import statistics

from modelmill.errors import GraderFailedError
from modelmill.ml import chat_format, graders
from modelmill.ml.chat_format import content_text
from modelmill.ml.graders.engine import DETAIL_KEYS, ERROR_KEYS

REASONING_INSTRUCTION = ("Think through the problem step by step. Then give your final answer on its own "
                         "last line, starting with \"Answer:\".")
# "Answer:" (optionally "Final answer:"), with markdown bold/quote/list marks around it.
ANSWER_RE = re.compile(r"[ \t>*#_-]*(?:\bfinal[ \t]+)?\banswer[ \t]*\**[ \t]*[:：][ \t]*\**[ \t]*", re.I)
# OpenAI's error flags (RunGraderResponse metadata.errors), without the *_type / *_details strings.
ERROR_FLAGS = tuple(k for k in ERROR_KEYS if k not in DETAIL_KEYS)
QUOTE_CHARS = 200  # characters of a failing sample / item quoted in a GraderFailedError


def with_instruction(messages: list[dict], instruction: str | None) -> list[dict]:
    """The prompt with the reasoning instruction: appended to a leading system/developer message,
    or added as a new first system message. None leaves the messages as they are."""
    if not instruction:
        return list(messages)
    first = messages[0] if messages else {}
    if first.get("role") in ("system", "developer"):
        text = content_text(first.get("content"))
        return [{**first, "content": f"{text}\n\n{instruction}" if text else instruction}, *messages[1:]]
    return [{"role": "system", "content": instruction}, *messages]


def split_answer(text: str) -> tuple[str, str, bool]:
    """(final answer, reasoning, whether the "Answer:" marker was found); see the module docstring."""
    last = None
    for last in ANSWER_RE.finditer(text):
        pass
    if last is None:
        return text.strip(), "", False
    return text[last.end():].strip(), text[:last.start()].strip(), True


def completion_sample(text: str, *, parse_tools: bool, require_marker: bool = False,
                      parse=chat_format.parse_tool_calls) -> dict:
    """The grader sample for one generated completion; `parse` is the model family's tool-call parser."""
    calls: list[dict] = []
    if parse_tools:
        content, calls = parse(text)
        text = content or ""
    answer, reasoning, found = split_answer(text)
    if not found and require_marker:
        answer, reasoning = "", text.strip()
    sample = graders.sample_from_text(answer)
    sample["output_tools"] = calls
    sample["output_reasoning"] = reasoning
    return sample


def trajectory_sample(trajectory: dict, *, require_marker: bool = False) -> dict:
    """The grader sample for one agentic rollout (multiturn.Trajectory.summary()): output_text etc. from
    its last assistant turn as completion_sample makes them, output_tools = every tool call of the
    rollout, plus ModelMill's extension: messages (the whole conversation: the prompt, each assistant
    turn, each tool result) and environment_state (what the python tools left in `state`)."""
    sample = completion_sample(trajectory["final_text"], parse_tools=False, require_marker=require_marker)
    sample["output_tools"] = trajectory["tool_calls"]
    sample["messages"] = trajectory["messages"]
    sample["environment_state"] = trajectory["environment_state"]
    return sample


# ---------------------------------------------------------------- statistics and the safety rail


def step_stats(results: list, completion_lengths: list[int], flags_seen: set[str]) -> dict[str, float]:
    """Metrics of one step's graded samples: train_reward_mean / _std (population std over the
    step's samples), train_grader_error_rate (share with any error flag) and
    train_grader_error_rate_<flag> for every flag in `flags_seen` (updated with this step's),
    completion_tokens_mean (generated tokens, EOS included)."""
    rewards = [float(r.reward) for r in results]
    n = max(1, len(results))
    flags_seen.update(f for r in results for f in ERROR_FLAGS if r.errors.get(f))
    out = {"train_reward_mean": statistics.fmean(rewards) if rewards else 0.0,
           "train_reward_std": statistics.pstdev(rewards) if rewards else 0.0,
           "train_grader_error_rate": sum(r.has_error for r in results) / n,
           "completion_tokens_mean": statistics.fmean(completion_lengths) if completion_lengths else 0.0}
    for flag in sorted(flags_seen):
        out[f"train_grader_error_rate_{flag}"] = sum(bool(r.errors.get(flag)) for r in results) / n
    return out


def check_error_share(results: list, samples: list[dict], items: list[dict], questions: list[str], limit: float,
                      where: str) -> None:
    """Raise GraderFailedError when more than `limit` of the samples have an error flag set; the
    message quotes the first failing sample with its prompt (`questions`: each sample's last user
    message), item and error flags/details."""
    failed = [i for i, r in enumerate(results) if r.has_error]
    if not results or len(failed) / len(results) <= limit:
        return
    i = failed[0]
    errors = results[i].errors
    flags = [f for f in ERROR_FLAGS if errors.get(f)]
    details = "; ".join(f"{k}: {_cut(str(errors[k]))}" for k in DETAIL_KEYS if errors.get(k))
    raise GraderFailedError(
        f"the grader failed on {len(failed)} of {len(results)} samples {where} (more than {limit:.0%}); "
        f"e.g. for the prompt {_cut(questions[i])!r} the sample {_cut(samples[i].get('output_text', ''))!r} "
        f"with item {_cut(json.dumps(items[i]))}: "
        f"{', '.join(flags)}" + (f" ({details})" if details else ""))


def _cut(text: str, limit: int = QUOTE_CHARS) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


# ---------------------------------------------------------------- the TRL reward function


class GraderReward:
    """TRL reward function: grades a whole step's completions with one graders.grade_batch call
    (parallel, python graders in one sandboxed process), keeps the step's statistics for the
    reporter hooks and enforces the error-share rail.

    TRL passes the dataset's extra columns per completion: item_json (the line's item as JSON),
    has_tools (whether the prompt declared tools, so tool calls are parsed) and question (the last
    user message, quoted when the grader fails). In agentic RFT the rollout function adds
    `trajectory` (multiturn.Trajectory.summary()): the sample is then the whole rollout
    (trajectory_sample), and `rollout_stats` (set by the rollout function) join the step's metrics.
    """

    __name__ = "grader"  # TRL's name for this reward (its rewards/grader/* logs)

    def __init__(self, grader: dict, context, *, max_error_share: float, require_marker: bool,
                 parse=chat_format.parse_tool_calls):
        self.grader, self.context, self.parse = grader, context, parse  # parse: the family's tool-call parser
        self.max_error_share, self.require_marker = max_error_share, require_marker
        self.flags_seen: set[str] = set()
        self.stats: dict[str, float] = {}  # the last graded step's metrics (step_stats)
        self.rollout_stats: dict[str, float] = {}  # agentic RFT: the step's multiturn.rollout_stats

    def __call__(self, prompts, completions, completion_ids, item_json, has_tools, question,
                 trainer_state=None, trajectory=None, **_) -> list[float]:
        if trajectory is not None:
            samples = [trajectory_sample(t, require_marker=self.require_marker) for t in trajectory]
            lengths = [t["model_tokens"] for t in trajectory]  # the model's own tokens, not the tool results
        else:
            samples = [completion_sample(text, parse_tools=tools, require_marker=self.require_marker,
                                         parse=self.parse) for text, tools in zip(completions, has_tools, strict=True)]
            lengths = [len(ids) for ids in completion_ids]
        items = [json.loads(s) for s in item_json]
        results = graders.grade_batch(self.grader, samples, items, context=self.context)
        self.stats = {**step_stats(results, lengths, self.flags_seen), **self.rollout_stats}
        self.rollout_stats = {}
        step = (trainer_state.global_step + 1) if trainer_state is not None else "?"
        check_error_share(results, samples, items, question, self.max_error_share, f"at step {step}")
        return [float(r.reward) for r in results]

    def take_stats(self) -> dict[str, float]:
        """The last step's metrics, once (a step whose rollouts were reused reports none)."""
        stats, self.stats = self.stats, {}
        return stats
