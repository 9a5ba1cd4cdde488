"""OpenAI tool schemas: check them, and sample argument sets from their JSON schemas.

    tools = load_tools(json.load(f))                    # SchemaError names the function and field
    plan = plan_arguments(tools[0]["function"], budget=20, rng=random.Random(7))
    plan.calls                                          # [{"room": "kitchen", "state": "on"}, ...]

The seed talk's recipe: enumerate the top-level enum / boolean / const arguments (and "left
out", for optional ones) while their product is at most `budget`; beyond that, sample `budget`
distinct combinations. Every other value is drawn from the schema: numbers within their bounds,
strings from `examples`, `default`, the description's quoted examples, `format`, or a small
vocabulary keyed by the field's name; nested objects and arrays recurse; optional arguments are
sometimes left out.

Why hand-written and not a property-based generator (hypothesis-jsonschema): its values are
adversarial ("\\x00\\U0010ffff", 1e308), which is right for fuzzing and wrong for training data a
model should learn to produce from a natural request. jsonschema itself checks the schemas and
every produced argument set.
"""

from __future__ import annotations

import itertools
import math
import random
import re
import string
from dataclasses import dataclass, field
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import SchemaError as _JsonSchemaError

from modelmill.errors import InvalidRequestError

TYPES = ("string", "integer", "number", "boolean", "object", "array", "null")
NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
OPTIONAL_KEEP = 0.6  # chance an optional, non-enumerated argument is given
OMIT = object()  # the "left out" choice of an optional enumerated argument
DEFAULT_INT_SPAN = 100  # an integer with no bound on one side ranges this far from the other

# Plausible values for common field names; anything else gets words from the field's name.
VOCAB = {
    "city": ["Paris", "Tokyo", "Lagos", "Lima", "Oslo", "Toronto", "Mumbai", "Denver"],
    "location": ["Berlin, Germany", "Austin, TX", "Kyoto, Japan", "Cape Town", "Melbourne"],
    "country": ["France", "Japan", "Brazil", "Canada", "Kenya", "India"],
    "name": ["Alice Martin", "Ravi Patel", "Chen Wei", "Maria Garcia", "Tom Okafor"],
    "email": ["alice@example.com", "ravi.patel@example.org", "support@example.net"],
    "query": ["cheap flights to Rome", "vegan lasagna recipe", "python asyncio tutorial", "best hiking boots"],
    "title": ["Quarterly review", "Team offsite", "Dentist appointment", "Project kickoff"],
    "message": ["Running ten minutes late", "The report is ready", "Can we move the call to 3pm?"],
    "text": ["Hello, how are you?", "The meeting is moved to Friday", "Thanks for your help"],
    "language": ["French", "Spanish", "German", "Japanese"],
    "currency": ["USD", "EUR", "JPY", "GBP"],
    "color": ["red", "blue", "green", "warm white"],
    "unit": ["celsius", "fahrenheit", "metric", "imperial"],
    "symbol": ["AAPL", "MSFT", "NVDA", "GOOG"],
    "id": ["A1023", "ord_5521", "u-884", "77120"],
    "url": ["https://example.com/docs", "https://example.org/report.pdf"],
    "path": ["/home/alice/notes.txt", "reports/q3.csv", "src/main.py"],
    "date": ["2026-03-14", "2026-11-02", "2027-01-05"],
    "time": ["09:30", "14:00", "18:45"],
    "address": ["221B Baker Street, London", "1600 Amphitheatre Pkwy, Mountain View"],
    "phone": ["+1 415 555 0100", "+44 20 7946 0018"],
    "song": ["Bohemian Rhapsody", "Clair de Lune", "Blinding Lights"],
    "artist": ["Nina Simone", "Daft Punk", "Miles Davis"],
}
NAMES = ["Northwind", "Blue Harbor", "Cedar Grove", "Orion", "Silver Lake", "Kestrel", "Maple Street",
         "Harbor View", "Atlas", "Red Rock", "Greenfield", "Summit Hall", "Juniper", "Eastgate", "Lumen"]
