"""Job overhead: one SFT job through ModelMill's API against a plain TRL script doing the same
training, measured side by side in one run.

    python bench/bench_job_overhead.py [--json bench/out/job_overhead.json] [--quick] [--repeats 2]

- ModelMill: a live `modelmill serve` (API + in-process worker) on a fresh temp MODELMILL_HOME (the
  converted base model is linked in, as the plain script reads the same directory), driven by the
  official openai SDK: files.create, fine_tuning.jobs.create, poll jobs.retrieve every
  --poll-seconds until the job succeeded; then the server stops.
- baseline: bench/plain_trl_sft.py in its own process, with the settings ModelMill trains with
  (same model directory, data, epochs, batch size, learning rate and schedule, seed, LoRA r / alpha
  / all-linear targets, no activation checkpointing, and the batching ModelMill's auto rule picks
  for this data: padding-free for these short mixed-length chats).

Wall time: ModelMill = `modelmill serve` launched -> job seen succeeded (server start, upload,
validation, model load, tokenization, training, checkpoint, adapter, results file, polling);
baseline = process launched -> process exited. A second row leaves the server start out (a server
runs many jobs). Training-phase throughput, counted the same way on both sides: real tokens
(ModelMill: the job's trained_tokens; baseline: the tokenized examples' lengths; the notes say
whether they agree) / (end of the last optimizer step - trainer.train() called). ModelMill's two
marks are its "Training on ..." event and the last step's metrics event, read with full
precision from the job's store (the API rounds event times to seconds). The repeats interleave
the two sides. Targets: wall time <= 1.10x the baseline, training throughput >= 0.97x.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from training_common import (MODEL, QUICK_MODEL, QUICK_NOTE, alternating_runs, child_env, length_summary,  # noqa: E402
                             machine, missed_profile, modelmill_batching, plain_hyperparameters, publish, row,
                             run_plain, short_chat_rows, token_lengths, training_bench_parser, write_jsonl)

BENCH = "job_overhead"
TARGET_WALL = 1.10  # ModelMill wall time <= this x the plain script's
TARGET_THROUGHPUT = 0.97  # ModelMill training tokens/s >= this x the plain script's
TERMINAL = ("succeeded", "failed", "cancelled")


def run_service(model_name: str, model_dir: Path, train: Path, work: Path, hp: dict, seed: int,
                poll_seconds: float, threads: int, worker_process: bool = False) -> dict:
    """One job through a fresh `modelmill serve`; returns wall-clock marks and the job's phases."""
    from openai import OpenAI

    from modelmill.local_server import running_server

    home = work / "home"
    (home / "models").mkdir(parents=True)
    os.symlink(model_dir, home / "models" / model_name)  # converted once, outside the measurement
    launched = time.time()
    with open(work / "server.log", "w") as log, \
            running_server(home, env=child_env(threads), args=["--worker-process"] if worker_process else [],
                           log=log, log_level="warning") as server:
        up = time.time()
        client = OpenAI(base_url=server.base_url, api_key="bench", max_retries=0)
        file = client.files.create(file=("train.jsonl", train.read_bytes()), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(
            training_file=file.id, model=model_name, seed=seed,
            method={"type": "supervised", "supervised": {"hyperparameters": hp}})
        while job.status not in TERMINAL:
            time.sleep(poll_seconds)
            job = client.fine_tuning.jobs.retrieve(job.id)
        done = time.time()
        if job.status != "succeeded":
            raise RuntimeError(f"job {job.id} {job.status}: {job.error}")
    marks = job_marks(home / "modelmill.db", job.id)
    return {"launched": launched, "up": up, "done": done, "tokens": job.trained_tokens, **marks}


def job_marks(db: Path, job_id: str) -> dict:
    """Full-precision times of the job's phases from its store (read-only)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        created, started, finished = conn.execute(
            "SELECT created_at, started_at, finished_at FROM jobs WHERE id = ?", (job_id,)).fetchone()
        events = conn.execute("SELECT created_at, type, message FROM events WHERE job_id = ? ORDER BY seq",
                              (job_id,)).fetchall()
    finally:
        conn.close()

    def first(prefix: str) -> float:
        return next(t for t, _, m in events if m.startswith(prefix))

    metrics = [t for t, kind, _ in events if kind == "metrics"]
    return {"created": created, "claimed": first("Validating training file"), "started": started,
            "train_called": first("Training on "), "first_step_end": metrics[0], "last_step_end": metrics[-1],
            "finished": finished, "steps": len(metrics)}


def phases_modelmill(r: dict) -> dict[str, float]:
    return {"server start": r["up"] - r["launched"], "upload + create": r["created"] - r["up"],
            "queue pickup": r["claimed"] - r["created"], "validate + prepare": r["started"] - r["claimed"],
            "load model + tokenize + build trainer": r["train_called"] - r["started"],
            "training": r["last_step_end"] - r["train_called"],
            "checkpoint + adapter + results": r["finished"] - r["last_step_end"],
            "until the client saw it": r["done"] - r["finished"]}


def phases_plain(r: dict) -> dict[str, float]:
    return {"interpreter start": r["started"] - r["launched"],
            "imports + load model + dataset + build trainer": r["train_called"] - r["started"],
            "training": r["last_step_end"] - r["train_called"], "save adapter": r["finished"] - r["last_step_end"],
            "process exit": r["exited"] - r["finished"]}


def main() -> None:
    p = training_bench_parser(__doc__, quick_help="smoke run: modelmill-tiny, 12 examples, 1 repeat", repeats=2,
                              budget_s=270)
    p.add_argument("--examples", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--poll-seconds", type=float, default=0.5, help="how often the client polls the job")
    p.add_argument("--worker-process", action="store_true",
                   help="ModelMill side: `serve --worker-process` (the worker in a child process, not an API thread)")
    args = p.parse_args()
    if args.quick:
        args.repeats, args.examples = 1, 12

    from modelmill.ml import models, sft

    machine_line = machine()
    model = QUICK_MODEL if args.quick else MODEL
    model_dir = models.ensure_base(Path(args.home), model).resolve()
    work = Path(tempfile.mkdtemp(prefix="bench-job-overhead-"))
    train = write_jsonl(work / "train.jsonl", short_chat_rows(args.examples, seed=1))
    hp = {"n_epochs": 1, "batch_size": args.batch_size, "learning_rate_multiplier": 1.0}
    lengths = token_lengths(model_dir, train)
    defaults = sft.SFTConfig(base_dir=model_dir, train_path=train, valid_path=None, output_dir=work, **hp)
    padding_free, _ = modelmill_batching(model_dir, train, args.batch_size, args.seed)

    def one_run(side: str, rep: int) -> dict:
        out = work / f"{side}-{rep}"
        if side == "baseline":
            r = run_plain(model_dir, train, out, **plain_hyperparameters(hp), seed=args.seed,
                          lora_targets="all-linear", padding_free=padding_free,
                          activation_checkpointing=False, threads=args.threads)
            r["wall"], r["wall_no_start"] = r["exited"] - r["launched"], r["exited"] - r["launched"]
            r["phases"] = phases_plain(r)
        else:
            out.mkdir(parents=True)
            r = run_service(model, model_dir, train, out, hp, args.seed, args.poll_seconds, args.threads,
                            args.worker_process)
            r["wall"], r["wall_no_start"] = r["done"] - r["launched"], r["done"] - r["up"]
            r["phases"] = phases_modelmill(r)
        r["tokens_per_s"] = r["tokens"] / (r["last_step_end"] - r["train_called"])
        print(f"[{side} {rep}] wall {r['wall']:.1f} s, training {r['tokens_per_s']:.1f} tok/s, "
              f"{r['steps']} steps", flush=True)
        return r

    runs = alternating_runs(args.repeats, args.budget_s, one_run)

    base, mm = runs["baseline"], runs["modelmill"]
    rows = [
        row("SFT job wall time, server start included", "plain TRL script, process launch to exit", "s",
            [r["wall"] for r in base], [r["wall"] for r in mm], higher_is_better=False, target=1 / TARGET_WALL,
            target_text=f"<= {TARGET_WALL:.2f}x baseline (ratio >= {1 / TARGET_WALL:.3f})",
            ratio_meaning="baseline seconds / ModelMill seconds (> 1: ModelMill faster)"),
        row("SFT job wall time, server already running", "plain TRL script, process launch to exit", "s",
            [r["wall"] for r in base], [r["wall_no_start"] for r in mm], higher_is_better=False, target=None,
            target_text=None, ratio_meaning="baseline seconds / ModelMill seconds (files.create to succeeded)"),
        row("training-phase throughput", "plain TRL script, same settings", "tok/s",
            [r["tokens_per_s"] for r in base], [r["tokens_per_s"] for r in mm], higher_is_better=True,
            target=TARGET_THROUGHPUT, target_text=f">= {TARGET_THROUGHPUT}x",
            ratio_meaning="ModelMill tokens/s / baseline tokens/s (real tokens)"),
    ]
    tokens = sorted({(side, r["tokens"]) for side in runs for r in runs[side]})
    notes = [
        f"Model {model}; data: {length_summary(lengths)} (short reasoning-gym tasks); hyperparameters {hp}, "
        f"LoRA r={defaults.lora_r}, alpha={defaults.lora_alpha}, all-linear, "
        f"{'padding-free' if padding_free else 'padded'} batches (ModelMill's auto choice for this data, mirrored by "
        f"the plain script); seed {args.seed}; client polls every "
        f"{args.poll_seconds:g} s.",
        "Real tokens per run (side, tokens): " + ", ".join(f"{s} {t}" for s, t in tokens) + ".",
        f"torch threads per process: {args.threads or 'torch default (one per core)'}.",
        "ModelMill: `modelmill serve --worker-process` (training in a child process at nice 10)." if args.worker_process
        else "ModelMill: `modelmill serve` (its worker is a thread of the API process).",
        "Median seconds per phase, ModelMill: " + _phases(mm) + ".",
        "Median seconds per phase, plain script: " + _phases(base) + ".",
    ]
    if args.quick:
        notes.insert(0, QUICK_NOTE)
    profile = missed_profile(rows, f"Where the time goes (median seconds per phase): ModelMill {_phases(mm)}; "
                                   f"plain script {_phases(base)}.")
    return publish(args, BENCH, "Job overhead: an SFT job through the API vs a plain TRL script",
                   f"`python bench/bench_job_overhead.py` ({machine_line}; {len(mm)} interleaved repeats).",
                   machine_line, rows, notes, profile)


def _phases(runs: list[dict]) -> str:
    import statistics

    names = list(runs[0]["phases"])
    return ", ".join(f"{n} {statistics.median(r['phases'][n] for r in runs):.1f}" for n in names)


if __name__ == "__main__":
    main()
