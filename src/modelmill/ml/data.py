"""Read and validate training files (JSONL), one line validator per fine-tuning method.

This is the product's first line of defence: an uploaded file is checked here before any
GPU/CPU time is spent, and every problem comes back as a LineProblem with a 1-based line
number, a JSON path inside the line and a machine-readable code, e.g.
`line 7: messages[2].role: unknown role 'bot'`.

Why hand-written checks instead of running OpenAI's JSON schema (spec/openai-training-data-
schemas.json, FineTuneChatRequestInput) through `jsonschema`: the schema's oneOf over message
kinds turns one wrong field into a wall of "is not valid under any of the given schemas"
errors with no usable path, and it cannot express the cross-field rules (tool messages answer
an earlier tool call, arguments parse to an object, at least one trainable assistant turn).
tests/ml/test_data.py checks that the two agree on valid lines.

Reading (ml/jsonl.py) is streamed line by line with a per-line byte cap, so a hostile upload
costs bounded memory; strict JSON (no NaN, no duplicate keys, bounded depth); binary files are
reported once. Only the first MAX_PROBLEMS problems are kept (plus one summary problem with
the count of the rest).

Choices worth knowing:
- Blank (whitespace-only) lines are skipped, not reported; line numbers still count them.
- A UTF-8 byte-order mark at the start of the file is accepted and ignored.
- Unknown top-level keys are allowed (as in OpenAI's schema); unknown keys inside a message
  are rejected (`unknown_key`), so a typo such as "wieght" cannot silently change training.
- Deprecated/unsupported OpenAI fields (`functions`, `function_call`, the `function` role,
  audio, refusals, audio/file content parts) are rejected with a clear code rather than
  silently dropped. image_url parts are accepted for vision bases only (validate_file's `images`;
  ml/vision.py), in user messages; for a text-only base they stay `unsupported_content_part`.
- Problems are listed in file order; file-level problems (line 0) come last.
- `field` is the JSON path of the offending value inside the line. It is "" when the problem
  is the line as a whole (not JSON, not UTF-8, too long, too deep, not an object) or the file
  as a whole (line 0: empty_file, too_few_examples, too_many_problems; and binary_file /
  unsupported_encoding, which name the line where the bytes were found): there is no field
  to point at, and the code says what is wrong.
- Empty content is a problem (`empty_content`): a system, developer or user message, or an
  assistant message without tool_calls, whose content is "" or only whitespace teaches
  nothing (OpenAI's data-checking recipe counts it as missing content). Tool results may be
  empty. Preference outputs report it as `empty_output`.
- One line reports at most MAX_PROBLEMS problems (then one `too_many_problems` on that line),
  so a 4 MB line of a hundred thousand bad messages costs no more than a short one.

Error codes (LineProblem.code). File-level ones have line 0, except binary/encoding ones,
which name the line where the bytes were found:
  empty_file, too_few_examples, too_many_problems, binary_file, unsupported_encoding,
  line_too_long, invalid_utf8, invalid_json, non_finite_number, number_too_large, duplicate_key,
  too_deeply_nested, invalid_unicode, not_an_object, missing_field, invalid_type, invalid_value, empty_array,
  unknown_key, unsupported_field, unknown_role, unsupported_role, unsupported_content_part,
  too_many_images, invalid_image_url, image_url_not_allowed, image_too_large,
  invalid_image, unsupported_image_format, image_fetch_failed (image parts: ml/vision.py),
  missing_content, empty_content, invalid_weight, weight_not_allowed, no_assistant_target,
  invalid_function_name, invalid_arguments, unknown_tool, duplicate_tool_name,
  duplicate_tool_call_id, unknown_tool_call_id, parallel_tool_calls_disabled,
  and for preference (DPO) lines: conflicting_fields, invalid_last_role, empty_output,
  identical_outputs (see validate_preference_line); reinforcement (RFT) lines use
  invalid_last_role and weight_not_allowed (see validate_reinforcement_line).
"""

from __future__ import annotations

import contextvars
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from modelmill.errors import DataValidationError, InvalidRequestError
from modelmill.ml.chat_format import content_text
from modelmill.ml.jsonl import MAX_DEPTH, JsonlReader, scan_value, strict_json_loads, type_name
from modelmill.ml.types import ChatExample, LineProblem, PreferencePair, PromptExample, ValidationReport
from modelmill.ml.vision import MAX_IMAGES_PER_EXAMPLE, ImagePolicy, check_image_part

