"""Read and validate training files (JSONL), one line validator per fine-tuning method.

This is the product's first line of defence: an uploaded file is checked here before any
GPU/CPU time is spent, and every problem comes back as a LineProblem with a 1-based line
number, a JSON path inside the line and a machine-readable code, e.g.
`line 7: messages[2].role: unknown role 'bot'`.

Layout: this file reads a whole file (validate_file, read_examples) and keeps its problems;
methods.py has one line validator per method (LINE_VALIDATORS, where a new method plugs in);
messages.py the message-list and tools checks they share; images.py image_url parts; checker.py
the per-line Checker they all write problems to.

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

from pathlib import Path

from modelmill.errors import DataValidationError, InvalidRequestError
from modelmill.ml.data.checker import MAX_PROBLEMS
from modelmill.ml.data.methods import LINE_VALIDATORS, METHOD_ALIASES, LineValidator
from modelmill.ml.jsonl import JsonlReader
from modelmill.ml.types import LineProblem, ValidationReport
from modelmill.ml.vision import ImagePolicy

__all__ = ["LINE_VALIDATORS", "MAX_PROBLEMS", "METHOD_ALIASES", "MIN_EXAMPLES", "LineValidator", "format_problems",
           "read_examples", "validate_file"]

MIN_EXAMPLES = 10  # OpenAI's minimum for a training file


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
            example, problems = validator(obj, line, images=images)
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



def _line_validator(method: str) -> LineValidator:
    try:
        return LINE_VALIDATORS[METHOD_ALIASES.get(method, method)]
    except KeyError:
        known = ", ".join(sorted(LINE_VALIDATORS))
        raise InvalidRequestError(f"no training-file validator for method {method!r} (known: {known})",
                                  param="method") from None
