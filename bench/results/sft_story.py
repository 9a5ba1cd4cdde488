"""SFT story: function calling. A small, fast model fine-tuned on calls generated from function
schemas gets them right on held-out requests.

Data (built here, in memory, from packages; nothing is committed):
- The smart-home set of the demo (examples/smart_home/, 3 tools): its 80 training lines; its 30
  test lines are held out. Those ask for argument combinations no training line has.
- BFCL `simple_python` (bfcl-eval): one function and one request per example (see bfcl.py). The
  examples whose prompt + call fit `max_example_tokens` are grouped by function name and shuffled
  (seed), then dealt into three disjoint sets of functions:
  - seen: functions with at least one number written in the request. Training gets
    `variants_per_function` requests generated from the example (bfcl.variants: new numbers, the
    call changed to match); the BFCL example itself, with BFCL's own acceptable answers, is held
    out. Only functions whose example is the sole one under its name are taken.
  - other: functions trained on their own BFCL example, for variety; never evaluated.
  - unseen: functions never trained on; their BFCL example is held out.
  - string variants (`string_variants` per trained BFCL function, seen and other): its example's
    request with every string value it states of a kind with other values at hand (an enum's other
    members, cities, countries, people's and companies' names: bfcl.string_variants) replaced, numbers
    too, the call changed to match. A model that sees the same sentence with other names must copy the
    value from the request rather than recall it (issue 18's held-out functions: 12 of the 13 misses
    left in the best run were values). 0 (the default): none. Measured 2026-12-05 (BENCHMARKS.md):
    2 per function, held-out functions 0.467 -> 0.433 (three copied values right, four others wrong).
  - synth: up to `synth_functions` more functions, trained only through `synth_per_function` lines
    that `modelmill data synth` writes from their schema (templates, no teacher); never evaluated.
    More schemas to read, in requests that carry values in prose (issue 18's lever for held-out
    functions: "more varied schemas in training"). 0 (the default) is the story before 2026-12-05.

Metrics (greedy chat completions with the example's tools; the first tool call is scored):
- held-out examples (the headline, target >= 85%): smart-home test lines (exact name and
  arguments, as the demo scores) plus the seen functions' BFCL examples (BFCL's AST checker);
- held-out functions: the unseen functions' BFCL examples (BFCL's checker). This measures
  generalisation to a schema never trained on, not memory, and is reported separately.
Each answer may use the expected call's length in tokens plus `answer_margin_tokens`.
With `strict_probes`, every BFCL probe is asked again with its tool sent `strict: true`, for the base
model and each fine-tuned one: ModelMill then decodes a call's arguments under the tool's schema
(ml/constraints.py, docs/structured-outputs.md): types, enums and required arguments hold, and no key
outside the schema is written. The same models and questions, one request field changed: what a user
who sends strict tools gets (issue 18's held-out functions, a decoding lever beside the training ones).

Side by side (`compare_overrides`): a second job in the same run, trained on the split this config
builds with those fields changed (the probes must come out identical), scored on the same probes: a
lever is measured against the story as it stands, not against an older run on another day.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import bfcl
from common import EXAMPLES, Context, machine, result, row, today, wait_job

SMART_HOME = EXAMPLES / "smart_home"


@dataclass(frozen=True)
class SFTStory:
    model: str = "SmolLM2-135M-Instruct"
    seen_functions: int = 30  # BFCL functions trained through generated requests; their own example is held out
    variants_per_function: int = 3  # generated training requests per seen function
    other_functions: int = 40  # BFCL functions trained on their own example (never evaluated)
    unseen_functions: int = 30  # BFCL functions never trained on: the held-out-functions figure
    # More BFCL functions, trained through `data synth` lines only (never evaluated). 80 was measured on
    # 2026-12-05: held-out functions 14 -> 16 of 30 but trained functions 25 -> 20 (BENCHMARKS.md), so 0.
    synth_functions: int = 0
    synth_per_function: int = 2  # `data synth` lines per such function
    # The optional arguments of training calls (bfcl.canonical_args): "omit" (the story until 2026-12-05),
    # "all" or "stated" (written out when the request states the value).
    optional_args: str = "omit"
    # More training requests per trained BFCL function with the string values it states swapped (see the
    # module docstring); 0 = none.
    string_variants: int = 0
    # The share of those lines whose tool describes each swapped argument as defaulting to the request's
    # original value (bfcl.with_defaults): the request's value must win over the one the schema names.
    default_distractors: float = 0.0
    # A second job side by side in the same run, on the same probes: this config with these fields changed
    # (None = no second job). Here two string variants per trained BFCL function (issue 18's held-out
    # functions, whose misses are values), against the story's "auto" job on the same data otherwise:
    # measured 2026-12-05, 0.433 / 0.500 with strict tools against 0.467 / 0.567, not adopted (the next run
    # should side-by-side another lever; this one is kept so that the run in BENCHMARKS.md reproduces).
    # Measured before as the side-by-side job (headline / held-out functions; BENCHMARKS.md), against the
    # story's one pass at 5x (0.917 / 0.467): every hyperparameter "auto" 1.000 / 0.467 (0.567 with strict
    # tools); every other BFCL function that fits on its own example (other_functions 400) with optional
    # arguments "omit" or "stated" 0.850 / 0.533, "all" 0.950 / 0.500; 80 `data synth` functions 0.833 / 0.533.
    compare_overrides: dict | None = field(default_factory=lambda: {"string_variants": 2})
    compare_label: str = "two string variants per trained BFCL function"
    smart_home_train: int = 80  # lines of examples/smart_home/train.jsonl trained on (it has 80)
    smart_home_test: int = 30  # lines of examples/smart_home/test.jsonl held out (it has 30)
    max_example_tokens: int = 350  # BFCL examples longer than this (prompt + call, tokens) are left out (CPU time)
    answer_margin_tokens: int = 24  # an answer may run to the expected call's tokens + this
    # Also ask every BFCL probe with its tool sent `strict: true` (grammar-constrained arguments), for the
    # base and each fine-tuned model (see the module docstring).
    strict_probes: bool = True
    # Every hyperparameter "auto" (the request names none: ModelMill's rule, README "What auto does"), what
    # issue 18 asks to generalise. Until 2026-12-05 the story trained one pass at batch 4 with 5x the LoRA
    # base rate, as the demo does ({"n_epochs": 1, "batch_size": 4, "learning_rate_multiplier": 5.0}):
    # 0.917 / 0.467 against "auto"'s 1.000 / 0.467, side by side in one run ("auto" trained 3.2x as long).
    hyperparameters: dict = field(default_factory=dict)
    seed: int = 7
    target: float = 0.85  # held-out examples, exact call
    functions_target: float = 0.65  # held-out functions, exact call (issue 18)


FULL = SFTStory()
QUICK = SFTStory(model="modelmill-tiny", seen_functions=2, variants_per_function=2, other_functions=2,
                 unseen_functions=2, synth_functions=2, synth_per_function=1, smart_home_train=4, smart_home_test=2,
                 answer_margin_tokens=4, hyperparameters={"n_epochs": 1}, compare_overrides={"string_variants": 1},
                 compare_label="one string variant per trained BFCL function")


@dataclass
class Probe:
    """One held-out request and how its answer is checked."""

    group: str  # "smart_home" | "bfcl_seen" | "bfcl_unseen"
    id: str
    messages: list
    tools: list
    max_tokens: int
    expected: dict  # {"name", "arguments"}: smart-home's exact call, or BFCL's canonical one (for the record)
    example: bfcl.BfclExample | None = None  # BFCL's checker when set, else exact match

    def strict_tools(self) -> list:
        """The probe's tools as a user who wants schema-valid arguments sends them: `strict: true`."""
        return [{**t, "function": {**t["function"], "strict": True}} for t in self.tools]

    def check(self, name: str, args: dict) -> tuple[bool, str]:
        if self.example is not None:
            return bfcl.check_call(self.example, name, args)
        got = {"name": name, "arguments": args}
        return got == self.expected, "" if got == self.expected else f"expected {json.dumps(self.expected)}"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def build(cfg: SFTStory, tokenizer) -> tuple[list[dict], list[Probe], dict]:
    """(training lines, held-out probes, a description of the split)."""
    from modelmill.demo import expected_call

    def n_tokens(line: dict) -> int:
        return len(tokenizer.apply_chat_template(_norm(line["messages"]), tools=_norm_tools(line["tools"]),
                                                 tokenize=True, return_dict=True)["input_ids"])

    def call_tokens(call: dict) -> int:
        text = "<tool_call>\n" + json.dumps({"name": call["name"], "arguments": call["arguments"]}) + "\n</tool_call>"
        return len(tokenizer(text)["input_ids"])

    rng = random.Random(cfg.seed)
    examples = bfcl.load()
    fits = [e for e in examples if n_tokens(bfcl.chat_line(e.question, e.function, bfcl.canonical_args(e)))
            <= cfg.max_example_tokens]
    by_name: dict[str, list[bfcl.BfclExample]] = {}
    for e in fits:
        by_name.setdefault(e.name, []).append(e)
    names = sorted(by_name)
    rng.shuffle(names)
    generated = {n: bfcl.variants(by_name[n][0], cfg.variants_per_function, random.Random(f"{cfg.seed}:{n}"),
                                  optional=cfg.optional_args)
                 for n in names if len(by_name[n]) == 1}
    seen = [n for n in names if len(generated.get(n, [])) == cfg.variants_per_function][:cfg.seen_functions]
    rest = [n for n in names if n not in seen]
    unseen = [n for n in rest if len(by_name[n]) == 1][:cfg.unseen_functions]
    other = [n for n in rest if n not in unseen][:cfg.other_functions]
    synth_lines, synthesized, refused = _synth_lines(cfg, [n for n in rest if n not in unseen and n not in other],
                                                     by_name)

    train = read_jsonl(SMART_HOME / "train.jsonl")[:cfg.smart_home_train]
    for n in seen:
        fn = by_name[n][0].function
        train += [bfcl.chat_line(q, fn, args) for q, args in generated[n]]
    train += [bfcl.chat_line(e.question, e.function, bfcl.canonical_args(e, cfg.optional_args))
              for n in other for e in by_name[n]]
    train += synth_lines
    string_lines = [_string_line(cfg, by_name[n][0], q, args, random.Random(f"{cfg.seed}:defaults:{n}:{q}"))
                    for n in seen + other
                    for q, args in bfcl.string_variants(by_name[n][0], cfg.string_variants,
                                                        random.Random(f"{cfg.seed}:strings:{n}"),
                                                        optional=cfg.optional_args)] if cfg.string_variants else []
    distracted = sum(d for _, d in string_lines)
    string_lines = [line for line, _ in string_lines]
    train += string_lines
    random.Random(cfg.seed).shuffle(train)

    probes = []
    for i, line in enumerate(read_jsonl(SMART_HOME / "test.jsonl")[:cfg.smart_home_test]):
        call = expected_call(line)
        probes.append(Probe("smart_home", f"smart_home_test_{i}", line["messages"][:-1], line["tools"],
                            call_tokens(call) + cfg.answer_margin_tokens, call))
    for group, chosen in (("bfcl_seen", seen), ("bfcl_unseen", unseen)):
        for n in chosen:
            e = by_name[n][0]
            # the answer budget fits the call with its optional arguments written out, whichever form trained
            call = {"name": bfcl.tool_name(e.name), "arguments": bfcl.canonical_args(e, "all")}
            probes.append(Probe(group, e.id, [{"role": "user", "content": e.question}], [bfcl.openai_tool(e.function)],
                                call_tokens(call) + cfg.answer_margin_tokens, call, e))
    split = {"bfcl_examples": len(examples), "bfcl_examples_that_fit": len(fits),
             "seen_functions": [by_name[n][0].id for n in seen], "other_functions": [by_name[n][0].id for n in other],
             "unseen_functions": [by_name[n][0].id for n in unseen],
             "synth_functions": [by_name[n][0].id for n in synthesized], "synth_refused": refused,
             "train_lines": {"smart_home": min(cfg.smart_home_train, 80),
                             "bfcl_generated": len(seen) * cfg.variants_per_function,
                             "bfcl_original": sum(len(by_name[n]) for n in other),
                             "bfcl_synth": len(synth_lines), "bfcl_string_variants": len(string_lines),
                             "bfcl_string_variants_with_defaults": distracted,
                             "total": len(train)}}
    return train, probes, split