# Where image_url parts may come from while validate_file runs: None (the default) = a text-only base
# model, which refuses them (unsupported_content_part). A context variable rather than one more argument
# to every method's line validator: only _check_content reads it.
_IMAGES: contextvars.ContextVar[ImagePolicy | None] = contextvars.ContextVar("images", default=None)

MAX_PROBLEMS = 100  # problems kept per file; the rest are counted in one "too_many_problems"
MIN_EXAMPLES = 10  # OpenAI's minimum for a training file

ROLES = ("system", "developer", "user", "assistant", "tool")
FUNCTION_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

# Keys a message may carry, per role. Everything else is unknown_key / unsupported_field.
MESSAGE_KEYS = {
    "system": {"role", "content", "name"},
    "developer": {"role", "content", "name"},
    "user": {"role", "content", "name"},
    "assistant": {"role", "content", "name", "tool_calls", "weight"},
    "tool": {"role", "content", "tool_call_id"},
}
UNSUPPORTED_MESSAGE_KEYS = {
    "function_call": "function_call is deprecated; use tool_calls",
    "audio": "audio messages are not supported (text models only)",
    "refusal": "refusal is not supported; put the text in content",
}

# A line validator turns one parsed JSON object into (example, problems). It must not raise
# on bad content; problems carry the line number it was given.
LineValidator = Callable[[dict, int], "tuple[Any | None, list[LineProblem]]"]


# ---------------------------------------------------------------------------------------------
# Public API


def validate_file(path: Path, method: str = "supervised", *, min_examples: int = MIN_EXAMPLES,
                  keep_examples: bool = True, images: ImagePolicy | None = None) -> ValidationReport:
    """Check every line of a JSONL training file against `method`'s line format.

    Never raises on bad content: every problem becomes a LineProblem in the report
    (report.ok is False when there is any). Raises InvalidRequestError for an unknown method
    and OSError when the file cannot be opened. `keep_examples=False` keeps memory bounded
    for huge files (report.examples stays empty; report.n_examples still counts them).
    `images`: the base model reads images (ml/vision.py: where they may come from); None = text-only,
    and image_url parts are problems (unsupported_content_part, naming the text-only base).
    """
    token = _IMAGES.set(images)
    try:
        return _validate_file(path, method, min_examples, keep_examples)
    finally:
        _IMAGES.reset(token)


def _validate_file(path: Path, method: str, min_examples: int, keep_examples: bool) -> ValidationReport:
    validator = _line_validator(method)
    sink = _ProblemSink()
    examples: list = []
    n_valid = 0
    n_candidates = 0  # non-blank lines: each one is meant to be an example
    with open(path, "rb") as f:
        reader = JsonlReader(f)
        for line, obj, problem in reader:
            n_candidates += 1
            if problem is not None:
                sink.add(problem)
                continue
            example, problems = validator(obj, line)
            for p in problems:
                sink.add(p)
            if example is not None and not problems:
                n_valid += 1
                if keep_examples:
                    examples.append(example)
    if reader.binary:
        return ValidationReport(method=method, n_lines=0, examples=[], problems=sink.problems())
    if n_candidates == 0:
        sink.add_file(LineProblem(0, "", "empty_file", "file is empty: it contains no examples"))
    elif n_candidates < min_examples:
        sink.add_file(LineProblem(0, "", "too_few_examples",
                                  f"file has {n_candidates} example{'s' * (n_candidates != 1)}; "
                                  f"at least {min_examples} are required"))
    return ValidationReport(method=method, n_lines=reader.lines_read, examples=examples, problems=sink.problems(),
                            n_examples=n_valid)


def read_examples(path: Path, method: str = "supervised", *, min_examples: int = MIN_EXAMPLES,
                  images: ImagePolicy | None = None) -> list:
    """The examples of a valid file: ChatExample for "supervised", PreferencePair for "preference"
    (alias "dpo"), PromptExample for "reinforcement" (alias "rft"); messages stay raw OpenAI dicts.

    Raises errors.DataValidationError (with .problems) when the file has any problem.
    """
    report = validate_file(path, method, min_examples=min_examples, images=images)
    if not report.ok:
        raise DataValidationError(f"invalid training file: {format_problems(report.problems)}",
                                  report.problems, param="training_file")
    return report.examples


