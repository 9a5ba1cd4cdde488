"""Peak memory of LoRA SFT: ModelMill's train_sft against the plain TRL script, each in its own process.

    python bench/bench_memory.py [--json bench/out/memory.json] [--quick] [--repeats 3]

SmolLM2-135M-Instruct (fp32), batch --batch-size examples of about --seq-len tokens each
(reasoning-gym word sorting, the word count chosen per example so its rendering is as close to
--seq-len tokens as it gets), --steps optimizer steps, 1 epoch.
- ModelMill: ml.sft.train_sft in a child process (its auto configuration; reporting, checkpoint
  at the epoch end and the final adapter included).
- baseline: bench/plain_trl_sft.py with the same settings (LoRA r / alpha / all-linear targets,
  the same batching, no activation checkpointing, same learning rate and seed).
Peak RSS is each child's own high-water mark (VmHWM, read by the child as it ends: see
training_common.peak_rss_mb), so the parent's memory never counts. The
repeats interleave the two sides. Target: ModelMill's peak <= the baseline's.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from training_common import (MODEL, QUICK_MODEL, QUICK_NOTE, TimedReporter, alternating_runs,  # noqa: E402
                             length_summary, machine, modelmill_batching, parse_args_or_run_child, peak_rss_mb,
                             publish, row, run_child, run_plain, token_lengths, training_bench_parser, write_jsonl)

BENCH = "memory"
TARGET = 1.0  # baseline peak / ModelMill peak must be >= this
MIB_PER_GB = 2**20 / 1e9  # the rows are in GB (10^9 bytes), as the Bench JSON contract asks


def fixed_length_rows(model_dir: Path, n: int, seq_len: int, seed: int) -> list[dict]:
    """n word-sorting chats, each with the word count whose rendering comes closest to seq_len tokens."""
    import reasoning_gym

    from modelmill.ml import models, sft
    from modelmill.ml.types import ChatExample

    tokenizer = models.load_model(model_dir)[1]
    rows = []
    for i in range(n):
        best = None
        for words in range(1, 200):
            item = reasoning_gym.create_dataset("word_sorting", size=1, seed=seed * 100_003 + i,
                                                min_words=words, max_words=words)[0]
            chat = {"messages": [{"role": "user", "content": item["question"]},
                                 {"role": "assistant", "content": str(item["answer"])}]}
            length = len(sft.tokenize_example(tokenizer, ChatExample(messages=chat["messages"]), 10**9).input_ids)
            if best is None or abs(length - seq_len) < best[0]:
                best = (abs(length - seq_len), chat)
            if length >= seq_len:
                break
        rows.append(best[1])
    return rows


def child(args) -> dict:
    from modelmill.ml import sft

    reporter = TimedReporter()
    result = sft.train_sft(sft.SFTConfig(
        base_dir=Path(args.model_dir), train_path=Path(args.train), valid_path=None, output_dir=Path(args.out),
        n_epochs=1, batch_size=args.batch_size, learning_rate_multiplier=1.0, seed=args.seed), reporter)
    return {"steps": result.steps, "tokens": result.trained_tokens, "peak_rss_mb": peak_rss_mb(),
            "rss_at_train_mb": reporter.rss_at_train_mb}


def run_modelmill(args, model_dir: Path, train: Path, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, __file__, "--child", "--model-dir", str(model_dir), "--train", str(train),
           "--out", str(out), "--batch-size", str(args.batch_size), "--seed", str(args.seed)]
    return run_child(cmd, out / "log.txt", args.threads)


def main() -> None:
    p = training_bench_parser(__doc__, quick_help="smoke run: modelmill-tiny, 2 x 64 tokens, 1 repeat", repeats=3,
                              repeats_help="peak RSS varies by a few %% from run to run", budget_s=210,
                              hidden=("--model-dir", "--train", "--out"))
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--steps", type=int, default=2)
    args = parse_args_or_run_child(p, child)
    if args is None:
        return
    if args.quick:
        args.repeats, args.steps, args.batch_size, args.seq_len = 1, 2, 2, 64

    from modelmill.ml import models, sft

    machine_line = machine()
    model = QUICK_MODEL if args.quick else MODEL
    model_dir = models.ensure_base(Path(args.home), model).resolve()
    work = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    train = write_jsonl(work / "train.jsonl", fixed_length_rows(model_dir, args.batch_size * args.steps,
                                                                 args.seq_len, seed=1))
    lengths = token_lengths(model_dir, train)
    defaults = sft.SFTConfig(base_dir=model_dir, train_path=train, valid_path=None, output_dir=work, n_epochs=1,
                             batch_size=args.batch_size, learning_rate_multiplier=1.0)
    padding_free, _ = modelmill_batching(model_dir, train, args.batch_size, args.seed)

    def one_run(side: str, rep: int) -> dict:
        out = work / f"{side}-{rep}"
        if side == "baseline":
            r = run_plain(model_dir, train, out, epochs=1, batch_size=args.batch_size,
                          lr=sft.BASE_LEARNING_RATE, seed=args.seed, lora_targets="all-linear",
                          padding_free=padding_free, activation_checkpointing=False, threads=args.threads)
        else:
            r = run_modelmill(args, model_dir, train, out)
        print(f"[{side} {rep}] peak RSS {r['peak_rss_mb']:.0f} MiB, {r['steps']} steps", flush=True)
        return r

    runs = alternating_runs(args.repeats, args.budget_s, one_run)

    base, mm = runs["baseline"], runs["modelmill"]
    rows = [row(f"peak RSS, LoRA SFT batch {args.batch_size} x ~{args.seq_len} tokens", "plain TRL script, same "
                "settings, own process", "GB", [r["peak_rss_mb"] * MIB_PER_GB for r in base],
                [r["peak_rss_mb"] * MIB_PER_GB for r in mm],
                higher_is_better=False, target=TARGET, target_text="<= baseline (ratio >= 1.0)",
                ratio_meaning="baseline peak RSS / ModelMill peak RSS (> 1: ModelMill uses less)")]
    notes = [f"Model {model}; data: {length_summary(lengths)}; {args.steps} optimizer steps of {args.batch_size} "
             f"examples, LoRA r={defaults.lora_r}, alpha={defaults.lora_alpha}, all-linear, "
             f"{'padding-free' if padding_free else 'padded'} batches on both sides (ModelMill's auto choice for "
             f"this data).",
             f"torch threads per process: {args.threads or 'torch default (one per core)'}.",
             "Peak RSS per run, MiB: baseline " + ", ".join(f"{r['peak_rss_mb']:.0f}" for r in base)
             + "; ModelMill " + ", ".join(f"{r['peak_rss_mb']:.0f}" for r in mm) + ".",
             "RSS when training starts (model loaded, data tokenized, trainer built), MiB: baseline "
             + ", ".join(f"{r['rss_at_train_mb']:.0f}" for r in base) + "; ModelMill "
             + ", ".join(f"{r['rss_at_train_mb']:.0f}" for r in mm) + "."]
    if args.quick:
        notes.insert(0, QUICK_NOTE)
    profile = None
    if rows[0]["met"] is False:
        at_train = [statistics.median(r["rss_at_train_mb"] for r in side) for side in (base, mm)]
        overlap = len(mm) > 1 and min(r["peak_rss_mb"] for r in mm) <= max(r["peak_rss_mb"] for r in base)
        peak_diff = statistics.median(r["peak_rss_mb"] for r in mm) - statistics.median(r["peak_rss_mb"] for r in base)
        profile = (f"ModelMill minus plain script, medians: {at_train[1] - at_train[0]:+.0f} MiB resident when "
                   f"training starts (model, data, trainer), {peak_diff:+.0f} MiB at the peak (during training). "
                   + ("The two sides' per-run peaks overlap: the gap is within the run-to-run spread." if overlap
                      else "The per-run peaks do not overlap." if len(mm) > 1 else "One run per side only."))
    return publish(args, BENCH, "Training memory: train_sft vs a plain TRL script",
                   f"`python bench/bench_memory.py` ({machine_line}; {len(mm)} interleaved repeats, each run its own "
                   f"process).", machine_line, rows, notes, profile)


if __name__ == "__main__":
    main()