FORMATS = {
    "date": VOCAB["date"], "date-time": ["2026-03-14T09:30:00Z", "2026-11-02T18:45:00+01:00"],
    "time": ["09:30:00", "14:00:00"], "email": VOCAB["email"], "uri": VOCAB["url"], "url": VOCAB["url"],
    "uuid": ["3f2b8c1e-9a4d-4c2e-8f6a-1b2c3d4e5f60", "9b1deb4d-3b7d-4bad-9bdd-2b0d7b3dcb6d"],
    "ipv4": ["192.168.1.20", "10.0.0.7"], "hostname": ["db.example.com", "api.example.org"],
}
QUOTED_RE = re.compile(r"""['"`]([^'"`\n]{1,40})['"`]""")
EG_RE = re.compile(r"\b(?:e\.g\.|eg\.|for example|such as)[:,]?\s+([^.;)]+)", re.IGNORECASE)


class SchemaError(InvalidRequestError):
    """A tool schema that can not be used; the message names the function and the field."""

    code = "invalid_tool_schema"


@dataclass
class ArgumentPlan:
    """The argument sets for one function. `enumerated`: the finite choices were all covered
    (False: sampled, because their product exceeded the budget)."""

    name: str
    calls: list[dict] = field(default_factory=list)
    enumerated: bool = True
    combinations: int = 1  # the product of the enumerable choices


# -- checking ------------------------------------------------------------------------------------

def load_tools(tools: Any) -> list[dict]:
    """A JSON list of OpenAI tools, checked: each a {"type": "function", "function": {...}} with a
    valid, unique name and a usable JSON schema. Raises SchemaError naming function and field."""
    if not isinstance(tools, list) or not tools:
        raise SchemaError("the tools file must be a non-empty JSON list of tools "
                          '({"type": "function", "function": {...}})', param="tools")
    seen: set[str] = set()
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("function"), dict):
            raise SchemaError(f'{where}: must be {{"type": "function", "function": {{...}}}}', param=where)
        fn = tool["function"]
        name = fn.get("name")
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise SchemaError(f"{where}.function.name: must be 1-64 letters, digits, _ or -, got {name!r}",
                              param=f"{where}.function.name")
        if name in seen:
            raise SchemaError(f"function {name}: declared more than once", param=f"{where}.function.name")
        seen.add(name)
        check_function(fn)
    return tools


def check_function(fn: dict) -> None:
    name = fn["name"]
    params = fn.get("parameters", {"type": "object", "properties": {}})
    if not isinstance(params, dict) or params.get("type", "object") != "object":
        raise SchemaError(f"function {name}: field parameters: must be a JSON schema of type object",
                          param=f"{name}.parameters")
    try:
        Draft202012Validator.check_schema(params)
    except _JsonSchemaError as e:
        path = _dotted(["parameters", *e.absolute_path])
        raise SchemaError(f"function {name}: field {path}: {e.message}", param=f"{name}.{path}") from None
    _check_node(name, params, "parameters")


def _check_node(fn: str, node: Any, path: str) -> None:
    def bad(msg: str):
        raise SchemaError(f"function {fn}: field {path}: {msg}", param=f"{fn}.{path}")

    if not isinstance(node, dict):
        bad("must be a JSON schema object")
    if "enum" in node:
        if not isinstance(node["enum"], list) or not node["enum"]:
            bad("enum must be a non-empty list")
        return
    if "const" in node:
        return
    for key in ("anyOf", "oneOf"):
        if key in node:
            for j, sub in enumerate(node[key]):
                _check_node(fn, sub, f"{path}.{key}[{j}]")
            return
    types = node.get("type")
    types = [types] if isinstance(types, str) else types
    if not types:
        bad("has no type, enum or const: no value can be generated for it")
    for t in types:
        if t not in TYPES:
            bad(f"unknown type {t!r}")
    lo, hi = _bounds(node)
    if lo is not None and hi is not None and lo > hi:
        bad(f"minimum {lo} is above maximum {hi}")
    if node.get("minLength", 0) > node.get("maxLength", math.inf) or \
            node.get("minItems", 0) > node.get("maxItems", math.inf):
        bad("its minimum length is above its maximum")
    if "object" in types:
        props = node.get("properties", {})
        for req in node.get("required", []):
            if req not in props:
                bad(f"required names {req!r}, which is not in properties")
        for key, sub in props.items():
            _check_node(fn, sub, f"{path}.properties.{key}")
    if "array" in types:
        _check_node(fn, node.get("items", {"type": "string"}), f"{path}.items")
    examples = node.get("examples")
    if examples is not None:
        validator = Draft202012Validator(node, format_checker=FormatChecker())
        for j, ex in enumerate(examples if isinstance(examples, list) else []):
            if not validator.is_valid(ex):
                bad(f"examples[{j}] ({ex!r}) does not match the field's own schema")
    if "string" in types and "pattern" in node and not node.get("examples") and "default" not in node:
        rng = random.Random(0)
        if not any(re.search(node["pattern"], _string(rng, node, path.rsplit(".", 1)[-1])) for _ in range(50)):
            bad(f"can not generate a string matching pattern {node['pattern']!r}: add `examples` to the field")