def format_problems(problems: list[LineProblem], limit: int = 5) -> str:
    """A one-line summary: the first `limit` problems, then "and N more"."""
    shown = "; ".join(str(p) for p in problems[:limit])
    rest = len(problems) - limit
    return shown + (f"; and {rest} more problem{'s' * (rest != 1)}" if rest > 0 else "")


# ---------------------------------------------------------------------------------------------
# Problems and line validators


class _ProblemSink:
    """Keeps the first MAX_PROBLEMS line problems and counts the rest; file problems always kept."""

    def __init__(self):
        self.kept: list[LineProblem] = []
        self.dropped = 0
        self.file: list[LineProblem] = []

    def add(self, p: LineProblem) -> None:
        if len(self.kept) < MAX_PROBLEMS:
            self.kept.append(p)
        else:
            self.dropped += 1

    def add_file(self, p: LineProblem) -> None:
        self.file.append(p)

    def problems(self) -> list[LineProblem]:
        out = self.kept + self.file
        if self.dropped:
            out.append(LineProblem(0, "", "too_many_problems",
                                   f"{self.dropped} more problem{'s' * (self.dropped != 1)} not shown "
                                   f"(only the first {MAX_PROBLEMS} are listed)"))
        return out


class Checker:
    """Collects problems for one line (validators for new methods build one per line); small
    helpers keep the per-field checks one-liners."""

    def __init__(self, line: int):
        self.line = line
        self.problems: list[LineProblem] = []  # at most MAX_PROBLEMS, then one too_many_problems
        self.n = 0  # problems found so far, counting those past the cap: compare this, not len()
        self.images = 0  # image_url parts seen on this line (at most MAX_IMAGES_PER_EXAMPLE)

    def add(self, field: str, code: str, message: str) -> None:
        self.n += 1
        if self.n <= MAX_PROBLEMS:
            self.problems.append(LineProblem(self.line, field, code, message))
            return
        rest = self.n - MAX_PROBLEMS
        self.problems[MAX_PROBLEMS:] = [LineProblem(self.line, "", "too_many_problems",
                                                    f"{rest} more problem{'s' * (rest != 1)} on this line not shown "
                                                    f"(only the first {MAX_PROBLEMS} are listed)")]

    def type_is(self, value: Any, expected: type | tuple, field: str, what: str) -> bool:
        ok = isinstance(value, expected) and not (isinstance(value, bool) and bool not in _as_tuple(expected))
        if not ok:
            self.add(field, "invalid_type", f"expected {what}, got {type_name(value)}")
        return ok

    def required(self, obj: dict, key: str, path: str) -> bool:
        if key not in obj:
            self.add(_join(path, key), "missing_field", f"missing required field '{key}'")
            return False
        return True


def validate_supervised_line(obj: dict, line: int) -> tuple[ChatExample | None, list[LineProblem]]:
    """One SFT line: {"messages": [...], "tools"?: [...], "parallel_tool_calls"?: bool}."""
    c = Checker(line)
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


def validate_preference_line(obj: dict, line: int) -> tuple[PreferencePair | None, list[LineProblem]]:
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
    c = Checker(line)
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
        c.add(f"{mpath}.role", "invalid_value", f"an output message must have role 'assistant', got {_short(msg['role'])}")
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


def validate_reinforcement_line(obj: dict, line: int) -> tuple[PromptExample | None, list[LineProblem]]:
    """One RFT line: {"messages": [...], "tools"?: [...], <any other fields>}.

    The messages are the prompt the policy answers, so beyond the per-message checks SFT makes:
    - the last message must be a user message (`invalid_last_role`); earlier turns may be of
      any role (system/developer instructions, assistant turns, tool results). No assistant
      target is needed.
    - assistant turns are context, not targets: `weight` is rejected (`weight_not_allowed`).
    Every other top-level field (any JSON value, e.g. "reference_answer") is kept as the
    example's `item`, which graders read as {{item.<field>}}; only messages and tools are reserved.
    """
    c = Checker(line)
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


def _line_validator(method: str) -> LineValidator:
    try:
        return LINE_VALIDATORS[METHOD_ALIASES.get(method, method)]
    except KeyError:
        known = ", ".join(sorted(LINE_VALIDATORS))
        raise InvalidRequestError(f"no training-file validator for method {method!r} (known: {known})",
                                  param="method") from None