def _string_line(cfg: SFTStory, e: bfcl.BfclExample, question: str, args: dict,
                 rng: random.Random) -> tuple[dict, bool]:
    """A string variant's training line, and whether its tool names a default: with chance
    `default_distractors`, the tool describes each swapped argument as defaulting to the example's own
    value (bfcl.with_defaults)."""
    if rng.random() >= cfg.default_distractors:
        return bfcl.chat_line(question, e.function, args), False
    own = bfcl.canonical_args(e, cfg.optional_args)
    fn = bfcl.with_defaults(e.function, {a: own[a] for a in args if a in own and args[a] != own[a]})
    return bfcl.chat_line(question, fn, args), fn != e.function


def _synth_lines(cfg: SFTStory, names: list[str], by_name: dict) -> tuple[list[dict], list[str], dict]:
    """`data synth` lines for the first `synth_functions` of `names` whose schema it accepts:
    (lines, the functions used, {function: why refused})."""
    from modelmill.datagen.schema import SchemaError

    lines: list[dict] = []
    used: list[str] = []
    refused: dict[str, str] = {}
    for n in names:
        if len(used) == cfg.synth_functions:
            break
        try:
            lines += bfcl.synth_lines(by_name[n][0].function, cfg.synth_per_function, cfg.seed + len(used))
        except SchemaError as e:  # e.g. a string pattern with no example: data synth says why and skips it
            refused[n] = str(e)
            continue
        used.append(n)
    return lines, used, refused


