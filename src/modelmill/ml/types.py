"""The domain shapes shared by data validation, training, sampling and the service."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class LineProblem:
    """One problem in a training file. `line` is 1-based; 0 means the file as a whole."""

    line: int
    field: str  # JSON path inside the line, e.g. "messages[2].role"; "" for the whole line
    code: str  # machine-readable, e.g. "invalid_json", "unknown_role", "too_few_examples"
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line else ""
        return f"{where}{self.field + ': ' if self.field else ''}{self.message}"


@dataclass(frozen=True)
class ChatExample:
    """One SFT line: OpenAI chat messages (normalised by chat_format) plus optional tools."""

    messages: list[dict]
    tools: list[dict] | None = None
    parallel_tool_calls: bool | None = None
    line: int = 0  # 1-based line number in the source file


@dataclass(frozen=True)
class ValidationReport:
    """What validate_file found. ok is True only when there are no problems."""

    method: str
    n_lines: int
    examples: list = field(default_factory=list)
    problems: list[LineProblem] = field(default_factory=list)
    n_examples: int = 0  # valid lines found, also when validate_file(keep_examples=False) kept none

    @property
    def ok(self) -> bool:
        return not self.problems


# Completion tokens per choice when a request gives no max_tokens (ml.sampling; capped by the context
# left). Here, in a module without torch, so the API can check request limits before loading a model.
DEFAULT_MAX_TOKENS = 512


@dataclass(frozen=True)
class ModelRef:
    """What sampling needs to load a model: a base HF directory and an optional LoRA adapter."""

    base_dir: Path
    adapter_dir: Path | None = None


@dataclass(frozen=True)
class TrainResult:
    """What a training run returns to its caller (the worker or a notebook)."""

    status: str  # "succeeded" | "cancelled" | "paused"
    adapter_dir: Path | None  # final adapter (None unless succeeded)
    trained_tokens: int  # tokens seen by the model across all epochs (prompt + completion)
    steps: int  # optimizer steps completed


@dataclass(frozen=True)
class PreferencePair:
    """One DPO line: a prompt (raw OpenAI input messages + optional tools) and two assistant
    answers to it, the preferred one (`chosen`) and the non-preferred one (`rejected`)."""

    input_messages: list[dict]
    tools: list[dict] | None
    chosen: dict  # the preferred assistant message (raw OpenAI dict)
    rejected: dict  # the non-preferred assistant message
    line: int = 0  # 1-based line number in the source file
    parallel_tool_calls: bool | None = None


@dataclass(frozen=True)
class PromptExample:
    """One reinforcement (RFT) line: the prompt the policy answers (raw OpenAI messages ending with
    a user message, plus optional tools) and `item`, every other field of the line. Graders see
    the whole line (line_dict: messages and tools too) as {{item.*}} (python graders as `item`)."""

    messages: list[dict]
    tools: list[dict] | None
    item: dict  # the line's fields other than the reserved "messages" and "tools"
    line: int = 0  # 1-based line number in the source file

    @property
    def line_dict(self) -> dict:
        """The whole training line again: what graders get as `item`. OpenAI passes the line as it
        is, so a cookbook grader templating {{item.messages}} sees the prompt."""
        return {"messages": self.messages, **({"tools": self.tools} if self.tools is not None else {}), **self.item}