# -- planning ------------------------------------------------------------------------------------

def plan_arguments(fn: dict, budget: int, rng: random.Random) -> ArgumentPlan:
    """`budget` argument sets for one function (fewer only when it has nothing to vary)."""
    params = fn.get("parameters") or {"type": "object", "properties": {}}
    props: dict = params.get("properties", {})
    required = set(params.get("required", []))
    finite = {k: _finite_choices(s, k in required) for k, s in props.items()}
    finite = {k: v for k, v in finite.items() if v is not None}
    sizes = [len(v) for v in finite.values()]
    combinations = math.prod(sizes) if sizes else 1
    keys = list(finite)
    if combinations <= budget:
        combos = list(itertools.product(*finite.values()))
        rng.shuffle(combos)
        # Every combination once, then round again (new free values and phrasings) up to the budget.
        picked = [combos[i % len(combos)] for i in range(max(budget, len(combos)))]
        enumerated = True
    else:
        seen: set = set()
        picked = []
        for _ in range(budget * 20):
            combo = tuple(rng.randrange(n) for n in sizes)
            if combo not in seen:
                seen.add(combo)
                picked.append(tuple(finite[k][j] for k, j in zip(keys, combo)))
            if len(picked) == budget:
                break
        enumerated = False
    plan = ArgumentPlan(name=fn["name"], enumerated=enumerated, combinations=combinations)
    for combo in picked:
        args = {}
        for key, schema in props.items():
            if key in finite:
                value = combo[keys.index(key)]
                if value is not OMIT:
                    args[key] = value
            elif key in required or rng.random() < OPTIONAL_KEEP:
                args[key] = sample_value(schema, rng, key)
        plan.calls.append(args)
    return plan


def _finite_choices(schema: dict, required: bool) -> list | None:
    """The values an enumerable argument can take (plus OMIT when optional); None if not finite."""
    if "enum" in schema:
        values = list(schema["enum"])
    elif "const" in schema:
        values = [schema["const"]]
    elif schema.get("type") == "boolean":
        values = [True, False]
    else:
        return None
    return values if required else [*values, OMIT]


def sample_value(schema: dict, rng: random.Random, name: str = "") -> Any:
    """One value that satisfies `schema` (as checked by check_function)."""
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return rng.choice(schema["enum"])
    if isinstance(schema.get("examples"), list) and schema["examples"] and rng.random() < 0.8:
        return rng.choice(schema["examples"])
    for key in ("anyOf", "oneOf"):
        if key in schema:
            branches = [b for b in schema[key] if b.get("type") != "null"] or schema[key]
            return sample_value(rng.choice(branches), rng, name)
    types = schema.get("type")
    types = [types] if isinstance(types, str) else list(types)
    kind = rng.choice([t for t in types if t != "null"] or ["null"])
    return _SAMPLERS[kind](rng, schema, name)


