"""One line validator per fine-tuning method, and the registry validate_file looks them up in.

A line validator turns one parsed JSON object into (example, problems); the message and tools checks
they share are in messages.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from modelmill.ml.chat_format import content_text
from modelmill.ml.data.checker import Checker, short
from modelmill.ml.data.messages import check_messages, check_tools
from modelmill.ml.types import ChatExample, LineProblem, PreferencePair, PromptExample
from modelmill.ml.vision import ImagePolicy

# A line validator turns one parsed JSON object into (example, problems). It must not raise on bad
# content; problems carry the line number it was given. `images` (keyword) is where image_url parts
# may come from (ml/vision.py), None for a text-only base model: validate_file passes it on.
LineValidator = Callable[..., tuple[Any | None, list[LineProblem]]]


def validate_supervised_line(obj: dict, line: int, *, images: ImagePolicy | None = None
                             ) -> tuple[ChatExample | None, list[LineProblem]]:
    """One SFT line: {"messages": [...], "tools"?: [...], "parallel_tool_calls"?: bool}."""
    c = Checker(line, images)
    if "functions" in obj:
        c.add("functions", "unsupported_field", "functions is deprecated; use tools")
    tool_names = check_tools(obj["tools"], "tools", c) if "tools" in obj else None
    parallel = obj.get("parallel_tool_calls")
    if "parallel_tool_calls" in obj:
        c.type_is(parallel, bool, "parallel_tool_calls", "a boolean")
    if c.required(obj, "messages", ""):
        check_messages(obj["messages"], "messages", c, tool_names=tool_names,
                       allow_parallel=parallel is not False, require_target=True)
    if c.problems:
        return None, c.problems
    return ChatExample(messages=obj["messages"], tools=obj.get("tools"),
                       parallel_tool_calls=parallel if isinstance(parallel, bool) else None, line=line), []


# The two spellings of each preference output (OpenAI's guide says *_output, its schema *_completion).
PREFERENCE_OUTPUTS = (("preferred_output", "preferred_completion"),
                      ("non_preferred_output", "non_preferred_completion"))
# Roles the last input message of a preference line may have: the outputs answer it.
PREFERENCE_LAST_ROLES = ("user", "tool")


def validate_preference_line(obj: dict, line: int, *, images: ImagePolicy | None = None
                             ) -> tuple[PreferencePair | None, list[LineProblem]]:
    """One DPO line: {"input": {"messages", "tools"?, "parallel_tool_calls"?},
    "preferred_output": [assistant message], "non_preferred_output": [assistant message]}.

    `preferred_completion` / `non_preferred_completion` (OpenAI's schema names) are accepted
    too; giving both spellings of one output is `conflicting_fields`. Rules beyond the
    per-message checks SFT also makes:
    - input.messages may hold any earlier turns but must end with a user (or tool-result)
      message, since both outputs answer it (`invalid_last_role`); it needs no assistant turn.
    - each output is an array of exactly one assistant message, without `weight`
      (`weight_not_allowed`), with non-blank content or tool calls (`empty_output`).
    - the two outputs must differ (`identical_outputs`): a pair with nothing to prefer
      teaches nothing and makes the DPO margin 0 by construction.
    """
    c = Checker(line, images)
    inp = obj.get("input")
    tools, parallel, messages = None, None, None
    if c.required(obj, "input", "") and c.type_is(inp, dict, "input", "an object"):
        tool_names = check_tools(inp["tools"], "input.tools", c) if "tools" in inp else None
        tools = inp.get("tools")
        parallel = inp.get("parallel_tool_calls")
        if "parallel_tool_calls" in inp:
            c.type_is(parallel, bool, "input.parallel_tool_calls", "a boolean")
        if c.required(inp, "messages", "input"):
            messages = inp["messages"]
            n_before = c.n
            check_messages(messages, "input.messages", c, tool_names=tool_names,
                           allow_parallel=parallel is not False, require_target=False)
            if c.n == n_before:
                last = messages[-1]["role"]
                if last not in PREFERENCE_LAST_ROLES:
                    c.add(f"input.messages[{len(messages) - 1}].role", "invalid_last_role",
                          f"the last input message must be a user (or tool) message, got {last!r}: "
                          f"the preferred and non-preferred outputs answer it")
    else:
        tool_names = None
    outputs = [_check_preference_output(obj, names, c, tool_names, parallel is not False)
               for names in PREFERENCE_OUTPUTS]
    if all(o is not None for o in outputs) and _output_key(outputs[0][1]) == _output_key(outputs[1][1]):
        c.add(outputs[1][0], "identical_outputs", "the preferred and non-preferred outputs are identical")
    if c.problems:
        return None, c.problems
    return PreferencePair(input_messages=messages, tools=tools, chosen=outputs[0][1], rejected=outputs[1][1],
                          line=line, parallel_tool_calls=parallel if isinstance(parallel, bool) else None), []


def _check_preference_output(obj: dict, names: tuple[str, str], c: Checker, tool_names: set[str] | None,
                             allow_parallel: bool) -> tuple[str, dict] | None:
    """Check one output (either spelling); returns (field name, the assistant message) when valid."""
    present = [n for n in names if n in obj]
    if not present:
        c.add(names[0], "missing_field", f"missing required field '{names[0]}' (or '{names[1]}')")
        return None
    if len(present) == 2:
        c.add(names[1], "conflicting_fields", f"give either '{names[0]}' or '{names[1]}', not both")
        return None
    key, value = present[0], obj[present[0]]
    if not c.type_is(value, list, key, "an array with one assistant message"):
        return None
    if len(value) != 1:
        c.add(key, "invalid_value", f"expected exactly one assistant message, got {len(value)}")
        return None
    n_before = c.n
    msg, mpath = value[0], f"{key}[0]"
    if isinstance(msg, dict) and "role" in msg and msg["role"] != "assistant":
        c.add(f"{mpath}.role", "invalid_value", f"an output message must have role 'assistant', got {short(msg['role'])}")
        return None
    if isinstance(msg, dict) and "weight" in msg:
        c.add(f"{mpath}.weight", "weight_not_allowed", "weight is not allowed in a preference output")
        return None
    check_messages(value, key, c, tool_names=tool_names, allow_parallel=allow_parallel, require_target=True,
                   empty_code="empty_output")  # blank content without tool calls
    if c.n > n_before:
        return None
    return key, msg


def _output_key(msg: dict) -> str:
    """What decides whether two outputs are the same answer: their text and their tool calls."""
    calls = [(tc["function"]["name"], json.loads(tc["function"]["arguments"])) for tc in msg.get("tool_calls") or []]
    return json.dumps([content_text(msg.get("content")).strip(), calls], sort_keys=True)


# The keys of a reinforcement line that are not grading data (OpenAI's reserved keywords).
REINFORCEMENT_RESERVED = ("messages", "tools")


def validate_reinforcement_line(obj: dict, line: int, *, images: ImagePolicy | None = None
                                ) -> tuple[PromptExample | None, list[LineProblem]]:
    """One RFT line: {"messages": [...], "tools"?: [...], <any other fields>}.

    The messages are the prompt the policy answers, so beyond the per-message checks SFT makes:
    - the last message must be a user message (`invalid_last_role`); earlier turns may be of
      any role (system/developer instructions, assistant turns, tool results). No assistant
      target is needed.
    - assistant turns are context, not targets: `weight` is rejected (`weight_not_allowed`).
    Every other top-level field (any JSON value, e.g. "reference_answer") is kept as the
    example's `item`, which graders read as {{item.<field>}}; only messages and tools are reserved.
    """
    c = Checker(line, images)
    tool_names = check_tools(obj["tools"], "tools", c) if "tools" in obj else None
    if c.required(obj, "messages", ""):
        messages = obj["messages"]
        n_before = c.n
        check_messages(messages, "messages", c, tool_names=tool_names, require_target=False)
        if c.n == n_before:
            for i, m in enumerate(messages):
                if m["role"] == "assistant" and "weight" in m:
                    c.add(f"messages[{i}].weight", "weight_not_allowed",
                          "weight is not used in reinforcement lines: assistant turns are context, not targets")
            last = messages[-1]["role"]
            if last != "user":
                c.add(f"messages[{len(messages) - 1}].role", "invalid_last_role",
                      f"the last message must be a user message, got {last!r}: the model answers it")
    if c.problems:
        return None, c.problems
    item = {k: v for k, v in obj.items() if k not in REINFORCEMENT_RESERVED}
    return PromptExample(messages=obj["messages"], tools=obj.get("tools"), item=item, line=line), []


# Per-method line validators (all share check_messages/check_tools for their message lists).
LINE_VALIDATORS: dict[str, LineValidator] = {
    "supervised": validate_supervised_line,
    "preference": validate_preference_line,
    "reinforcement": validate_reinforcement_line,
}
# Other names a method goes by (the fine-tuning job's method.type).
METHOD_ALIASES = {"sft": "supervised", "dpo": "preference", "rft": "reinforcement"}