def _norm(messages):
    from modelmill.ml.chat_format import normalize_messages

    return normalize_messages(messages)


def _norm_tools(tools):
    from modelmill.ml.chat_format import normalize_tools

    return normalize_tools(tools)


def ask(client, model: str, probe: Probe, strict: bool = False) -> dict:
    """One greedy completion, scored: {"id", "group", "ok", "valid", "why", "reply"}; with `strict`, the
    probe's tools are sent `strict: true`."""
    resp = client.chat.completions.create(model=model, messages=probe.messages, temperature=0,
                                          tools=probe.strict_tools() if strict else probe.tools,
                                          max_tokens=probe.max_tokens)
    msg = resp.choices[0].message
    calls = msg.tool_calls or []
    out = {"id": probe.id, "group": probe.group, "ok": False, "valid": False, "why": "no tool call",
           "reply": (msg.content or "")[:200]}
    if not calls:
        return out
    out["reply"] = json.dumps([{"name": c.function.name, "arguments": c.function.arguments} for c in calls])[:400]
    try:
        args = json.loads(calls[0].function.arguments)
    except ValueError:
        return {**out, "why": "arguments are not JSON"}
    if not isinstance(args, dict):
        return {**out, "why": "arguments are not an object"}
    out["valid"] = True
    if len(calls) != 1:
        return {**out, "why": f"{len(calls)} calls, one expected"}
    ok, why = probe.check(calls[0].function.name, args)
    return {**out, "ok": ok, "why": why}


