"""`modelmill data synth`: function schemas -> chat SFT lines with `tools` and a `tool_calls` answer.

    report = synthesize(tools, SynthConfig(per_function=20, seed=7), teacher=None)
    report.lines        # validated SFT lines, in a stable order for a given seed

Arguments come from schema.plan_arguments; the user request for each call is written by the
teacher when one is given (any OpenAI-compatible endpoint), else by varied templates. Every line
is checked twice before it is written: its arguments against the function's JSON schema
(jsonschema), and the whole line with ModelMill's own training-file validator (ml.data).
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from tqdm import tqdm

from .output import OutputError, check_sft_line, split_groups
from .schema import plan_arguments, validator_for
from .teacher import Teacher, TeacherError


@dataclass(frozen=True)
class SynthConfig:
    per_function: int = 20  # lines per function; also the enumeration budget (see schema.py)
    seed: int = 0  # one seed -> the same arguments, templates and split
    teacher_max_tokens: int = 96  # cap on one teacher-written request
    concurrency: int = 4  # teacher requests in flight
    test_fraction: float = 0.1  # --split: at least this share of lines in test (whole combinations)
    valid_fraction: float = 0.1


@dataclass
class SynthReport:
    lines: list[dict] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)  # per line: its call, the split's group key
    per_function: dict[str, str] = field(default_factory=dict)  # name -> "12 combinations, enumerated"
    sources: Counter = field(default_factory=Counter)  # "teacher" / "template" / "template (teacher empty)"
    duplicates: int = 0  # lines left out because the same request for the same call was already there

    def summary(self) -> str:
        funcs = "; ".join(f"{k}: {v}" for k, v in self.per_function.items())
        how = ", ".join(f"{n} by {src}" for src, n in self.sources.items())
        dups = f", {self.duplicates} duplicate requests left out" if self.duplicates else ""
        return f"{len(self.lines)} lines for {len(self.per_function)} functions ({how}{dups}). {funcs}"


# Requests written without a teacher. Real users rarely name the parameters: most requests carry the
# values in prose ("3 raised to the power 4", "Lakers and Clippers on Jan 28"). So a request is a frame
# (an opener around the function's description, and an ending) around the arguments, each argument in one
# of several forms, often the value alone; the form-like templates of the first version stay as one
# shape among the others (FORM_SHARE). Measured on the synth story (BENCHMARKS.md, "synth").
FORM_TEMPLATES = [
    "{Desc}: {colon}.", "Please {desc} - {set_to}.", "Can you {action} with {set_to}?",
    "I'd like to {desc}. Use {is_}.", "{Colon}. {Desc}, please.", "Hey, {action} for me: {colon}",
    "Need you to {desc} ({eq})", "{action_cap} please, {is_}.",
]
FORM_SHARE = 0.2
FRAMES = [
    "{Desc} for {args}.", "{Desc} with {args}.", "Please {desc}: {args}.", "Can you {desc} for {args}?",
    "Could you {desc} using {args}?", "I need to {desc} - {args}.", "I'd like to {desc} with {args}, please.",
    "Help me {desc}. {Args}.", "{Args}: {desc}, please.", "{action_cap} {args}", "{Desc} ({args}).",
    "Given {args}, {desc}.", "How do I {desc} for {args}?", "I want to {desc}, {args}.", "{Desc}, {args}.",
    "Quick one - {desc} for {args}", "{Desc} given {args}?",
]
# Frames that put some arguments before the description and the rest after it (two or more arguments).
SPLIT_FRAMES = ["For {args1}, {desc} with {args2}.", "{Args1}: can you {desc} for {args2}?",
                "Given {args1}, please {desc} - {args2}.", "With {args1}, I need to {desc} for {args2}.",
                "{Args1} - {desc}, {args2}."]
SHUFFLE_SHARE = 0.5  # requests whose values come in another order than the schema's
SPLIT_SHARE = 0.3  # requests (of two or more arguments) in a SPLIT_FRAMES frame
# The value alone 7 times in 17 ("{k} {v}" twice): a fifth of the requests for two arguments of different
# kinds name no parameter at all (a tenth for two of one kind: see below).
VALUE_FORMS = ["{v}"] * 7 + ["{k} {v}", "{a} {k} of {v}", "{v} as the {k}", "the {k} {v}", "{k} of {v}",
               "{k} {v}", "{k}: {v}", "{k} set to {v}", "{k} = {v}", "the {k} being {v}"]
BOOL_FORMS = {True: ["with {k}", "{k}: yes", "{k} set to true", "{k} on", "yes to {k}"],
              False: ["without {k}", "{k}: no", "{k} set to false", "{k} off", "no {k}"]}
NO_ARG_TEMPLATES = ["Please {desc}.", "Can you {action}?", "{Desc}, please.", "I need you to {desc} now.",
                    "{Desc}.", "Could you {desc}?", "Help me {desc}."]
# A description's leading verb in the third person ("Fetches the list ...") becomes the imperative
# ("fetch the list ...") so that it reads after "Please" or "Can you"; words that only look like it stay.
NOT_VERBS = {"this", "is", "was", "has", "its", "as", "us", "does", "news", "status", "analysis", "series", "class"}
STYLES = ["casual", "terse", "polite", "indirect, as a need rather than a command", "chatty", "imperative"]
TEACHER_SYSTEM = (
    "You write training data for a function-calling assistant. Given a function and the exact arguments "
    "of one call, write ONE natural request a user might type that should lead to exactly this call. "
    "Mention every argument value; never mention the function's name, JSON or parameter names verbatim. "
    "Reply with the request only.")


def synthesize(tools: list[dict], config: SynthConfig, teacher: Teacher | None = None,
               progress: bool = True) -> SynthReport:
    """Lines for every function of `tools` (already checked by schema.load_tools)."""
    rng = random.Random(config.seed)
    report = SynthReport()
    jobs = []  # (function, arguments, template rng seed)
    for tool in tools:
        fn = tool["function"]
        plan = plan_arguments(fn, config.per_function, rng)
        how = "enumerated" if plan.enumerated else f"sampled {len(plan.calls)}"
        report.per_function[fn["name"]] = f"{plan.combinations} enum/boolean combinations, {how}"
        validator = validator_for(fn)
        for args in plan.calls:
            errors = sorted(validator.iter_errors(args), key=lambda e: list(e.absolute_path))
            if errors:  # a sampler bug or a schema we misread: never write it
                path = ".".join(str(p) for p in errors[0].absolute_path) or "(arguments)"
                raise OutputError(f"function {fn['name']}: field {path}: generated {args!r} fails the schema: "
                                  f"{errors[0].message}", param=f"{fn['name']}.{path}")
            jobs.append((fn, args, rng.randrange(2**31)))
    requests = _write_requests(jobs, config, teacher, report, progress)
    seen: set[tuple[str, str]] = set()
    for (fn, args, seed), text in zip(jobs, requests):
        key = json.dumps({"name": fn["name"], "arguments": args}, sort_keys=True)
        for retry in range(1, 20 if teacher is None else 1):  # another phrasing for a repeated call
            if (key, text) not in seen:
                break
            text = template_request(fn, args, random.Random(seed + retry))
        if (key, text) in seen:
            report.duplicates += 1  # the same request for the same call: teaches nothing new
            continue
        seen.add((key, text))
        i = len(report.lines)
        arguments = json.dumps(args, ensure_ascii=False)
        line = {"messages": [{"role": "user", "content": text},
                             {"role": "assistant", "tool_calls": [{"id": f"call_{i}", "type": "function", "function": {
                                 "name": fn["name"], "arguments": arguments}}]}],
                "tools": tools}
        check_sft_line(line, f"function {fn['name']}")
        report.lines.append(line)
        report.groups.append(key)
    return report


def split(report: SynthReport, config: SynthConfig) -> dict[str, list[dict]]:
    """train / valid / test by argument combination (see output.split_groups)."""
    groups: dict[str, list] = {}
    for key, line in zip(report.groups, report.lines):
        groups.setdefault(key, []).append(line)
    n = len(report.lines)
    test_size = max(1, round(n * config.test_fraction)) if len(groups) >= 3 else 0
    valid_size = max(1, round(n * config.valid_fraction)) if len(groups) >= 3 else 0
    train, valid, test = split_groups(groups, random.Random(config.seed), test_size, valid_size)
    return {"train": train, "valid": valid, "test": test}


def _write_requests(jobs: list, config: SynthConfig, teacher: Teacher | None, report: SynthReport,
                    progress: bool) -> list[str]:
    def one(job) -> str:
        fn, args, seed = job
        if teacher is None:
            report.sources["template"] += 1
            return template_request(fn, args, random.Random(seed))
        text = teacher_request(teacher, fn, args, random.Random(seed), config.teacher_max_tokens)
        if text:
            report.sources["teacher"] += 1
            return text
        report.sources["template (teacher answered empty)"] += 1
        return template_request(fn, args, random.Random(seed))

    bar = tqdm(total=len(jobs), desc="synth", unit="line", disable=not progress)
    pool = ThreadPoolExecutor(max_workers=max(1, config.concurrency) if teacher else 1)
    out = []
    try:
        for text in pool.map(one, jobs):
            out.append(text)
            bar.update(1)
    except TeacherError as e:
        raise TeacherError(f"{e} (answered requests are cached: run the same command again to resume)") from None
    finally:  # on Ctrl-C or a failure, send nothing more
        pool.shutdown(wait=False, cancel_futures=True)
        bar.close()
    return out


def teacher_request(teacher: Teacher, fn: dict, args: dict, rng: random.Random, max_tokens: int) -> str:
    style = rng.choice(STYLES)
    schema = {k: fn[k] for k in ("name", "description", "parameters") if k in fn}
    user = (f"Function: {json.dumps(schema, ensure_ascii=False)}\nArguments of the call: "
            f"{json.dumps(args, ensure_ascii=False)}\nStyle: {style}.")
    reply = teacher.complete({"messages": [{"role": "system", "content": TEACHER_SYSTEM},
                                           {"role": "user", "content": user}],
                              "max_tokens": max_tokens, "temperature": 1.0})
    text = ((reply["choices"][0].get("message") or {}).get("content") or "").strip()
    return text.strip('"').strip()


def template_request(fn: dict, args: dict, rng: random.Random) -> str:
    """A request that names every argument value, in one of many phrasings (see FRAMES)."""
    desc = (fn.get("description") or "").strip().rstrip(".").split(". ")[0]
    action = " ".join(w for w in re.split(r"[_\-]+|(?<=[a-z])(?=[A-Z])", fn["name"]) if w).lower()
    desc = _imperative(desc[:1].lower() + desc[1:]) if desc else action
    parts = {"desc": desc, "Desc": desc[:1].upper() + desc[1:], "action": action,
             "action_cap": action[:1].upper() + action[1:]}
    if not args:
        return rng.choice(NO_ARG_TEMPLATES).format(**parts)
    keys = [" ".join(re.split(r"[_\-]+", k)) for k in args]
    if rng.random() < FORM_SHARE:
        items = [(k, _spoken(v)) for k, v in zip(keys, args.values())]
        parts.update({
            "colon": ", ".join(f"{k}: {v}" for k, v in items), "set_to": _and([f"{k} set to {v}" for k, v in items]),
            "is_": _and([f"{v} as the {k}" for k, v in items]), "eq": ", ".join(f"{k}={v}" for k, v in items)})
        parts["Colon"] = parts["colon"][:1].upper() + parts["colon"][1:]
        return rng.choice(FORM_TEMPLATES).format(**parts)
    # Real requests give values in any order ("pop concerts in New York" for location, date, genre), and
    # a model that learnt the schema's order maps them by position: half the requests shuffle them.
    order = list(range(len(args)))
    shuffled = rng.random() < SHUFFLE_SHARE
    if shuffled:
        rng.shuffle(order)
    kinds = Counter(_kind(v) for v in args.values())
    one_form = rng.choice(VALUE_FORMS) if rng.random() < 0.5 else None  # else each argument its own form
    rendered, leads = [], []  # each argument's text; whether that text starts with the value itself
    for k, v in zip(keys, args.values()):
        if isinstance(v, bool):
            rendered.append(rng.choice(BOOL_FORMS[v]).format(k=k))
            leads.append(False)
            continue
        form = one_form or rng.choice(VALUE_FORMS)
        if form == "{v}" and shuffled and kinds[_kind(v)] > 1:
            # Two bare values of one kind out of the schema's order could map either way: name this one.
            form = rng.choice([f for f in VALUE_FORMS if f != "{v}"])
        rendered.append(form.format(k=k, v=_prose(v), a="an" if k[:1] in "aeiou" else "a"))
        leads.append(form.startswith("{v}"))

    def joined(idx: list[int]) -> tuple[str, str]:
        text = _and([rendered[i] for i in idx])
        # At a sentence's start, capitalise a parameter's name but never a value ("kitchen" stays "kitchen").
        return text, text if leads[idx[0]] else text[:1].upper() + text[1:]

    if len(order) >= 2 and rng.random() < SPLIT_SHARE:
        cut = rng.randint(1, len(order) - 1)
        parts["args1"], parts["Args1"] = joined(order[:cut])
        parts["args2"], _ = joined(order[cut:])
        return rng.choice(SPLIT_FRAMES).format(**parts)
    parts["args"], parts["Args"] = joined(order)
    return rng.choice(FRAMES).format(**parts)


def _imperative(desc: str) -> str:
    first, _, rest = desc.partition(" ")
    word = first.lower()
    if len(word) > 3 and word not in NOT_VERBS and word.isalpha():
        if word.endswith("ies"):
            first = first[:-3] + "y"
        elif word.endswith(("ches", "shes", "sses", "xes")):
            first = first[:-2]
        elif word.endswith("s") and not word.endswith(("ss", "us", "is")):
            first = first[:-1]
    return f"{first} {rest}".strip()


def _kind(value) -> str:
    # A boolean counts as a number here (True is an int to Python): a bare number beside a boolean, out of
    # order, is then named too. Left so because the synth story's figures (BENCHMARKS.md) were measured so.
    return "number" if isinstance(value, (int, float)) else type(value).__name__


def _prose(value) -> str:
    """A value as a person writes it: a list of plain items as "a, b and c", anything else as _spoken."""
    if isinstance(value, list) and value and all(isinstance(x, (str, int, float)) and not isinstance(x, bool)
                                                 for x in value):
        return _and([_spoken(x) for x in value])
    return _spoken(value)


def _spoken(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def _and(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
