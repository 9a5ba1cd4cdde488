"""What the strict-tools grammar under tool_choice "auto" (ml/constraints.py for_auto_tools) costs a
request that answers in text.

    python bench/probe_auto_tools.py [--quick] [--repeats 5] [--max-tokens 64] [--threads 2]

The same greedy request (one `strict: true` tool, tool_choice omitted) is decoded with the grammar
and with it switched off (the prompt is identical: only the constraint differs), alternating, in
one process through ml.sampling.Sampler on SmolLM2-135M-Instruct (fp32). Where the model answers in
text the grammar leaves every token free, so both arms write the same tokens and the ratio is the
grammar's per-step cost (mask computation). Prints one JSON line: tokens/s of each arm (median) and
their ratio (target, as for structured outputs: <= 1.15x). --quick: modelmill-tiny, 2 repeats.
A probe: it writes nothing; the lead runs it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "strict": True, "description": "Current weather in a city.",
    "parameters": {"type": "object", "additionalProperties": False, "required": ["city", "unit"],
                   "properties": {"city": {"type": "string", "maxLength": 30},
                                  "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}}}}]
MESSAGES = [{"role": "user", "content": "Write a short poem about the sea. Do not call any tool."}]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--home", default=os.environ.get("MODELMILL_HOME", str(Path.home() / ".modelmill")))
    args = p.parse_args()

    import torch

    from modelmill.ml import constraints, models
    from modelmill.ml.sampling import Sampler, SamplingParams
    from modelmill.ml.types import ModelRef

    torch.set_num_threads(args.threads)
    model = "modelmill-tiny" if args.quick else "SmolLM2-135M-Instruct"
    repeats = 2 if args.quick else args.repeats
    ref = ModelRef(models.ensure_base(Path(args.home), model))
    sampler = Sampler(batch_window_s=0)
    params = SamplingParams(temperature=0, max_tokens=args.max_tokens)
    grammar_on = constraints.for_auto_tools

    def run(with_grammar: bool) -> tuple[float, int, str]:
        constraints.for_auto_tools = grammar_on if with_grammar else (lambda *a, **k: None)
        try:
            start = time.perf_counter()
            result = sampler.generate(ref, MESSAGES, TOOLS, params)
            return time.perf_counter() - start, result.completion_tokens, result.choices[0].text
        finally:
            constraints.for_auto_tools = grammar_on

    run(True), run(False)  # warm-up: model load, tokenizer for llguidance
    rates: dict[bool, list[float]] = {True: [], False: []}
    texts: dict[bool, str] = {}
    for _ in range(repeats):
        for arm in (True, False):
            seconds, tokens, texts[arm] = run(arm)
            rates[arm].append(tokens / seconds)
    on, off = statistics.median(rates[True]), statistics.median(rates[False])
    print(json.dumps({"model": model, "repeats": repeats, "max_tokens": args.max_tokens, "threads": args.threads,
                      "tokens_per_s_grammar": round(on, 2), "tokens_per_s_plain": round(off, 2),
                      "cost_ratio": round(off / on, 3), "same_text": texts[True] == texts[False],
                      "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}))


if __name__ == "__main__":
    main()