def _bounds(schema: dict) -> tuple[float | None, float | None]:
    lo, hi = schema.get("minimum"), schema.get("maximum")
    if "exclusiveMinimum" in schema:
        lo = schema["exclusiveMinimum"] + (1 if schema.get("type") == "integer" else 1e-6)
    if "exclusiveMaximum" in schema:
        hi = schema["exclusiveMaximum"] - (1 if schema.get("type") == "integer" else 1e-6)
    return lo, hi


def _number_range(schema: dict) -> tuple[float, float]:
    lo, hi = _bounds(schema)
    if lo is None and hi is None:
        lo, hi = (-20, DEFAULT_INT_SPAN)  # mostly positive, as requests are; some negatives
    elif lo is None:
        lo = hi - DEFAULT_INT_SPAN
    elif hi is None:
        hi = lo + DEFAULT_INT_SPAN
    return lo, hi


def _integer(rng: random.Random, schema: dict, name: str) -> int:
    lo, hi = _number_range(schema)
    lo, hi = math.ceil(lo), math.floor(hi)
    step = schema.get("multipleOf", 1)
    if isinstance(step, int) and step > 1:
        return step * rng.randint(math.ceil(lo / step), math.floor(hi / step))
    return rng.randint(lo, hi)


def _number(rng: random.Random, schema: dict, name: str) -> float:
    lo, hi = _number_range(schema)
    value = round(rng.uniform(lo, hi), 2)
    return min(max(value, lo), hi)  # rounding may step just outside a bound


def _string(rng: random.Random, schema: dict, name: str) -> str:
    candidates = _string_candidates(schema, name)
    value = rng.choice(candidates) if candidates else _words_for(name, rng)
    lo, hi = schema.get("minLength", 0), schema.get("maxLength")
    if hi is not None:
        value = value[:hi]
    while len(value) < lo:
        value += rng.choice(string.ascii_lowercase)
    return value


def _string_candidates(schema: dict, name: str) -> list[str]:
    if isinstance(schema.get("default"), str):
        return [schema["default"]]
    if schema.get("format") in FORMATS:
        return FORMATS[schema["format"]]
    desc = schema.get("description", "")
    found = QUOTED_RE.findall(desc)
    for m in EG_RE.findall(desc):
        found += [p.strip(" '\"") for p in re.split(r",| or ", m) if p.strip(" '\"")]
    if found:
        return found
    lowered = name.lower()
    for key, values in VOCAB.items():
        if key in lowered:
            return values
    return []


def _words_for(name: str, rng: random.Random) -> str:
    """A string for a field nothing else describes: half the time a name-like value (most free strings
    in requests are names of things), else the field's own words and a tag ("website north")."""
    if rng.random() < 0.5:
        return rng.choice(NAMES)
    words = [w for w in re.split(r"[_\W]+|(?<=[a-z])(?=[A-Z])", name) if w] or ["value"]
    return f"{' '.join(words).lower()} {rng.choice(['alpha', 'north', 'blue', 'seven', 'delta', 'main'])}"


def _boolean(rng: random.Random, schema: dict, name: str) -> bool:
    return rng.random() < 0.5


def _array(rng: random.Random, schema: dict, name: str) -> list:
    items = schema.get("items", {"type": "string"})
    lo = schema.get("minItems", 1)
    hi = max(lo, schema.get("maxItems", lo + 2))
    n = rng.randint(lo, min(hi, lo + 3))
    out: list = []
    for _ in range(n * 10):
        value = sample_value(items, rng, name)
        if not schema.get("uniqueItems") or value not in out:
            out.append(value)
        if len(out) == n:
            break
    return out


def _object(rng: random.Random, schema: dict, name: str) -> dict:
    required = set(schema.get("required", []))
    return {k: sample_value(s, rng, k) for k, s in schema.get("properties", {}).items()
            if k in required or rng.random() < OPTIONAL_KEEP}


_SAMPLERS = {"string": _string, "integer": _integer, "number": _number, "boolean": _boolean,
             "array": _array, "object": _object, "null": lambda rng, schema, name: None}


def validator_for(fn: dict) -> Draft202012Validator:
    return Draft202012Validator(fn.get("parameters") or {"type": "object"}, format_checker=FormatChecker())


def _dotted(parts: list) -> str:
    return ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in parts).replace(".[", "[")