def check_messages(messages: Any, path: str, c: Checker, *, tool_names: set[str] | None,
                   allow_parallel: bool = True, require_target: bool = True,
                   empty_code: str = "empty_content") -> None:
    """Check an OpenAI message list at `path`; problems go to `c`.

    tool_names: the functions declared in `tools` (None when the line has no tools, in which
    case tool calls are not checked against a declaration). require_target: at least one
    assistant message with weight != 0 must exist. empty_code: the code for blank content
    (see the module docstring).
    """
    if not c.type_is(messages, list, path, "an array of messages"):
        return
    if not messages:
        c.add(path, "empty_array", "messages must contain at least one message")
        return
    call_ids: set[str] = set()
    has_target = False
    undecidable = False  # a message whose role we could not read might have been the target
    for i, m in enumerate(messages):
        mpath = f"{path}[{i}]"
        if not c.type_is(m, dict, mpath, "a message object"):
            undecidable = True
            continue
        role = _check_role(m, mpath, c)
        if role is None:
            undecidable = True
            continue
        _check_message_keys(m, role, mpath, c)
        if role == "assistant":
            has_target |= _check_assistant(m, mpath, c, tool_names, allow_parallel, call_ids, empty_code)
        elif _check_content(m, mpath, c, required=True) and role != "tool" and _blank(m["content"]):
            c.add(f"{mpath}.content", empty_code, f"{role} message content is empty")
        if role == "tool" and c.required(m, "tool_call_id", mpath):
            tcid = m["tool_call_id"]
            if c.type_is(tcid, str, f"{mpath}.tool_call_id", "a string") and tcid not in call_ids:
                c.add(f"{mpath}.tool_call_id", "unknown_tool_call_id",
                      f"tool_call_id {_short(tcid)} does not match a tool call in an earlier assistant message")
    if require_target and not has_target and not undecidable:
        c.add(path, "no_assistant_target",
              "no assistant message to learn from (need at least one assistant message with weight != 0)")


def check_tools(tools: Any, path: str, c: Checker) -> set[str] | None:
    """Check a `tools` array ({"type": "function", "function": {...}}); returns the declared
    names, or None when `tools` is not an array (then calls are not checked against it)."""
    names: set[str] = set()
    if not c.type_is(tools, list, path, "an array of tools"):
        return None
    for i, t in enumerate(tools):
        tpath = f"{path}[{i}]"
        if not c.type_is(t, dict, tpath, "a tool object"):
            continue
        if c.required(t, "type", tpath) and t["type"] != "function":
            c.add(f"{tpath}.type", "invalid_value", f"tool type must be 'function', got {_short(t['type'])}")
        if not c.required(t, "function", tpath) or not c.type_is(t["function"], dict, f"{tpath}.function",
                                                                 "a function object"):
            continue
        fn, fpath = t["function"], f"{tpath}.function"
        name = _check_function_name(fn, fpath, c)
        if name is not None:
            if name in names:
                c.add(f"{fpath}.name", "duplicate_tool_name", f"tool {name!r} is declared more than once")
            names.add(name)
        if "description" in fn:
            c.type_is(fn["description"], str, f"{fpath}.description", "a string")
        if "parameters" in fn:
            c.type_is(fn["parameters"], dict, f"{fpath}.parameters", "a JSON schema object")
        if "strict" in fn and fn["strict"] is not None:
            c.type_is(fn["strict"], bool, f"{fpath}.strict", "a boolean")
    return names


def _check_role(m: dict, mpath: str, c: Checker) -> str | None:
    if not c.required(m, "role", mpath):
        return None
    role = m["role"]
    if not c.type_is(role, str, f"{mpath}.role", "a string"):
        return None
    if role == "function":
        c.add(f"{mpath}.role", "unsupported_role", "role 'function' is deprecated; use 'tool' with tool_call_id")
        return None
    if role not in ROLES:
        c.add(f"{mpath}.role", "unknown_role", f"unknown role {_short(role)} (expected one of {', '.join(ROLES)})")
        return None
    return role


