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
- `string_variants`: the same for the string values a request states ("the Beef Lasagna recipe" ->
  "the Cedar Grove recipe"; an enum's other members where the schema lists them), numbers swapped
  too: requests that can only be answered by copying the value from the request.
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
        args = dict(base)
        question = _swap_numbers(ex.question, args, swap, rng)
        if question not in questions:
            questions.add(question)
            out.append((question, args))
    return out


def _swap_numbers(question: str, args: dict, numbers: dict[str, str], rng: random.Random) -> str:
    """The question with each number of `numbers` (swappable: argument -> the number as written) still
    in it replaced by a new one of the same kind, `args` set to match (in place)."""
    for arg, text in numbers.items():
        if _number_pattern(text).search(question):
            new_text, new_value = _new_number(text, rng)
            question = _number_pattern(text).sub(new_text, question, count=1)
            args[arg] = new_value
    return question


def string_swappable(ex: BfclExample) -> dict[str, str]:
    """Required string arguments whose value the question writes exactly once, as a phrase of its own
    (case aside; the longest of BFCL's acceptable values found) -> that phrase as the question writes it.
    An argument that is optional ("" listed), not a string, or sharing its phrase with another is left."""
    props = (ex.function.get("parameters") or {}).get("properties") or {}
    found: dict[str, str] = {}
    for arg, values in ex.answer.items():
        given = [v for v in values if v != ""]
        if "" in values or not given or not all(isinstance(v, str) for v in given):
            continue
        if (props.get(arg) or {}).get("type") not in ("string", None):
            continue
        for v in sorted(given, key=len, reverse=True):  # "Miami, Florida" before "Miami"
            hits = list(_phrase_pattern(v).finditer(ex.question))
            if len(hits) == 1:
                found[arg] = hits[0].group(0)
                break
    spans = [t.lower() for t in found.values()]
    return {a: t for a, t in found.items() if spans.count(t.lower()) == 1}


def _phrase_pattern(text: str) -> re.Pattern:
    # The phrase as whole words, case aside: "Beef Lasagna" in "the Beef Lasagna recipe", not "ice" in "price".
    return re.compile(rf"(?<![\w]){re.escape(text)}(?![\w])", re.IGNORECASE)


# Field-name words -> modelmill.datagen.schema.VOCAB's values of that kind, for string_variants: the
# kinds whose values any request may state. Units, dates, ids and free text are left out: their values
# need a format or a meaning (a request that said "how many imperial in 4 metric" would teach nonsense).
_SWAP_KINDS = {"city": "city", "location": "location", "country": "country", "currency": "currency",
               "language": "language", "color": "color", "symbol": "symbol", "song": "song", "artist": "artist",
               "player": "name", "actor": "name", "author": "name", "person": "name", "full_name": "name"}
# Field-name words of things known by a proper name, for which data synth's name-like values
# ("Northwind", "Blue Harbor") stand in when the request writes one ("the company Google").
_PROPER_NAME_FIELDS = ("name", "company", "team", "museum", "park", "court", "brand", "store", "restaurant",
                       "hotel", "organization", "institution", "university", "school")


def _new_string(arg: str, schema: dict, old: str, question: str, rng: random.Random) -> str | None:
    """Another value for a string argument: another enum member when the schema lists them, else a
    value data synth would write for a field of that kind (VOCAB, by the field name's words), else,
    for a proper name as written ("Google") of a field named for one (_PROPER_NAME_FIELDS), one of data
    synth's name-like values. None when no value of the same kind is at hand: a common word ("vegan",
    "km/h") or a name of another kind ("Celsius", "Tennis") is kept."""
    from modelmill.datagen.schema import NAMES, VOCAB

    if schema.get("enum"):
        pool = [str(v) for v in schema["enum"]]
    else:
        pool = [v for word, kind in _SWAP_KINDS.items() if word in arg.lower() for v in VOCAB[kind]]
        if not pool and old[:1].isupper() and any(w in arg.lower() for w in _PROPER_NAME_FIELDS):
            pool = NAMES
    pool = [v for v in dict.fromkeys(pool) if v.lower() != old.lower() and v.lower() not in question.lower()]
    return rng.choice(pool) if pool else None


def string_variants(ex: BfclExample, k: int, rng: random.Random, tries: int = 50,
                    optional: str = "omit") -> list[tuple[str, dict]]:
    """Up to k (question, args) pairs: the example's question with every string value it states
    (string_swappable) replaced by another (_new_string) and, where it writes numbers (swappable),
    those replaced too; the canonical call changed to match. A model trained on the same sentence
    with other values must read each value from the request (copy it) rather than recall it, which
    is what a call to a function it never saw needs. Empty when no string is swappable."""
    strings, numbers = string_swappable(ex), swappable(ex)
    props = (ex.function.get("parameters") or {}).get("properties") or {}
    base = canonical_args(ex, optional)
    out, questions = [], {ex.question}
    for _ in range(tries):
        if len(out) >= k or not strings:
            break
        question, args, swapped = ex.question, dict(base), 0
        for arg, text in strings.items():
            new = _new_string(arg, props.get(arg) or {}, text, question, rng)
            if new is not None:
                question = _phrase_pattern(text).sub(lambda m: new, question, count=1)
                args[arg], swapped = new, swapped + 1
        if not swapped:
            break  # no string of this example has another value of its kind
        question = _swap_numbers(question, args, numbers, rng)
        if question not in questions:
            questions.add(question)
            out.append((question, args))
    return out


def with_defaults(function: dict, defaults: dict) -> dict:
    """The function's schema with each argument of `defaults` described as defaulting to that value
    ("The city. Default is 'Paris'."), as many real schemas describe theirs; an argument whose
    description already names a default is left as it is. With a request that states another value,
    a training line teaches that the request's value wins over the one the schema mentions (a model
    that copies "default is 'km'" into a call for "the distance in miles" has not learned that)."""
    fn = copy.deepcopy(function)
    props = (fn.get("parameters") or {}).get("properties") or {}
    for arg, value in defaults.items():
        schema = props.get(arg)
        if schema is None or "default" in (schema.get("description") or "").lower():
            continue
        shown = f"'{value}'" if isinstance(value, str) else json.dumps(value)
        desc = (schema.get("description") or "").rstrip()
        end = "" if not desc or desc.endswith(".") else "."
        schema["description"] = f"{desc}{end} Default is {shown}.".strip()
    return fn


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