def score(client, model: str, probes: list[Probe], strict: bool = False) -> tuple[dict, list[dict]]:
    """Accuracy and valid-call rate per group and for the headline; the per-probe answers. `strict`: the
    tools are sent `strict: true` (see ask)."""
    t0 = time.monotonic()
    answers = []
    for i, p in enumerate(probes, 1):
        answers.append(ask(client, model, p, strict))
        if i % 10 == 0 or i == len(probes):
            print(f"[sft]   {i}/{len(probes)} asked, {sum(a['ok'] for a in answers)} right, "
                  f"{time.monotonic() - t0:.0f} s", flush=True)

    def rate(groups: tuple[str, ...], key: str) -> float | None:
        xs = [a[key] for a in answers if a["group"] in groups]
        return sum(xs) / len(xs) if xs else None

    summary = {"held_out_examples": rate(("smart_home", "bfcl_seen"), "ok"),
               "held_out_functions": rate(("bfcl_unseen",), "ok"),
               **{f"{g}_exact": rate((g,), "ok") for g in ("smart_home", "bfcl_seen", "bfcl_unseen")},
               **{f"{g}_valid": rate((g,), "valid") for g in ("smart_home", "bfcl_seen", "bfcl_unseen")},
               "seconds": round(time.monotonic() - t0, 1)}
    return summary, answers


