"""Structured outputs: the cost of grammar-constrained decoding (ml/constraints.py) and its batching.

    python bench/bench_structured.py [--quick] [--json PATH] [--repeats 3] [--max-tokens 64] [--threads 2]
                                     [--budget-s S] [--no-write]

Model: SmolLM2-135M-Instruct (fp32), loaded once in this process through ml.sampling.Sampler (the
sampler chat completions use; no HTTP, so the figures are the decoding itself). Greedy decoding.
Rows (the Bench JSON contract of bench/README.md), each arm measured in the same run, alternating:
(a) tokens/s of one request constrained by a 10-field JSON schema (response_format json_schema,
    strict) against the same request unconstrained (the prompt asks for the same JSON in words, so
    both write JSON-like text of similar length). Target: the constraint costs <= 1.15x, i.e.
    constrained tokens/s >= 1/1.15 = 0.87x unconstrained.
(b) throughput (completion tokens / wall second) of 8 concurrent structured requests (8 threads:
    ml/batching.py decodes them in one batch, each row under its own grammar) against the same 8
    sent one after another. Target >= 3x.
Tokens/s = completion tokens (EOS included) / wall seconds. As a reference for (b), the notes also
give the batched / sequential ratio of the same 8 requests unconstrained (one run). The notes give the time spent computing
grammar masks (RowConstraints) per constrained token, which is what the constraint adds per step.

On CPU, torch's OpenMP threads busy-wait after each step while the grammar mask is computed; in
development runs on 2 busy shared cores this made masks ~15x slower with --threads 2 unless the
process ran with OMP_WAIT_POLICY=PASSIVE (on the quiet machine it did not matter;
docs/structured-outputs.md). The notes record the variable's value.

--quick runs the same code on modelmill-tiny with tiny budgets in seconds; it never writes BENCHMARKS.md
(nor does --no-write).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from training_common import machine, row, rows_table, serving_bench_parser, write_json, write_markdown  # noqa: E402

MODEL, QUICK_MODEL = "SmolLM2-135M-Instruct", "modelmill-tiny"
TARGET_COST = 1.15  # constrained decoding may cost at most 1.15x unconstrained
TARGET_CONCURRENT = 3.0
CONCURRENT = 8
SHORT = {"type": "string", "maxLength": 24}
SCHEMA = {"type": "object", "additionalProperties": False, "properties": {
    "name": SHORT, "age": {"type": "integer", "minimum": 0, "maximum": 120}, "city": SHORT, "country": SHORT,
    "email": {"type": "string", "maxLength": 40}, "is_member": {"type": "boolean"},
    "plan": {"type": "string", "enum": ["basic", "pro", "team"]}, "score": {"type": "number"},
    "tags": {"type": "array", "items": SHORT, "maxItems": 3},
    "signup_year": {"type": "integer", "minimum": 1990, "maximum": 2030}}}
SCHEMA["required"] = list(SCHEMA["properties"])
FORMAT = {"type": "json_schema", "json_schema": {"name": "customer", "schema": SCHEMA, "strict": True}}
PEOPLE = ["Jane Doe, 34, Lyon, France, jane@example.com, member since 2019 on the pro plan, score 8.5, tags vip",
          "Ken Ito, 51, Osaka, Japan, ken@example.jp, not a member, basic plan, joined 2021, score 6",
          "Ana Ruiz, 27, Seville, Spain, ana@example.es, member, team plan since 2020, score 9.1, tags early",
          "Tom Berg, 45, Oslo, Norway, tom@example.no, member, pro plan, joined 2015, score 7.2",
          "Lea Roth, 39, Bern, Switzerland, lea@example.ch, basic plan, joined 2023, score 5.5, tags new",
          "Omar Said, 30, Cairo, Egypt, omar@example.eg, member, team plan, joined 2018, score 8.8",
          "Mia Kerr, 22, Leeds, UK, mia@example.uk, not a member, basic plan, joined 2024, score 4.9",
          "Raj Rao, 60, Pune, India, raj@example.in, member, pro plan since 2010, score 9.7, tags vip, loyal"]


def messages(person: str) -> list[dict]:
    fields = ", ".join(SCHEMA["properties"])
    return [{"role": "user", "content": f"Write this customer as one JSON object with the fields {fields}: {person}"}]


def main() -> None:
    p = serving_bench_parser(__doc__, repeats_help="repeats of each measurement (default 3; --quick 1)",
                             max_tokens_help="completion budget per request (default 64; --quick 24)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--budget-s", type=float, default=None, help="start no new repeat after this many seconds")
    args = p.parse_args()
    repeats = args.repeats or (1 if args.quick else 3)
    max_tokens = args.max_tokens or (24 if args.quick else 64)
    started = time.monotonic()
    machine_line = machine()

    import torch

    from modelmill.ml import constraints, models
    from modelmill.ml.sampling import Sampler, SamplingParams
    from modelmill.ml.types import ModelRef

    torch.set_num_threads(args.threads)
    model = QUICK_MODEL if args.quick else MODEL
    ref = ModelRef(models.ensure_base(Path(args.home), model))
    sampler = Sampler()
    mask_s = _time_masks(constraints)
    free = SamplingParams(temperature=0, max_tokens=max_tokens)
    shaped = SamplingParams(temperature=0, max_tokens=max_tokens, response_format=FORMAT)
    sampler.generate(ref, messages(PEOPLE[0]), params=shaped)  # load, warm up, build the llguidance tokenizer

    def one(params) -> tuple[int, float]:
        t = time.perf_counter()
        return sampler.generate(ref, messages(PEOPLE[0]), params=params).completion_tokens, time.perf_counter() - t

    def eight(concurrent: bool, params=shaped) -> tuple[int, float]:
        t = time.perf_counter()
        call = lambda person: sampler.generate(ref, messages(person), params=params).completion_tokens  # noqa: E731
        if concurrent:
            with ThreadPoolExecutor(CONCURRENT) as pool:
                tokens = sum(pool.map(call, PEOPLE[:CONCURRENT]))
        else:
            tokens = sum(call(person) for person in PEOPLE[:CONCURRENT])
        return tokens, time.perf_counter() - t

    runs: dict[str, list[tuple[int, float]]] = {"free": [], "shaped": [], "sequential": [], "batched": []}
    masked = []  # (mask seconds, constrained tokens) of the single constrained runs
    batched_mask = []  # (mask seconds, wall seconds) of the concurrent runs
    for _ in range(repeats):
        if args.budget_s and runs["free"] and time.monotonic() - started > args.budget_s:
            break
        runs["free"].append(one(free))
        before = mask_s[0]
        runs["shaped"].append(one(shaped))
        masked.append((mask_s[0] - before, runs["shaped"][-1][0]))
        runs["sequential"].append(eight(concurrent=False))
        before = mask_s[0]
        runs["batched"].append(eight(concurrent=True))
        batched_mask.append((mask_s[0] - before, runs["batched"][-1][1]))
    # Reference, once: the same 8 requests unconstrained, so a missed (b) target can be told apart
    # from what batching gives on this machine without any grammar.
    plain = [eight(concurrent=False, params=free), eight(concurrent=True, params=free)]
    plain_ratio = (plain[1][0] / plain[1][1]) / (plain[0][0] / plain[0][1])
    batches = [b for b in sampler.batch_history if b[0] > 1]
    tps = {k: [n / s for n, s in v] for k, v in runs.items()}
    rows = [
        row(f"{model}: one request under a 10-field JSON schema", "the same request unconstrained", "tok/s",
            tps["free"], tps["shaped"], higher_is_better=True, target=1 / TARGET_COST,
            target_text=f"cost <= {TARGET_COST:g}x (ratio >= {1 / TARGET_COST:.2f})",
            ratio_meaning="constrained tokens/s / unconstrained tokens/s"),
        row(f"{model}: {CONCURRENT} concurrent structured requests", f"the same {CONCURRENT} one after another",
            "tok/s", tps["sequential"], tps["batched"], higher_is_better=True, target=TARGET_CONCURRENT,
            target_text=f">= {TARGET_CONCURRENT:g}x", ratio_meaning="batched tokens/s / sequential tokens/s"),
    ]
    per_token_ms = 1000 * sum(s for s, _ in masked) / max(1, sum(n for _, n in masked))
    notes = [
        f"{model}, fp32, greedy, up to {max_tokens} tokens per request, torch threads {args.threads}, "
        f"{len(runs['free'])} repeats; load average {os.getloadavg()[0]:.1f} at the end; "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}.",
        f"Completion tokens per single request: unconstrained {statistics.median(n for n, _ in runs['free']):.0f}, "
        f"constrained {statistics.median(n for n, _ in runs['shaped']):.0f} (median).",
        f"Grammar masks (llguidance, RowConstraints): {per_token_ms:.2f} ms per constrained token in the single runs; "
        f"{100 * sum(m for m, _ in batched_mask) / sum(w for _, w in batched_mask):.0f}% of the concurrent runs' "
        "wall time (8 rows masked per step, on llguidance's threads).",
        f"Batched generate() calls with more than one request (requests, rows): {batches}",
        f"Reference, the same {CONCURRENT} requests unconstrained (one run): batched / sequential = {plain_ratio:.2f}x.",
    ]
    body = rows_table(rows) + "\n\n" + "\n".join(f"- {n}" for n in notes)
    print(body)
    write_json(args.json, "structured", machine_line, rows, notes, None)
    write_markdown("bench_structured", "Structured outputs (constrained decoding)", body, args.quick or args.no_write)


def _time_masks(constraints) -> list[float]:
    """Accumulate the seconds RowConstraints spends per call (a one-element list, updated in place)."""
    total = [0.0]
    call = constraints.RowConstraints.__call__

    def timed(self, input_ids, scores):
        t = time.perf_counter()
        try:
            return call(self, input_ids, scores)
        finally:
            total[0] += time.perf_counter() - t

    constraints.RowConstraints.__call__ = timed
    return total


if __name__ == "__main__":
    main()
