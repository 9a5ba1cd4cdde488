"""What a generation request asks for (SamplingParams, validated with OpenAI's limits) and what it
gets back (Choice, GenerationResult, StreamEvent)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from modelmill.errors import InvalidRequestError
from modelmill.ml import constraints, logits

MAX_STOP_STRINGS = 4  # OpenAI's limit
MAX_N = 128  # OpenAI's limit on choices per request


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. Validated on construction (InvalidRequestError names the bad param)."""

    temperature: float = 1.0  # 0..2; 0 means greedy
    top_p: float = 1.0  # 0..1 nucleus mass; 1 disables, 0 means greedy
    max_tokens: int | None = None  # completion tokens per choice; None = context left, capped at 512
    n: int = 1  # choices per prompt, 1..128
    seed: int | None = None  # None = nondeterministic; an int makes sampling repeatable
    stop: list[str] | None = None  # up to 4 strings (a single str is accepted and wrapped)
    logprobs: bool = False  # return each generated token's logprob (ml/logits.py says of which distribution)
    top_logprobs: int | None = None  # 0..20 most likely tokens per position; needs logprobs
    logit_bias: dict[int, float] | None = None  # token id -> -100..100 added to its logit (str keys accepted)
    presence_penalty: float = 0.0  # -2..2, OpenAI's formula (ml/logits.py)
    frequency_penalty: float = 0.0  # -2..2
    response_format: dict | None = None  # OpenAI's response_format; json_schema / json_object are enforced
    # The grammar response_format asks for (ml/constraints.py), set from it on construction.
    constraint: constraints.Constraint | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        _check_number(self.temperature, "temperature", 0.0, 2.0)
        _check_number(self.top_p, "top_p", 0.0, 1.0)
        _check_number(self.presence_penalty, "presence_penalty", -2.0, 2.0)
        _check_number(self.frequency_penalty, "frequency_penalty", -2.0, 2.0)
        if self.top_logprobs is not None:
            if not _is_int(self.top_logprobs) or not 0 <= self.top_logprobs <= logits.MAX_TOP_LOGPROBS:
                raise InvalidRequestError(f"top_logprobs must be an integer from 0 to {logits.MAX_TOP_LOGPROBS}",
                                          param="top_logprobs")
            if not self.logprobs:
                raise InvalidRequestError("top_logprobs needs logprobs set to true", param="top_logprobs")
        object.__setattr__(self, "logit_bias", logits.parse_bias(self.logit_bias))
        if self.max_tokens is not None and (not _is_int(self.max_tokens) or self.max_tokens < 1):
            raise InvalidRequestError("max_tokens must be a positive integer", param="max_tokens")
        if not _is_int(self.n) or not 1 <= self.n <= MAX_N:
            raise InvalidRequestError(f"n must be an integer from 1 to {MAX_N}", param="n")
        if self.seed is not None and not _is_int(self.seed):
            raise InvalidRequestError("seed must be an integer", param="seed")
        stop = [self.stop] if isinstance(self.stop, str) else self.stop
        if stop is not None:
            if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) for s in stop):
                raise InvalidRequestError("stop must be a string or an array of strings", param="stop")
            if len(stop) > MAX_STOP_STRINGS:
                raise InvalidRequestError(f"stop may hold at most {MAX_STOP_STRINGS} strings", param="stop")
            stop = [s for s in stop if s] or None
        object.__setattr__(self, "stop", stop)
        object.__setattr__(self, "constraint", constraints.from_response_format(self.response_format))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_p == 0


@dataclass(frozen=True)
class Choice:
    index: int
    text: str  # the raw generated text (tool-choice prefill included), cut at a stop string
    content: str | None  # text without parsed <tool_call> blocks; None when only tool calls remain
    tool_calls: list[dict]  # OpenAI shape: {"id", "type": "function", "function": {"name", "arguments"}}
    finish_reason: str  # "stop" | "length" | "tool_calls"
    completion_tokens: int = 0  # tokens generated for this choice
    # With params.logprobs: OpenAI ChatCompletionTokenLogprob dicts, one per generated token of
    # `text` (tool-call markup included, the prefill and end-of-turn token not); None otherwise.
    logprobs: list[dict] | None = None


@dataclass(frozen=True)
class GenerationResult:
    choices: list[Choice]
    prompt_tokens: int  # counted once per prompt, as OpenAI does (prefill included)
    completion_tokens: int  # summed over choices

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def usage(self) -> dict:
        return token_usage(self.prompt_tokens, self.completion_tokens)


@dataclass(frozen=True)
class StreamEvent:
    """One streamed piece. Each choice ends with an event whose finish_reason is set (carrying
    its parsed tool_calls, if any); the last event of the stream also carries usage."""

    delta: str = ""  # content text to append
    index: int = 0  # which choice
    finish_reason: str | None = None  # set on the choice's final event
    tool_calls: list[dict] | None = None  # set on the final event when tool calls were parsed
    usage: dict | None = None  # {"prompt_tokens", "completion_tokens", "total_tokens"} on the very last event
    # With params.logprobs: the ChatCompletionTokenLogprob dicts of the tokens this event's text
    # completes (tool-call tokens come with the final event); their concatenation over a choice
    # equals generate()'s Choice.logprobs.
    logprobs: list[dict] | None = None



def token_usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_number(v: Any, name: str, lo: float, hi: float) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
        raise InvalidRequestError(f"{name} must be a number from {lo:g} to {hi:g}", param=name)
