"""The SFT story's data and metric: BFCL `simple_python` (bfcl-eval, Apache-2.0) and its checker.

    pip install --no-deps bfcl-eval==2026.3.23     # `make results` does this

BFCL's data: `bfcl_eval/data/BFCL_v4_simple_python.json` holds one JSON object per line (id, question
= [[user message]], function = [one function schema]); `data/possible_answer/<same name>` holds the
ground truth, {function name: {argument: [acceptable values]}}, where "" among the values means the
argument may be left out.

What this module adds:
- `openai_tool`: BFCL's schema as an OpenAI tool. BFCL writes "type": "dict" (and "float",
  "tuple", "any"); OpenAI's JSON schema says "object" ("number", "array", "string"): BFCL's own
  GORILLA_TO_OPENAPI table maps them. OpenAI function names allow no "." (ModelMill validates
  names as OpenAI does), so "math.factorial" becomes "math_factorial", as BFCL's own OpenAI handler
  does; the checker is told the same (`underscore_to_dot`).
- `canonical_args`: one call the checker accepts, used as a training target: arguments whose
  acceptable values include "" are left out (or written out: always, or when the request states the
  value), every other argument takes its first listed value.
- `variants`: new training requests for a function, generated from one example by swapping the
  numbers the request spells out (an argument's value written once in the question, e.g. "a base
  of 10 units") for other numbers of the same kind, with the call changed to match. This is the
  seed talk's recipe (training data generated from the function schema) in the one form that
  needs no other model: the phrasing is BFCL's, the argument values are new.
- `check_call`: BFCL's own AST checker (`simple_function_checker`: name, required arguments, types
  with Python's int -> float promotion, each value one of the acceptable ones, strings compared
  case- and punctuation-insensitively, optional arguments).
"""

from __future__ import annotations

import copy
import json
import random
import re
import sys
import types
from dataclasses import dataclass
from pathlib import Path

BFCL_VERSION = "2026.3.23"
CATEGORY = "simple_python"


@dataclass(frozen=True)
class BfclExample:
    id: str  # e.g. "simple_python_0"
    question: str  # the user's request
    function: dict  # BFCL's own schema (what the checker reads)
    answer: dict  # BFCL's possible answer: {argument: [acceptable values]} for function["name"]

    @property
    def name(self) -> str:
        return self.function["name"]


def data_dir() -> Path:
    try:
        import bfcl_eval
    except ImportError as e:
        raise SystemExit(f"bfcl-eval is not installed: pip install --no-deps bfcl-eval=={BFCL_VERSION}") from e
    return Path(bfcl_eval.__file__).parent / "data"


def load(category: str = CATEGORY) -> list[BfclExample]:
    """Every example of a BFCL category, in file order."""
    root = data_dir()
    answers = {}
    for line in (root / "possible_answer" / f"BFCL_v4_{category}.json").read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            answers[row["id"]] = row["ground_truth"][0]
    out = []
    for line in (root / f"BFCL_v4_{category}.json").read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        (fn,) = row["function"]
        truth = answers[row["id"]]
        out.append(BfclExample(id=row["id"], question=row["question"][0][-1]["content"], function=fn,
                               answer=truth[fn["name"]]))
    return out


# -- the request shown to the model -------------------------------------------------------------

def tool_name(name: str) -> str:
    return name.replace(".", "_")


def openai_tool(function: dict) -> dict:
    """BFCL's schema as an OpenAI tool (see the module docstring)."""
    from bfcl_eval.constants.type_mappings import GORILLA_TO_OPENAPI

    fn = copy.deepcopy(function)
    params = fn.get("parameters") or {}
    params["type"] = "object"
    _map_types(params.get("properties") or {}, GORILLA_TO_OPENAPI)
    return {"type": "function", "function": {"name": tool_name(fn["name"]), "description": fn.get("description", ""),
                                             "parameters": params}}


def _map_types(properties: dict, mapping: dict) -> None:
    for schema in properties.values():
        if not isinstance(schema, dict):
            continue
        schema["type"] = mapping.get(schema.get("type", "string"), "string")
        if isinstance(schema.get("properties"), dict):
            _map_types(schema["properties"], mapping)
        items = schema.get("items")
        if isinstance(items, dict):
            _map_types({"_": items}, mapping)


OPTIONAL_ARGS = ("omit", "all", "stated")


def canonical_args(ex: BfclExample, optional: str = "omit") -> dict:
    """One call BFCL accepts, every argument its first listed value, in the schema's order. Optional
    arguments ("" listed, and not `required` by the schema, which a few answers contradict), which
    BFCL accepts with or without:
    - "omit": left out;
    - "all": written out with the first value BFCL lists;
    - "stated": written out with the first listed value the request states ("in mile" -> "mile"), if any.
    A training set that always leaves them out teaches a model to leave out the ones a request states;
    one that always writes them teaches it to fill in values nobody asked for."""
    if optional not in OPTIONAL_ARGS:
        raise ValueError(f"optional must be one of {OPTIONAL_ARGS}, got {optional!r}")
    params = ex.function.get("parameters") or {}
    required = set(params.get("required") or [])
    order = [*(params.get("properties") or {}), *ex.answer]
    out = {}
    for k in dict.fromkeys(order):
        values = [v for v in ex.answer.get(k, []) if v != ""]
        if not values:
            continue
        if "" in ex.answer[k] and k not in required and optional != "all":
            values = [v for v in values if _stated(v, ex.question)] if optional == "stated" else []
            if not values:
                continue
        out[k] = _concrete(values[0])
    return out


