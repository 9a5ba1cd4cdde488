"""OpenAI's grader templating: `{{ namespace.variable }}` substitution.

Rules (OpenAI's graders guide):
- Every `{{ ... }}` names a namespace and a variable: `{{ item.reference_answer }}`,
  `{{ sample.output_text }}`. The only namespaces are `item` (the dataset row) and `sample` (the
  model output: output_text, output_json, output_tools, choices, output_audio).
- Nested values use a JSON-path-like syntax: `{{ item.a.b }}`, `{{ sample.output_tools[0].function.name }}`,
  `{{ item["key with spaces"] }}`. Whitespace inside the braces is ignored.
- A string value is inserted as it is; any other value (number, bool, null, object, list) as JSON.

A variable that does not resolve raises InvalidVariable, which grading reports as
`invalid_variable_error` (or `sample_parse_error` when it reaches into `sample.output_json`
of a sample that was not JSON). Text outside `{{ }}` is never touched.
"""

from __future__ import annotations

import json
import re

NAMESPACES = ("item", "sample")
# OpenAI's sample fields, then ModelMill's agentic RFT extension (docs/agentic_rft.md): the rollout's whole
# message list and the environment's final state. Outside agentic RFT they are not set, and a template
# naming them gets an invalid_variable_error.
SAMPLE_FIELDS = ("output_text", "output_json", "output_tools", "choices", "output_audio", "messages",
                 "environment_state")

_TAG = re.compile(r"\{\{(.*?)\}\}", re.S)
# One path step after the namespace: .key | [3] | ["key"] | ['key'].
_STEP = re.compile(r"""\s*(?:\.\s*([^.\[\]\s]+)|\[\s*(?:(\d+)|"((?:[^"\\]|\\.)*)"|'((?:[^'\\]|\\.)*)')\s*\])""")
_HEAD = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)")


class InvalidVariable(ValueError):
    """A template variable that is malformed or does not resolve against the sample / item."""

    def __init__(self, variable: str, reason: str, *, sample_parse: bool = False):
        super().__init__(f"{{{{{variable}}}}}: {reason}")
        self.variable = variable
        self.reason = reason
        self.sample_parse = sample_parse  # True: sample.output_json needed but the sample is not JSON


def parse_path(expr: str) -> list:
    """'item.a[0]["b"]' -> ['item', 'a', 0, 'b']; checks the namespace (and the sample field)."""
    head = _HEAD.match(expr)
    if not head:
        raise InvalidVariable(expr.strip(), "expected namespace.variable, e.g. item.answer")
    path: list = [head.group(1)]
    pos = head.end()
    while pos < len(expr) and expr[pos:].strip():
        step = _STEP.match(expr, pos)
        if not step:
            raise InvalidVariable(expr.strip(), f"cannot parse the path at {expr[pos:].strip()[:40]!r}")
        key, index, dq, sq = step.groups()
        if index is not None:
            path.append(int(index))
        elif key is not None:
            path.append(key)
        elif dq is not None:
            path.append(json.loads(f'"{dq}"'))  # JSON string escapes, as in a JSON path
        else:
            path.append(sq.replace("\\'", "'"))
        pos = step.end()
    if path[0] not in NAMESPACES:
        raise InvalidVariable(expr.strip(), f"unknown namespace {path[0]!r}; use item or sample")
    if len(path) < 2:
        raise InvalidVariable(expr.strip(), "name a variable inside the namespace, e.g. item.answer")
    if path[0] == "sample" and path[1] not in SAMPLE_FIELDS:
        raise InvalidVariable(expr.strip(), f"unknown sample variable {path[1]!r}; one of {', '.join(SAMPLE_FIELDS)}")
    return path


def variables(template: str) -> list[str]:
    """The expressions inside each `{{ }}` of a template, in order."""
    return [m.group(1) for m in _TAG.finditer(template)]


def check_template(template: str) -> None:
    """Raise InvalidVariable for the first malformed variable (no data needed)."""
    for expr in variables(template):
        parse_path(expr)


def lookup(expr: str, sample: dict, item: dict):
    """The value a template expression names."""
    path = parse_path(expr)
    value = item if path[0] == "item" else sample
    if path[0] == "sample" and path[1] == "output_json" and sample.get("output_json") is None:
        raise InvalidVariable(expr.strip(), "the sample is not valid JSON", sample_parse=True)
    for depth, step in enumerate(path[1:], start=1):
        if isinstance(step, int) and isinstance(value, list) and step < len(value):
            value = value[step]
        elif isinstance(step, str) and isinstance(value, dict) and step in value:
            value = value[step]
        else:
            where = _format(path[:depth])
            raise InvalidVariable(expr.strip(), f"{where} has no {'index' if isinstance(step, int) else 'key'} "
                                                f"{step!r}")
    return value


def to_text(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def render(template: str, sample: dict, item: dict) -> str:
    """Substitute every `{{ namespace.path }}` in template."""
    if "{{" not in template:
        return template
    return _TAG.sub(lambda m: to_text(lookup(m.group(1), sample, item)), template)


def _format(path: list) -> str:
    out = str(path[0])
    for step in path[1:]:
        out += f"[{step}]" if isinstance(step, int) else f".{step}"
    return out