def _check_message_keys(m: dict, role: str, mpath: str, c: Checker) -> None:
    for key in m:
        if key in MESSAGE_KEYS[role]:
            continue
        kpath = _join(mpath, key)
        if key in UNSUPPORTED_MESSAGE_KEYS:
            c.add(kpath, "unsupported_field", UNSUPPORTED_MESSAGE_KEYS[key])
        elif key == "weight":
            c.add(kpath, "weight_not_allowed", f"weight is only allowed on assistant messages, not {role}")
        elif key == "tool_calls":
            c.add(kpath, "unknown_key", f"tool_calls is only allowed on assistant messages, not {role}")
        else:
            allowed = ", ".join(sorted(MESSAGE_KEYS[role]))
            c.add(kpath, "unknown_key", f"unknown key {key!r} in a {role} message (allowed: {allowed})")
    if "name" in m and "name" in MESSAGE_KEYS[role]:
        c.type_is(m["name"], str, f"{mpath}.name", "a string")


def _check_assistant(m: dict, mpath: str, c: Checker, tool_names: set[str] | None, allow_parallel: bool,
                     call_ids: set[str], empty_code: str = "empty_content") -> bool:
    """Checks content/tool_calls/weight; True when this message is a training target."""
    has_calls = "tool_calls" in m and m["tool_calls"] is not None
    has_content = m.get("content") is not None
    if has_content and _check_content(m, mpath, c, required=False) and not has_calls and _blank(m["content"]):
        c.add(f"{mpath}.content", empty_code, "assistant message content is empty and it has no tool_calls")
    if has_calls:
        _check_tool_calls(m["tool_calls"], f"{mpath}.tool_calls", c, tool_names, allow_parallel, call_ids)
    if not has_content and not has_calls:
        c.add(f"{mpath}.content", "missing_content", "assistant message needs content or tool_calls")
    weight = m.get("weight", 1)
    if "weight" in m and (type(weight) is not int or weight not in (0, 1)):
        c.add(f"{mpath}.weight", "invalid_weight", f"weight must be 0 or 1, got {_short(weight)}")
        return True  # already reported; do not pile a no_assistant_target on top
    return weight != 0


def _check_content(m: dict, mpath: str, c: Checker, *, required: bool) -> bool:
    """True when the message has content and it is well formed (a string or text parts)."""
    path = f"{mpath}.content"
    if "content" not in m:
        if required:
            c.add(path, "missing_field", "missing required field 'content'")
        return False
    content = m["content"]
    if isinstance(content, str):
        return True
    if not isinstance(content, list):
        what = "a string or an array of text parts" + ("" if required else " (or null)")
        c.add(path, "invalid_type", f"expected {what}, got {type_name(content)}")
        return False
    if not content:
        c.add(path, "empty_array", "content parts array must not be empty")
        return False
    n_before = c.n
    for j, part in enumerate(content):
        ppath = f"{path}[{j}]"
        if not c.type_is(part, dict, ppath, "a content part object"):
            continue
        if not c.required(part, "type", ppath):
            continue
        if part["type"] == "image_url":
            _check_image(m, part, ppath, c)
        elif part["type"] != "text":
            c.add(f"{ppath}.type", "unsupported_content_part",
                  f"content part type {_short(part['type'])} is not supported (only 'text')")
        elif c.required(part, "text", ppath):
            c.type_is(part["text"], str, f"{ppath}.text", "a string")
    return c.n == n_before


def _check_image(m: dict, part: dict, ppath: str, c: Checker) -> None:
    """An image_url part: only for vision bases, only in user messages (OpenAI's rule), at most
    MAX_IMAGES_PER_EXAMPLE per line; the image itself is checked by vision.check_image_part."""
    policy = _IMAGES.get()
    if policy is None:
        c.add(f"{ppath}.type", "unsupported_content_part", "image_url parts need a vision-language base model "
                                                           "(e.g. modelmill-tiny-vl); this base model is text-only")
        return
    if policy.refused:
        c.add(f"{ppath}.type", "unsupported_content_part", policy.refused)
        return
    if m.get("role") != "user":
        c.add(f"{ppath}.type", "unsupported_content_part",
              f"image_url parts are only allowed in user messages, not {_short(m.get('role'))}")
        return
    c.images += 1
    if c.images == MAX_IMAGES_PER_EXAMPLE + 1:
        c.add(ppath, "too_many_images", f"more than {MAX_IMAGES_PER_EXAMPLE} images in one example (OpenAI's limit)")
    check_image_part(part, ppath, c.add, policy)


