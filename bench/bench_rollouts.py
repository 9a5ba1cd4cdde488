"""RFT rollout throughput: batched sampling (one generate() call for a prompt's whole group of
generations) vs one generate() call per completion, same prompts, same model, same run.

    python bench/bench_rollouts.py [--prompts 3] [--generations 8] [--max-tokens 48] [--threads 2]

Model: SmolLM2-135M-Instruct (fp32), loaded once through ml.sampling.Sampler. Each prompt is an
RFT-style prompt (a small arithmetic question plus ml.rft.rewards' reasoning instruction).
- batched:    Sampler.generate(..., SamplingParams(n=G)) per prompt: one left-padded generate()
              with G sequences, as TRL's GRPOTrainer does for a step's groups.
- one-by-one: G calls of Sampler.generate(..., SamplingParams(n=1)) per prompt.
Throughput = generated completion tokens (EOS included, padding not) / wall seconds. Sampling is
seeded but the two arms draw different tokens, so lengths differ a little; tokens/s is the fair
figure. Target: batched >= 3x one-by-one at 8 generations per prompt. Results go to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

MODEL = "SmolLM2-135M-Instruct"
TARGET_RATIO = 3.0
QUESTIONS = ["What is 17 + 25?", "A box holds 6 eggs. How many eggs are in 7 boxes?",
             "What is 100 - 37?", "Tom has 3 apples and buys 9 more. How many apples does he have?",
             "What is 12 * 4?", "What is 81 / 9?"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", type=int, default=3)
    p.add_argument("--generations", type=int, default=8, help="completions per prompt (RFT's group size)")
    p.add_argument("--max-tokens", type=int, default=48, help="completion budget per sequence")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--home", default=os.environ.get("MODELMILL_HOME", str(Path.home() / ".modelmill")))
    p.add_argument("--json", help="also write the Bench JSON (bench/README.md) here")
    args = p.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from training_common import machine

    machine_line = machine()

    import torch

    from modelmill.ml import models
    from modelmill.ml.rft.rewards import REASONING_INSTRUCTION, with_instruction
    from modelmill.ml.sampling import Sampler, SamplingParams
    from modelmill.ml.types import ModelRef

    torch.set_num_threads(args.threads)
    ref = ModelRef(models.ensure_base(Path(args.home), MODEL))
    sampler = Sampler()
    prompts = [with_instruction([{"role": "user", "content": q}], REASONING_INSTRUCTION)
               for q in (QUESTIONS * args.prompts)[:args.prompts]]
    sampler.generate(ref, prompts[0], params=SamplingParams(max_tokens=4, seed=0))  # load + warm up

    def run(batched: bool) -> tuple[int, float]:
        tokens, started = 0, time.perf_counter()
        for i, messages in enumerate(prompts):
            if batched:
                params = SamplingParams(n=args.generations, max_tokens=args.max_tokens, seed=i)
                tokens += sampler.generate(ref, messages, params=params).completion_tokens
            else:
                for g in range(args.generations):
                    params = SamplingParams(max_tokens=args.max_tokens, seed=1000 * i + g)
                    tokens += sampler.generate(ref, messages, params=params).completion_tokens
        return tokens, time.perf_counter() - started

    one_tokens, one_s = run(batched=False)
    bat_tokens, bat_s = run(batched=True)
    one_tps, bat_tps = one_tokens / one_s, bat_tokens / bat_s
    ratio = bat_tps / one_tps
    load = os.getloadavg()[0]
    verdict = "PASS" if ratio >= TARGET_RATIO else "FAIL"
    body = "\n".join([
        f"{MODEL}, fp32, {args.prompts} RFT-style prompts x {args.generations} sampled completions "
        f"(temperature 1, up to {args.max_tokens} tokens each), `python bench/bench_rollouts.py`, "
        f"{platform.machine()} {os.cpu_count()} CPUs, torch threads {args.threads}, load average {load:.1f} "
        f"at the end (a shared machine: figures are noisy).",
        "",
        f"- one generate() per completion: {one_tokens} tokens in {one_s:.1f} s = **{one_tps:.1f} tokens/s**",
        f"- one generate() per prompt's group of {args.generations}: {bat_tokens} tokens in {bat_s:.1f} s = "
        f"**{bat_tps:.1f} tokens/s**",
        "",
        f"Batched / one-by-one: **{ratio:.2f}x** (target >= {TARGET_RATIO:g}x at 8 generations per prompt: "
        f"{verdict}). RFT training (TRL's GRPOTrainer, ml/rft/) generates a whole step's groups in one call.",
    ])
    print(body)
    if args.json:
        from training_common import row, write_json

        write_json(args.json, "rollouts", machine_line, [row(
            f"RFT rollout throughput, {args.generations} generations per prompt", "one generate() per completion",
            "tok/s", [one_tps], [bat_tps], higher_is_better=True, target=TARGET_RATIO,
            target_text=f">= {TARGET_RATIO:g}x", ratio_meaning="batched tokens/s / one-by-one tokens/s")],
            [f"{MODEL}, {args.prompts} prompts, up to {args.max_tokens} tokens per completion, one run of each arm."],
            None)
    from benchmarks_md import write_section

    write_section("bench_rollouts", "RFT rollouts", body)


if __name__ == "__main__":
    main()