def _stated(value, question: str) -> bool:
    """Whether a plain value (a string or a number; not a bool, a list or a dict) is written in the
    question as a word of its own, case aside."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return False
    texts = {str(value)} | ({f"{value:g}"} if isinstance(value, float) else set())
    return any(re.search(rf"(?<![\w.]){re.escape(t)}(?![\w])", question, re.IGNORECASE) for t in texts if t)


def _concrete(value):
    """An acceptable value as a plain value: BFCL writes a dict argument as {key: [acceptable
    values]} (a list of dicts likewise); take each key's first value, leaving out optional keys."""
    if isinstance(value, dict):
        return {k: (next(x for x in v if x != "") if isinstance(v, list) else v) for k, v in value.items()
                if not (isinstance(v, list) and ("" in v or not v))}
    if isinstance(value, list) and value and all(isinstance(x, dict) for x in value):
        return [_concrete(x) for x in value]
    return value


def chat_line(question: str, function: dict, args: dict) -> dict:
    """A supervised training line: the request, the one tool, the call."""
    call = {"id": "call_0", "type": "function",
            "function": {"name": tool_name(function["name"]), "arguments": json.dumps(args)}}
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "tool_calls": [call]}],
            "tools": [openai_tool(function)]}


def synth_lines(function: dict, per_function: int, seed: int) -> list[dict]:
    """`modelmill data synth` lines (templates, no teacher) for one BFCL function's schema. Raises
    datagen's SchemaError, naming the field, for a schema data synth cannot use."""
    from modelmill.datagen.schema import load_tools
    from modelmill.datagen.synth import SynthConfig, synthesize

    tools = load_tools([openai_tool(function)])
    return synthesize(tools, SynthConfig(per_function=per_function, seed=seed), progress=False).lines


# -- training requests generated from an example ------------------------------------------------

def _number_pattern(text: str) -> re.Pattern:
    # The number as a whole token: not part of a longer number, a word or a decimal.
    return re.compile(rf"(?<![\w.]){re.escape(text)}(?![\w]|\.\d)")


def swappable(ex: BfclExample) -> dict[str, str]:
    """Arguments whose one acceptable value is a number written exactly once in the question
    -> that number as written. Optional arguments ("" listed) are never swapped."""
    found: dict[str, str] = {}
    for arg, values in ex.answer.items():
        given = [v for v in values if v != ""]
        if "" in values or not given or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in given):
            continue
        if any(v != given[0] for v in given):
            continue
        text = str(given[0])
        if len(_number_pattern(text).findall(ex.question)) == 1:
            found[arg] = text
    seen = list(found.values())
    return {a: t for a, t in found.items() if seen.count(t) == 1 and (t != "0")}


def _new_number(text: str, rng: random.Random) -> tuple[str, int | float]:
    if "." in text:  # a decimal: scale it, keep its decimals
        decimals = len(text.split(".")[1])
        value = float(text)
        new = f"{value * rng.uniform(0.5, 2.0):.{decimals}f}"
        return new, float(new)
    value = int(text)
    if 1900 <= value <= 2100:  # a year
        new = rng.randint(1950, 2035)
    else:
        mag = abs(value)
        new = rng.randint(max(1, mag // 2), mag * 2 + 5) * (-1 if value < 0 else 1)
    return str(new), new


def variants(ex: BfclExample, k: int, rng: random.Random, tries: int = 50,
             optional: str = "omit") -> list[tuple[str, dict]]:
    """Up to k (question, args) pairs: the example's question with its swappable numbers replaced
    by new ones and the canonical call (canonical_args(ex, optional)) changed to match. Empty when
    nothing is swappable."""
    swap = swappable(ex)
    base = canonical_args(ex, optional)
    out, questions = [], {ex.question}
    for _ in range(tries):
        if len(out) >= k or not swap:
            break
        question, args = ex.question, dict(base)
        for arg, text in swap.items():
            new_text, new_value = _new_number(text, rng)
            question = _number_pattern(text).sub(new_text, question, count=1)
            args[arg] = new_value
        if question not in questions:
            questions.add(question)
            out.append((question, args))
    return out


# -- the metric -------------------------------------------------------------------------------------

class _UnderscoreToDot(dict):
    """BFCL's model table, reduced to what the checker asks of it: our tool names replace "." by "_"."""

    def __missing__(self, key):
        return types.SimpleNamespace(underscore_to_dot=True)


def _checker():
    # bfcl_eval.constants.model_config imports every provider SDK BFCL supports (anthropic, google,
    # ...), which `--no-deps` leaves out; the AST checker uses that module only to ask whether a
    # model's function names have "." replaced by "_". Provide that one answer and import the
    # checker itself unchanged.
    name = "bfcl_eval.constants.model_config"
    if name not in sys.modules:
        stub = types.ModuleType(name)
        stub.MODEL_CONFIG_MAPPING = _UnderscoreToDot()
        sys.modules[name] = stub
    from bfcl_eval.constants.enums import Language
    from bfcl_eval.eval_checker.ast_eval.ast_checker import simple_function_checker

    return simple_function_checker, Language.PYTHON


def check_call(ex: BfclExample, name: str, args: dict, answer: dict | None = None) -> tuple[bool, str]:
    """(accepted, BFCL's error text) for one call, by BFCL's simple-function AST checker.
    `answer` overrides the example's possible answer (a generated variant's)."""
    checker, python = _checker()
    result = checker(ex.function, {name: args}, {ex.name: answer or ex.answer}, python, "modelmill")
    return bool(result["valid"]), "; ".join(result.get("error") or [])


def variant_answer(ex: BfclExample, args: dict) -> dict:
    """The possible answer of a generated variant: swapped arguments take their new value."""
    return {k: ([args[k]] if k in swappable(ex) else v) for k, v in ex.answer.items()}