def _blank(content: str | list) -> bool:
    """Well-formed content (a string or text parts) with nothing but whitespace in it (an image part
    is not blank)."""
    if isinstance(content, list) and any(isinstance(p, dict) and p.get("type") == "image_url" for p in content):
        return False
    return not content_text(content).strip()


def _check_tool_calls(calls: Any, path: str, c: Checker, tool_names: set[str] | None, allow_parallel: bool,
                      call_ids: set[str]) -> None:
    if not c.type_is(calls, list, path, "an array of tool calls"):
        return
    if not calls:
        c.add(path, "empty_array", "tool_calls must not be empty (omit it instead)")
    if len(calls) > 1 and not allow_parallel:
        c.add(path, "parallel_tool_calls_disabled",
              f"{len(calls)} tool calls in one message but parallel_tool_calls is false")
    for k, tc in enumerate(calls):
        tpath = f"{path}[{k}]"
        if not c.type_is(tc, dict, tpath, "a tool call object"):
            continue
        for key in tc:
            if key not in ("id", "type", "function"):
                c.add(_join(tpath, key), "unknown_key", f"unknown key {key!r} in a tool call")
        if c.required(tc, "id", tpath) and c.type_is(tc["id"], str, f"{tpath}.id", "a string"):
            if not tc["id"]:
                c.add(f"{tpath}.id", "invalid_value", "tool call id must not be empty")
            elif tc["id"] in call_ids:
                c.add(f"{tpath}.id", "duplicate_tool_call_id", f"tool call id {_short(tc['id'])} is used twice")
            call_ids.add(tc["id"])
        if c.required(tc, "type", tpath) and tc["type"] != "function":
            c.add(f"{tpath}.type", "invalid_value", f"tool call type must be 'function', got {_short(tc['type'])}")
        if not c.required(tc, "function", tpath) or not c.type_is(tc["function"], dict, f"{tpath}.function",
                                                                  "a function object"):
            continue
        fn, fpath = tc["function"], f"{tpath}.function"
        name = _check_function_name(fn, fpath, c)
        if name is not None and tool_names is not None and name not in tool_names:
            c.add(f"{fpath}.name", "unknown_tool", f"function {name!r} is not declared in tools")
        if c.required(fn, "arguments", fpath):
            _check_arguments(fn["arguments"], f"{fpath}.arguments", c)


def _check_function_name(fn: dict, fpath: str, c: Checker) -> str | None:
    if not c.required(fn, "name", fpath) or not c.type_is(fn["name"], str, f"{fpath}.name", "a string"):
        return None
    if not FUNCTION_NAME_RE.match(fn["name"]):
        c.add(f"{fpath}.name", "invalid_function_name",
              f"function name {_short(fn['name'])} must be 1-64 characters of a-z, A-Z, 0-9, _ or -")
        return None
    return fn["name"]


def _check_arguments(args: Any, path: str, c: Checker) -> None:
    if not isinstance(args, str):
        c.add(path, "invalid_type", f"arguments must be a JSON-encoded string, got {type_name(args)}")
        return
    try:
        parsed = strict_json_loads(args)
    except RecursionError:
        c.add(path, "invalid_arguments", f"arguments is nested deeper than {MAX_DEPTH} levels")
        return
    except ValueError as e:
        c.add(path, "invalid_arguments", f"arguments is not valid JSON: {str(e)[:200]}")
        return
    problem = scan_value(parsed, args)  # the chat template re-serialises arguments: same limits as a line
    if problem is not None:
        c.add(path, "invalid_arguments", f"arguments: {problem[1]}")
        return
    if not isinstance(parsed, dict):
        c.add(path, "invalid_arguments", f"arguments must encode a JSON object, got {type_name(parsed)}")


# ---------------------------------------------------------------------------------------------
# Small helpers


def _as_tuple(t: type | tuple) -> tuple:
    return t if isinstance(t, tuple) else (t,)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _short(v: Any, limit: int = 60) -> str:
    """repr() for messages, cut so a hostile 4 MB value cannot bloat the error."""
    r = repr(v) if isinstance(v, str) else json.dumps(v) if _json_scalar(v) else type_name(v)
    return r if len(r) <= limit else r[:limit] + "..."


def _json_scalar(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, float))