FAILURE_KINDS = (("Optional parameter", "an optional argument left out that BFCL's answer wants"),
                 ("Invalid value", "a wrong value"), ("type", "a wrong type"), ("Missing", "a missing argument"),
                 ("Unexpected", "an argument the schema lacks"), ("calls", "more than one call"),
                 ("no tool call", "no call"), ("expected", "a wrong smart-home call"))


def failure_note(answers: list[dict], label: str = "Fine-tuned misses") -> str:
    """What the fine-tuned model's misses were, by BFCL's error kind, per group."""
    parts = []
    for group in ("smart_home", "bfcl_seen", "bfcl_unseen"):
        missed = [a for a in answers if a["group"] == group and not a["ok"]]
        if missed:
            kinds: dict[str, int] = {}
            for a in missed:
                kind = next((label for key, label in FAILURE_KINDS if key in a["why"]), "other")
                kinds[kind] = kinds.get(kind, 0) + 1
            parts.append(f"{group} {len(missed)} ({', '.join(f'{n} {k}' for k, n in kinds.items())})")
    return f"{label} by kind: " + ("; ".join(parts) if parts else "none") + "."


def strict_scores(client, model: str, probes: list[Probe], label: str) -> dict:
    """The BFCL probes asked again with strict tools (SFTStory.strict_probes): {"scores", "answers"}."""
    print(f"[sft] {label}: the BFCL probes again, tools sent strict: true ...", flush=True)
    scores, answers = score(client, model, [p for p in probes if p.example is not None], strict=True)
    print(f"[sft] {label}, strict tools: {scores}", flush=True)
    return {"scores": scores, "answers": answers}


def strict_change(plain: list[dict], strict: list[dict]) -> str:
    """Which BFCL answers strict tools turned right or wrong (the same model and probes)."""
    ok = {a["id"]: a["ok"] for a in plain}
    fixed = [a["id"] for a in strict if a["ok"] and not ok[a["id"]]]
    broke = [a["id"] for a in strict if ok[a["id"]] and not a["ok"]]
    return (f"{len(fixed)} BFCL answers turned right ({', '.join(fixed) or 'none'}), {len(broke)} turned wrong "
            f"({', '.join(broke) or 'none'})")


def train_and_score(client, cfg: SFTStory, train: list[dict], valid_file: str, probes: list[Probe], name: str):
    """One SFT job on `train`, then its model scored: (the finished job, training seconds, scores, answers)."""
    data = "".join(json.dumps(x) + "\n" for x in train).encode()
    train_file = client.files.create(file=(name, data), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model=cfg.model, training_file=train_file.id, validation_file=valid_file, suffix="results-sft",
        seed=cfg.seed, metadata={"eval": "false"},  # scored here, with BFCL's checker
        method={"type": "supervised", "supervised": {"hyperparameters": cfg.hyperparameters}})
    t_train = time.monotonic()
    job = wait_job(client, job.id)
    train_s = time.monotonic() - t_train
    print(f"[sft] scoring {job.fine_tuned_model} ...", flush=True)
    scores, answers = score(client, job.fine_tuned_model, probes)
    print(f"[sft] fine-tuned: {scores}", flush=True)
    return job, train_s, scores, answers


def training_note(split: dict, job, train_s: float) -> str:
    """What one job trained on and how: lines by source, hyperparameters, tokens and time."""
    lines, hp = split["train_lines"], job.method.supervised.hyperparameters
    steps = math.ceil(lines["total"] / hp.batch_size) * hp.n_epochs
    return (f"{lines['total']} lines ({lines['smart_home']} smart-home, {lines['bfcl_generated']} generated from "
            f"{len(split['seen_functions'])} BFCL functions, {lines['bfcl_original']} BFCL examples of "
            f"{len(split['other_functions'])} other functions"
            + (f", {lines['bfcl_synth']} written by `data synth` from {len(split['synth_functions'])} "
               "more functions' schemas" if split["synth_functions"] else "")
            + (f", {lines['bfcl_string_variants']} of trained BFCL functions with other string values"
               + (f" ({lines['bfcl_string_variants_with_defaults']} of them with a tool that names the request's "
                  "original value as the default)" if lines.get("bfcl_string_variants_with_defaults") else "")
               if lines.get("bfcl_string_variants") else "") + "), "
            f"{hp.n_epochs} epoch{'s' if hp.n_epochs > 1 else ''}, batch {hp.batch_size}, "
            f"LR multiplier {hp.learning_rate_multiplier}, LoRA r=8; "
            f"{job.trained_tokens} tokens in {train_s:.0f} s ({steps} steps, {train_s / steps:.0f} s a step)")


