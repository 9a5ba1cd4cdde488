"""A conversation -> the prompt text the model continues (the tokenizer's chat template, as training
renders it, plus a forced tool call's prefill and its grammar), and the text rules applied to what comes
back: token budgets, stop strings, and how much of a streamed text is safe to send."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modelmill.errors import InvalidRequestError
from modelmill.ml import chat_families, chat_format, constraints
from modelmill.ml.sampling.params import SamplingParams
from modelmill.ml.types import DEFAULT_MAX_TOKENS  # the budget when max_tokens is None

TOOL_CALL_OPEN = "<tool_call>"  # ModelMill's ChatML tool-call marker (each family has its own: chat_families)


@dataclass(frozen=True)
class Prompt:
    text: str  # rendered chat template, ending with the assistant header (+ prefill)
    prefill: str  # forced start of the completion (tool_choice required / named), "" otherwise
    parse_tools: bool  # parse tool calls out of the completion
    family: chat_families.Family = chat_families.FAMILIES["chatml"]  # how tool calls look and parse
    constraint: constraints.Constraint | None = None  # the rest of a forced tool call (after the prefill)
    images: tuple = ()  # PIL images of a VLM prompt, in the order of their placeholders in `text`


def row_constraints(prompts: list[Prompt], params: SamplingParams) -> list[constraints.Constraint | None] | None:
    """Per prompt: a forced call's grammar, else response_format's, else strict tools' (None: nothing constrained)."""
    per = [p.constraint if p.prefill else params.constraint or p.constraint for p in prompts]
    return per if any(per) else None


def render(tokenizer, messages: list[dict], tools: list[dict] | None, tool_choice: Any) -> Prompt:
    mode, forced_name = tool_mode(tools, tool_choice)
    from jinja2 import TemplateError

    family = chat_families.family_of(tokenizer)
    try:
        text = chat_format.render(tokenizer, messages, tools if mode != "none" else None, add_generation_prompt=True)
    except (TemplateError, TypeError, AttributeError, KeyError) as e:
        raise InvalidRequestError(f"could not render messages with the chat template: {e}", param="messages") from e
    except RecursionError:  # e.g. tool parameters nested hundreds deep: the request's fault, so a 400
        raise InvalidRequestError("could not render the chat template: the request's "
                                  f"{'tools are' if tools else 'messages are'} nested too deeply",
                                  param="tools" if tools else "messages", code="nested_too_deeply") from None
    prefill = family.prefill(forced_name) if mode == "required" else ""
    # A forced call, or any call under "auto" with a strict tool, is decoded under a grammar (ml/constraints.py).
    constraint = constraints.for_tools(tools, mode, forced_name, family, tokenizer)
    return Prompt(text + prefill, prefill, parse_tools=mode != "none", family=family, constraint=constraint)


def tool_mode(tools: list[dict] | None, tool_choice: Any) -> tuple[str, str | None]:
    """("none" | "auto" | "required", forced function name or None)."""
    names = [(t.get("function") or {}).get("name") for t in tools or [] if isinstance(t, dict)]
    if tool_choice is None:
        return ("auto" if names else "none"), None
    if tool_choice in ("none", "auto"):
        return ("none" if tool_choice == "none" or not names else "auto"), None
    if tool_choice == "required":
        if not names:
            raise InvalidRequestError("tool_choice 'required' needs tools", param="tool_choice")
        return "required", None
    if isinstance(tool_choice, dict) and tool_choice.get("type") == "function":
        name = (tool_choice.get("function") or {}).get("name")
        if name not in names:
            raise InvalidRequestError(f"tool_choice names function {name!r}, which is not in tools",
                                      param="tool_choice")
        return "required", name
    raise InvalidRequestError("tool_choice must be 'none', 'auto', 'required' or "
                              '{"type": "function", "function": {"name": ...}}', param="tool_choice")


def tools_per_conversation(tools: list | None, n: int) -> list[list[dict] | None]:
    if tools and all(t is None or isinstance(t, list) for t in tools):
        if len(tools) != n:
            raise InvalidRequestError("per-conversation tools must have one entry per conversation", param="tools")
        return list(tools)
    return [tools] * n


def token_budget(params: SamplingParams, context: int, prompt_len: int) -> int:
    left = context - prompt_len
    if left <= 0:
        raise InvalidRequestError(f"the prompt is {prompt_len} tokens; the model's context is {context}",
                                  param="messages", code="context_length_exceeded")
    return min(params.max_tokens or DEFAULT_MAX_TOKENS, left)


def first_stop(text: str, stops: list[str] | None) -> int | None:
    hits = [i for i in (text.find(s) for s in stops or []) if i >= 0]
    return min(hits) if hits else None


def safe_prefix_len(text: str, markers: list[str], prompt: Prompt) -> int:
    """How much of the streamed text can be sent: not a forced tool call, not past the first
    tool-call marker of the model's family, and not a trailing piece that may grow into a stop
    string or marker."""
    if prompt.prefill:
        return 0
    limit = len(text)
    if prompt.parse_tools:
        for marker in prompt.family.markers:
            t = text.find(marker)
            if t >= 0:
                limit = min(limit, t)
    for m in markers:
        for k in range(min(len(m) - 1, len(text)), 0, -1):
            if text.endswith(m[:k]):
                limit = min(limit, len(text) - k)
                break
    return limit
