"""SFT efficiency of ModelMill's "auto" configuration against TRL's default SFTConfig configuration,
on chat data with a realistic long-tailed length distribution, measured side by side in one run.

    python bench/bench_sft_efficiency.py [--json bench/out/sft_efficiency.json] [--quick] [--repeats 2]

Data: `training_common.skewed_chat_rows` (reasoning-gym tasks; log-normal example sizes: most
examples short, a few near 1,000 tokens), --train-examples for training, --valid-examples from
another seed for validation. Both sides get the same model (SmolLM2-135M-Instruct, fp32), the
same hyperparameters (ModelMill's "auto" values for the training set's size, except 1 epoch to
keep the run short), the same seed, LoRA r=8 / alpha=16, loss on assistant tokens only.

- baseline: bench/plain_trl_sft.py with TRL's SFTConfig defaults: batches padded to the longest
  example, no packing, no length grouping, PEFT's default LoRA targets (q_proj, v_proj for Llama).
  Activation checkpointing, also a TRL default, is turned off as ModelMill does, so the comparison
  is only batching and LoRA targets (checkpointing trades speed for memory).
- ModelMill: ml.sft.train_sft with its auto configuration (see sft._build_trainer), in a child process.

Each training run is its own process; the repeats interleave the two sides. Training throughput
= real tokens (padding never counts: the tokenized examples' lengths, times the epochs) / the
training phase (trainer.train() called -> end of the last optimizer step). After training, one
function (training_common.valid_loss) scores each adapter on the validation set: mean loss per
assistant token. Targets: throughput >= 1.3x the baseline; validation loss at most 2% above it.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from training_common import (MODEL, QUICK_MODEL, QUICK_NOTE, TimedReporter, alternating_runs,  # noqa: E402
                             length_summary, machine, missed_profile, modelmill_batching, parse_args_or_run_child,
                             peak_rss_mb, plain_hyperparameters, publish, row, run_child, run_plain,
                             skewed_chat_rows, token_lengths, valid_loss, training_bench_parser, write_jsonl)

BENCH = "sft_efficiency"
TARGET_SPEEDUP = 1.3
LOSS_TOLERANCE = 0.02  # ModelMill's validation loss may be at most this much (relative) above the baseline's


def child(args) -> dict:
    """The ModelMill side, in its own process: train_sft with the auto configuration."""
    from modelmill.ml import sft

    hp = json.loads(args.hp)
    reporter = TimedReporter()
    result = sft.train_sft(sft.SFTConfig(
        base_dir=Path(args.model_dir), train_path=Path(args.train), valid_path=None, output_dir=Path(args.out),
        n_epochs=hp["n_epochs"], batch_size=hp["batch_size"], learning_rate_multiplier=hp["learning_rate_multiplier"],
        seed=args.seed), reporter)
    return {"train_called": reporter.train_called, "last_step_end": reporter.step_ends[-1],
            "step_ends": reporter.step_ends,
            "tokens": result.trained_tokens, "steps": result.steps, "adapter": str(result.adapter_dir),
            "peak_rss_mb": peak_rss_mb()}


def run_modelmill(args, model_dir: Path, train: Path, out: Path, hp: dict) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, __file__, "--child", "--model-dir", str(model_dir), "--train", str(train),
           "--out", str(out), "--hp", json.dumps(hp), "--seed", str(args.seed)]
    return run_child(cmd, out / "log.txt", args.threads)


def main() -> None:
    p = training_bench_parser(__doc__, quick_help="smoke run: modelmill-tiny, a few examples, 1 repeat", repeats=2,
                              budget_s=380, hidden=("--model-dir", "--train", "--out", "--hp"))
    p.add_argument("--train-examples", type=int, default=40)
    p.add_argument("--valid-examples", type=int, default=16)
    args = parse_args_or_run_child(p, child)
    if args is None:
        return
    if args.quick:
        args.repeats, args.train_examples, args.valid_examples = 1, 12, 4

    from modelmill.ml import models, sft

    machine_line = machine()
    model = QUICK_MODEL if args.quick else MODEL
    model_dir = models.ensure_base(Path(args.home), model)
    work = Path(tempfile.mkdtemp(prefix="bench-sft-efficiency-"))
    train = write_jsonl(work / "train.jsonl", skewed_chat_rows(args.train_examples, seed=1))
    valid = write_jsonl(work / "valid.jsonl", skewed_chat_rows(args.valid_examples, seed=2))
    # 1 epoch keeps the run short; --quick's 12 examples would get batch size 1 (nothing to pad): use 4
    hp = sft.resolve_sft_hyperparameters({"n_epochs": 1, **({"batch_size": 4} if args.quick else {})},
                                         args.train_examples)
    lengths = token_lengths(model_dir, train)

    def one_run(side: str, rep: int) -> dict:
        out = work / f"{side}-{rep}"
        if side == "baseline":
            r = run_plain(model_dir, train, out, **plain_hyperparameters(hp), seed=args.seed,
                          lora_targets="default", padding_free=False, activation_checkpointing=False,
                          threads=args.threads)
            r["adapter"] = str(out / "adapter")
        else:
            r = run_modelmill(args, model_dir, train, out, hp)
        r["tokens_per_s"] = r["tokens"] / (r["last_step_end"] - r["train_called"])
        r["valid_loss"] = valid_loss(model_dir, Path(r["adapter"]), valid)
        print(f"[{side} {rep}] {r['tokens_per_s']:.1f} tok/s, {r['steps']} steps, "
              f"valid loss {r['valid_loss']:.4f}", flush=True)
        return r

    runs = alternating_runs(args.repeats, args.budget_s, one_run)

    base, mm = runs["baseline"], runs["modelmill"]
    tokens = {r["tokens"] for r in base + mm}
    rows = [
        row("SFT training throughput, long-tailed chat data", "TRL SFTConfig defaults (pad to longest, no packing, "
            "LoRA on q_proj/v_proj)", "tok/s", [r["tokens_per_s"] for r in base], [r["tokens_per_s"] for r in mm],
            higher_is_better=True, target=TARGET_SPEEDUP, target_text=f">= {TARGET_SPEEDUP}x",
            ratio_meaning="ModelMill tokens/s / baseline tokens/s (real tokens, padding not counted)"),
        row("final validation loss (per assistant token)", "the same TRL-defaults run", "nats/token",
            [r["valid_loss"] for r in base], [r["valid_loss"] for r in mm], higher_is_better=False,
            target=1 / (1 + LOSS_TOLERANCE), target_text=f"<= {1 + LOSS_TOLERANCE:.2f}x baseline (ratio >= "
            f"{1 / (1 + LOSS_TOLERANCE):.3f})", ratio_meaning="baseline loss / ModelMill loss (> 1: lower loss)"),
    ]
    padding_free, cost = modelmill_batching(model_dir, train, hp["batch_size"], args.seed)
    defaults = sft.SFTConfig(base_dir=model_dir, train_path=train, valid_path=None, output_dir=work, **hp)
    config = (f"{'padding-free' if padding_free else 'padded'} batches (auto: padding-free estimated at "
              f"{cost:.2f}x the compute of padded batches on this data), LoRA r={defaults.lora_r}, "
              f"alpha={defaults.lora_alpha}, all-linear targets")
    notes = [
        f"Model {model}; data: {length_summary(lengths)} (train), {args.valid_examples} validation examples.",
        f"Hyperparameters (both sides): {hp} (ModelMill's auto values for {args.train_examples} examples, 1 epoch), "
        f"LR {sft.BASE_LEARNING_RATE * hp['learning_rate_multiplier']:g} linear decay, seed {args.seed}.",
        f"ModelMill auto configuration: {config}.",
        "Baseline: TRL SFTConfig defaults except bf16=False (required on CPU) and activation checkpointing off "
        "(as ModelMill); assistant_only_loss=True so both learn the same targets.",
        ("Real tokens per run: the same on both sides, " if len(tokens) == 1 else "Real tokens per run DIFFER: ")
        + ", ".join(str(t) for t in sorted(tokens)) + ".",
        f"torch threads per process: {args.threads or 'torch default (one per core)'}.",
        f"Median seconds per optimizer step: baseline {step_seconds(base)}, ModelMill {step_seconds(mm)}.",
        f"Training-phase seconds: baseline {[round(r['last_step_end'] - r['train_called'], 1) for r in base]}, "
        f"ModelMill {[round(r['last_step_end'] - r['train_called'], 1) for r in mm]}; peak RSS MiB: baseline "
        f"{[round(r['peak_rss_mb']) for r in base]}, ModelMill {[round(r['peak_rss_mb']) for r in mm]}.",
    ]
    if args.quick:
        notes.insert(0, QUICK_NOTE)
    profile = missed_profile(rows, f"Median seconds per optimizer step (step 1 counted from trainer.train()): "
                                   f"baseline {step_seconds(base)}, ModelMill {step_seconds(mm)}; ModelMill's "
                                   f"configuration: {config}.")
    return publish(args, BENCH, "SFT efficiency: auto configuration vs TRL defaults",
                   f"`python bench/bench_sft_efficiency.py` ({machine_line}; {len(mm)} interleaved repeats, each run "
                   f"its own process).", machine_line, rows, notes, profile)


def step_seconds(runs: list[dict]) -> str:
    """Each step's median duration over the runs, as a list of seconds."""
    import statistics

    per_run = [[b - a for a, b in zip([r["train_called"], *r["step_ends"][:-1]], r["step_ends"])] for r in runs]
    return str([round(statistics.median(steps), 1) for steps in zip(*per_run)])


if __name__ == "__main__":
    main()