def run(ctx: Context, cfg: SFTStory | None = None) -> dict:
    from transformers import AutoTokenizer

    from modelmill.ml import chat_format, models

    cfg = cfg or (QUICK if ctx.quick else FULL)
    client = ctx.client
    tokenizer = AutoTokenizer.from_pretrained(models.ensure_base(ctx.home, cfg.model))
    tokenizer.chat_template = chat_format.chat_template()
    train, probes, split = build(cfg, tokenizer)
    counts = {g: sum(p.group == g for p in probes) for g in ("smart_home", "bfcl_seen", "bfcl_unseen")}
    print(f"[sft] {len(train)} training lines {split['train_lines']}; held out {counts}", flush=True)
    if cfg.compare_overrides:
        v_cfg = replace(cfg, **cfg.compare_overrides)
        v_train, v_probes, v_split = build(v_cfg, tokenizer)
        # side by side means the same questions: the variant changes training only
        assert [(p.id, p.messages, p.max_tokens) for p in v_probes] == [(p.id, p.messages, p.max_tokens)
                                                                          for p in probes], "probes differ"
        print(f"[sft] side by side: {cfg.compare_label}: {len(v_train)} training lines {v_split['train_lines']}",
              flush=True)

    t0 = time.monotonic()
    valid_file = client.files.create(file=open(SMART_HOME / "valid.jsonl", "rb"), purpose="fine-tune")
    print(f"[sft] scoring the base model {cfg.model} on {len(probes)} held-out requests ...", flush=True)
    before, before_answers = score(client, cfg.model, probes)
    print(f"[sft] base: {before}", flush=True)
    job, train_s, after, after_answers = train_and_score(client, cfg, train, valid_file.id, probes,
                                                         "results_sft_train.jsonl")
    strict = None
    if cfg.strict_probes:
        strict = {"base": strict_scores(client, cfg.model, probes, "base"),
                  "fine_tuned": strict_scores(client, job.fine_tuned_model, probes, "fine-tuned")}
    if cfg.compare_overrides:
        print(f"[sft] side by side: {cfg.compare_label} ...", flush=True)
        v_job, v_train_s, v_after, v_answers = train_and_score(client, v_cfg, v_train, valid_file.id, probes,
                                                               "results_sft_train_compare.jsonl")
        if cfg.strict_probes:
            strict["compare"] = strict_scores(client, v_job.fine_tuned_model, probes, "side by side")
    wall = time.monotonic() - t0

    head_base, head_ft = before["held_out_examples"], after["held_out_examples"]
    n_head = counts["smart_home"] + counts["bfcl_seen"]
    rows = [row(f"held-out examples, exact call ({n_head}: {counts['smart_home']} smart-home + "
                f"{counts['bfcl_seen']} BFCL of trained functions)", head_base, head_ft,
                f">= {cfg.target:.0%}", head_ft >= cfg.target),
            row(f"held-out functions, exact call ({counts['bfcl_unseen']} BFCL functions never trained on)",
                before["held_out_functions"], after["held_out_functions"], f">= {cfg.functions_target:.0%}",
                after["held_out_functions"] >= cfg.functions_target),
            row("  of which smart-home test", before["smart_home_exact"], after["smart_home_exact"], None, None),
            row("  of which BFCL, trained functions", before["bfcl_seen_exact"], after["bfcl_seen_exact"], None, None)]
    if strict:
        s_base, s_ft = strict["base"]["scores"], strict["fine_tuned"]["scores"]
        rows += [row("held-out functions, the same model and questions with the tools sent `strict: true` "
                     "(grammar-constrained arguments)", s_base["bfcl_unseen_exact"], s_ft["bfcl_unseen_exact"],
                     f">= {cfg.functions_target:.0%}", s_ft["bfcl_unseen_exact"] >= cfg.functions_target),
                 row("  BFCL, trained functions, strict tools", s_base["bfcl_seen_exact"], s_ft["bfcl_seen_exact"],
                     None, None)]
    compare = None
    if cfg.compare_overrides:
        compare = {"label": cfg.compare_label, "overrides": cfg.compare_overrides, "split": v_split,
                   "job_id": v_job.id, "train_s": round(v_train_s, 1), "trained_tokens": v_job.trained_tokens,
                   "scores": v_after, "answers": v_answers}
        rows += [row(f"the same, side by side in this run, with {cfg.compare_label} "
                     f"({v_split['train_lines']['total']} training lines): held-out examples", head_base,
                     v_after["held_out_examples"], "reported", None),
                 row("  its held-out functions", before["held_out_functions"], v_after["held_out_functions"],
                     "reported", None),
                 row("  its BFCL, trained functions", before["bfcl_seen_exact"], v_after["bfcl_seen_exact"], None,
                     None)]
        if strict:
            v_strict = strict["compare"]["scores"]
            rows += [row("  its held-out functions, strict tools", s_base["bfcl_unseen_exact"],
                         v_strict["bfcl_unseen_exact"], "reported", None),
                     row("  its BFCL, trained functions, strict tools", s_base["bfcl_seen_exact"],
                         v_strict["bfcl_seen_exact"], None, None)]
    notes = [
        "Training: " + training_note(split, job, train_s) + ".",
        f"BFCL `simple_python` examples whose prompt + call exceed {cfg.max_example_tokens} tokens are left out "
        f"({split['bfcl_examples'] - split['bfcl_examples_that_fit']} of {split['bfcl_examples']}). A trained "
        "function's held-out example is BFCL's own request; training saw the same sentence with other numbers "
        + ("and names " if cfg.string_variants else "")
        + "(like the smart-home split, by argument values), so this row measures learning a schema, not "
        "generalising to a new one.",
        "Valid-call rate (a parseable tool call), base -> fine-tuned: " + ", ".join(
            f"{g} {before[f'{g}_valid']:.0%} -> {after[f'{g}_valid']:.0%}"
            for g in ("smart_home", "bfcl_seen", "bfcl_unseen") if before[f"{g}_valid"] is not None) + ".",
        "No large model runs offline here, so there is no side-by-side large-model figure; the target stands in.",
        failure_note(after_answers),
    ]
    if compare:
        notes.append(f"Side by side in this run, the same probes and seed, with {cfg.compare_label} "
                     f"({cfg.compare_overrides}): " + training_note(v_split, v_job, v_train_s) + ". "
                     + failure_note(v_answers, "Its fine-tuned misses")
                     + " The wall time includes this second job and its scoring.")
    if strict:
        notes.append("Strict tools (the BFCL probes asked again with `strict: true`, the same models): the story's "
                     "model: " + strict_change(after_answers, strict["fine_tuned"]["answers"]) + "; "
                     + failure_note(strict["fine_tuned"]["answers"], "misses")
                     + (" The side-by-side model: " + strict_change(v_answers, strict["compare"]["answers"]) + "; "
                        + failure_note(strict["compare"]["answers"], "misses") if compare else "")
                     + f" Base with strict tools: valid calls {s_base['bfcl_seen_valid']:.0%} (trained functions' "
                     f"questions), {s_base['bfcl_unseen_valid']:.0%} (held-out functions'). Strict tools constrain "
                     "a call once the model starts one; they choose no value.")
    details = {"rows": rows, "notes": notes, "date": today(), "machine": machine(), "split": split,
               "config": {k: v for k, v in cfg.__dict__.items()}, "job_id": job.id,
               "fine_tuned_model": job.fine_tuned_model, "train_s": round(train_s, 1),
               "trained_tokens": job.trained_tokens, "base_scores": before, "fine_tuned_scores": after,
               "base_answers": before_answers, "fine_tuned_answers": after_answers,
               "compare": compare,
               "strict": strict}
    return result("sft", cfg.model, rows[0]["metric"], head_base, head_ft, rows[0]["target"], rows[0]["met"], wall,
                  details)
