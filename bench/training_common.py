"""What the three training benches share (bench_job_overhead, bench_sft_efficiency, bench_memory):
the datasets they train on, running the plain TRL baseline script in its own process, a Reporter
that timestamps training, the one validation-loss function both sides are scored with, and the
rows of the Bench JSON contract (bench/README.md, "Bench JSON").

Scripts import it as `from training_common import ...` (they run as `python bench/x.py`).
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
PLAIN_SCRIPT = BENCH_DIR / "plain_trl_sft.py"
MODEL = "SmolLM2-135M-Instruct"
QUICK_MODEL = "modelmill-tiny"
# reasoning-gym tasks with short questions and answers (40-80 tokens with the chat template)
SHORT_TASKS = ("basic_arithmetic", "spell_backward", "letter_counting", "chain_sum")


# ---------------------------------------------------------------- data (reasoning-gym, installed offline)


def short_chat_rows(n: int, seed: int) -> list[dict]:
    """n short chat examples (one user question, one assistant answer) from reasoning-gym's short tasks."""
    import reasoning_gym

    rng = random.Random(seed)
    rows = []
    for i in range(n):
        item = reasoning_gym.create_dataset(rng.choice(SHORT_TASKS), size=1, seed=seed * 100_003 + i)[0]
        rows.append(_chat(item))
    return rows


def skewed_chat_rows(n: int, seed: int, median_words: float = 6.0, sigma: float = 1.2,
                     max_words: int = 250) -> list[dict]:
    """n chat examples with a long-tailed (log-normal) length distribution.

    Each example draws a size w from a log-normal (median `median_words`, shape `sigma`). w < 5
    gives a short reasoning-gym task (arithmetic, spelling, counting: 40-80 tokens); otherwise a
    reasoning-gym word-sorting task over w words (capped at max_words), whose question and answer
    both grow with w (about 130 tokens at 6 words, ~950 at 250). Real chat data looks like this:
    most examples short, a few very long.
    """
    import reasoning_gym

    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = round(math.exp(rng.gauss(math.log(median_words), sigma)))
        item_seed = seed * 100_003 + i
        if words < 5:
            item = reasoning_gym.create_dataset(rng.choice(SHORT_TASKS), size=1, seed=item_seed)[0]
        else:
            words = min(words, max_words)
            item = reasoning_gym.create_dataset("word_sorting", size=1, seed=item_seed,
                                                min_words=words, max_words=words)[0]
        rows.append(_chat(item))
    return rows


def _chat(item: dict) -> dict:
    return {"messages": [{"role": "user", "content": item["question"]},
                         {"role": "assistant", "content": str(item["answer"])}]}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def token_lengths(model_dir: Path, path: Path) -> list[int]:
    """Tokens per example as ModelMill renders them (the same chat template the plain script uses)."""
    from modelmill.ml import data, models, sft

    tokenizer = models.load_model(model_dir)[1]
    return [len(sft.tokenize_example(tokenizer, ex, 10**9).input_ids)
            for ex in data.read_examples(path, "supervised", min_examples=1)]


def modelmill_batching(model_dir: Path, train: Path, batch_size: int, seed: int = 0) -> tuple[bool, float]:
    """(padding-free?, estimated padding-free / padded compute) as train_sft's auto batching decides them
    for this file, so the plain script can mirror the choice."""
    from modelmill.ml import data, models, sft

    model, tokenizer = models.load_model(model_dir)
    config = sft.SFTConfig(base_dir=model_dir, train_path=train, valid_path=None, output_dir=train.parent,
                           n_epochs=1, batch_size=batch_size, learning_rate_multiplier=1.0, seed=seed)
    lengths = [len(sft.tokenize_example(tokenizer, ex, config.max_seq_len).input_ids)
               for ex in data.read_examples(train, "supervised", min_examples=1)]
    context = sft.attention_context(model)
    return (sft.use_padding_free(config, lengths, context),
            sft.padding_free_cost_ratio(lengths, batch_size, context, seed))


def length_summary(lengths: list[int]) -> str:
    s = sorted(lengths)
    return (f"{len(s)} examples, tokens per example: median {statistics.median(s):.0f}, "
            f"mean {statistics.mean(s):.0f}, p90 {s[int(0.9 * (len(s) - 1))]}, max {s[-1]}")


# ---------------------------------------------------------------- the two sides


def peak_rss_mb(field: str = "VmHWM") -> float:
    """This process's peak resident set (MiB) since it started its program: VmHWM of /proc/self/status
    (field="VmRSS": the resident set now).

    Not ru_maxrss: a child started by fork/vfork + exec inherits its parent's peak there (the kernel
    folds the pre-exec memory map's high-water mark into it), so a child of a parent that had loaded a
    model would report the parent's peak. VmHWM belongs to the memory map the program itself built."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"no {field} in /proc/self/status")


def training_bench_parser(doc: str, *, quick_help: str, repeats: int, budget_s: float,
                          repeats_help: str | None = None, hidden: tuple[str, ...] = ()):
    """The argparse parser the training benches share (bench_job_overhead, bench_sft_efficiency,
    bench_memory): --json, --quick, --repeats, --budget-s, --seed, --threads and --home; with `hidden`,
    also --child and those internal flags (the bench re-runs itself as a child process). Each bench
    adds its own arguments to the parser it gets back."""
    import argparse

    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", help="also write the Bench JSON here")
    p.add_argument("--quick", action="store_true", help=quick_help)
    p.add_argument("--repeats", type=int, default=repeats, help=repeats_help)
    p.add_argument("--budget-s", type=float, default=budget_s,
                   help="seconds: start no repeat (after the first) that would end past this "
                        "(bench/run_all.py passes its own, below its time limit for the script)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads of every training process, both sides (OMP_NUM_THREADS); 0 = torch's "
                        "default (one per core). Use 1 on a machine other work shares")
    p.add_argument("--home", default=os.environ.get("MODELMILL_HOME", str(Path.home() / ".modelmill")))
    if hidden:
        p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
        for flag in hidden:
            p.add_argument(flag, help=argparse.SUPPRESS)
    return p


def serving_bench_parser(doc: str, *, repeats_help: str, max_tokens_help: str, home_help: str | None = None):
    """The argparse parser the serving benches share (bench_batches, bench_serving, bench_structured):
    --quick, --json, --repeats, --max-tokens, --no-write and --home. --repeats and --max-tokens have no
    argparse default: each bench picks its own, by --quick. Each bench adds its own arguments."""
    import argparse

    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="modelmill-tiny, tiny budgets: a smoke run in seconds")
    p.add_argument("--json", help="also write the Bench JSON (bench/README.md) here")
    p.add_argument("--repeats", type=int, help=repeats_help)
    p.add_argument("--max-tokens", type=int, help=max_tokens_help)
    p.add_argument("--no-write", action="store_true", help="do not rewrite BENCHMARKS.md")
    p.add_argument("--home", default=os.environ.get("MODELMILL_HOME", str(Path.home() / ".modelmill")), help=home_help)
    return p


def parse_args_or_run_child(p, child):
    """p.parse_args(); with --child, run child(args), print its JSON report (the last line, which
    run_child reads) and return None: the caller returns too."""
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return None
    return args


def child_env(threads: int) -> dict:
    """The environment of every process a bench starts (both sides alike): OMP_NUM_THREADS=threads
    (torch's CPU threads) when threads > 0, else torch's own default (one per core). On a machine
    other work shares, 1 thread is far steadier: OpenMP threads stall waiting for each other."""
    return dict(os.environ, OMP_NUM_THREADS=str(threads)) if threads > 0 else dict(os.environ)


def run_plain(model_dir: Path, train: Path, out: Path, *, epochs: int, batch_size: int, lr: float, seed: int,
              lora_targets: str, padding_free: bool, activation_checkpointing: bool, threads: int = 0) -> dict:
    """Run bench/plain_trl_sft.py as its own process (child_env(threads)); return its report (peak_rss_mb
    included) plus `launched` (just before the process started) and `exited`."""
    report = out / "report.json"
    cmd = [sys.executable, str(PLAIN_SCRIPT), "--model-dir", str(model_dir), "--train", str(train), "--out", str(out),
           "--epochs", str(epochs), "--batch-size", str(batch_size), "--lr", repr(lr), "--seed", str(seed),
           "--lora-targets", lora_targets, "--report", str(report)]
    cmd += ["--padding-free"] if padding_free else []
    cmd += [] if activation_checkpointing else ["--no-activation-checkpointing"]
    out.mkdir(parents=True, exist_ok=True)
    launched = time.time()
    code = run_logged(cmd, out / "log.txt", threads)
    if code != 0:
        raise RuntimeError(f"plain TRL script failed (exit {code}); see {out / 'log.txt'}")
    return {**json.loads(report.read_text()), "launched": launched, "exited": time.time()}


def run_child(cmd: list[str], log: Path, threads: int = 0) -> dict:
    """Run a bench's own --child mode (output to `log`, child_env(threads)); return the JSON object it
    printed last."""
    code = run_logged(cmd, log, threads)
    if code != 0:
        raise RuntimeError(f"ModelMill child failed (exit {code}); see {log}")
    return json.loads(log.read_text().strip().splitlines()[-1])


def run_logged(cmd: list[str], log: Path, threads: int = 0) -> int:
    with open(log, "w") as f:
        return subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=child_env(threads)).returncode


class TimedReporter:
    """A Reporter for ml.train_sft that timestamps training with time.time():
    `train_called` = the "Training on ..." event (sent just before trainer.train()); `step_ends` = each
    on_step call: one per optimizer step, sent as the next step begins or, for an epoch's last step,
    as the epoch ends (the same moments as the API's metrics events, which bench_job_overhead
    reads); `rss_at_train_mb` = the resident set at train_called (model loaded, data tokenized,
    trainer built). Records nothing else."""

    def __init__(self):
        self.train_called: float | None = None
        self.rss_at_train_mb: float | None = None
        self.step_ends: list[float] = []
        self.events: list[tuple[str, str]] = []

    def on_event(self, level, message, data=None):
        if message.startswith("Training on "):
            self.train_called = time.time()
            self.rss_at_train_mb = peak_rss_mb("VmRSS")
        self.events.append((level, message))

    def on_step(self, step, total_steps, metrics):
        self.step_ends.append(time.time())

    def on_checkpoint(self, step, path, metrics):
        pass

    def should_stop(self):
        return None


def valid_loss(model_dir: Path, adapter_dir: Path, valid_path: Path, batch_size: int = 8) -> float:
    """Mean cross-entropy per assistant target token of base + adapter on valid_path.

    Both sides are scored by this one function, whatever collator they trained with: ModelMill's
    tokenization (assistant tokens labelled, everything else -100), batches padded to the longest,
    the summed token losses divided by the number of target tokens.
    """
    import torch

    from modelmill.ml import data, models, sft

    model, tokenizer = models.load_model(model_dir, adapter_dir)
    rows = [sft.tokenize_example(tokenizer, ex, 1024) for ex in data.read_examples(valid_path, "supervised",
                                                                                      min_examples=1)]
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            width = max(len(r.input_ids) for r in chunk)
            ids_B_T = torch.tensor([r.input_ids + [tokenizer.pad_token_id] * (width - len(r.input_ids)) for r in chunk])
            labels_B_T = torch.tensor([r.labels + [-100] * (width - len(r.labels)) for r in chunk])
            mask_B_T = torch.tensor([[1] * len(r.input_ids) + [0] * (width - len(r.input_ids)) for r in chunk])
            logits_B_T_V = model(input_ids=ids_B_T, attention_mask=mask_B_T, use_cache=False).logits
            targets_B_T = labels_B_T[:, 1:]
            nll = torch.nn.functional.cross_entropy(logits_B_T_V[:, :-1].reshape(-1, logits_B_T_V.size(-1)),
                                                    targets_B_T.reshape(-1), ignore_index=-100, reduction="sum")
            total += float(nll)
            count += int((targets_B_T != -100).sum())
    return total / count


def timed_repeats(repeats: int, budget_s: float | None):
    """range(repeats), except that after the first repeat it stops once another one as long as the
    longest so far would end past budget_s seconds from the start (None = no budget)."""
    started, longest = time.monotonic(), 0.0
    for rep in range(repeats):
        if rep and budget_s and time.monotonic() - started + longest > budget_s:
            print(f"stopping after {rep} repeat(s): another would end past --budget-s {budget_s:g}", flush=True)
            return
        begun = time.monotonic()
        yield rep
        longest = max(longest, time.monotonic() - begun)


def alternating_runs(repeats: int, budget_s: float | None, run_side) -> dict[str, list[dict]]:
    """run_side(side, rep) -> one run's figures, for both sides ("baseline", "modelmill") of every repeat
    that timed_repeats allows: the baseline first on even repeats, ModelMill first on odd ones, so neither
    side always runs on the warmer (or the busier) machine."""
    runs: dict[str, list[dict]] = {"baseline": [], "modelmill": []}
    for rep in timed_repeats(repeats, budget_s):
        for side in (("baseline", "modelmill") if rep % 2 == 0 else ("modelmill", "baseline")):
            runs[side].append(run_side(side, rep))
    return runs


QUICK_NOTE = "--quick smoke run on modelmill-tiny: checks the code path; its figures mean nothing."


def missed_profile(rows: list[dict], detail: str) -> str | None:
    """The Bench JSON's profile when a row missed its target: which ones, then `detail` (where the time
    went); None when every target was met."""
    missed = [r["what"] for r in rows if r["met"] is False]
    return f"Missed: {', '.join(missed)}. {detail}" if missed else None


def plain_hyperparameters(hp: dict) -> dict:
    """run_plain's epochs, batch_size and lr for ModelMill's resolved SFT hyperparameters `hp` (its learning
    rate is sft.BASE_LEARNING_RATE times the multiplier)."""
    from modelmill.ml import sft

    return {"epochs": hp["n_epochs"], "batch_size": hp["batch_size"],
            "lr": sft.BASE_LEARNING_RATE * hp["learning_rate_multiplier"]}


# ---------------------------------------------------------------- Bench JSON (bench/README.md)


def machine() -> str:
    import torch

    load = os.getloadavg()[0]
    return (f"{platform.machine()} {os.cpu_count()} CPUs, {platform.python_implementation()} "
            f"{platform.python_version()}, torch {torch.__version__} (float32), load average {load:.1f} at start")


def row(what: str, baseline: str, unit: str, baseline_values: list[float], modelmill_values: list[float], *,
        higher_is_better: bool, target: float | None, target_text: str | None, ratio_meaning: str) -> dict:
    """One row of the Bench JSON. ratio is always "> 1 = ModelMill better": ModelMill / baseline for
    rates, baseline / ModelMill for times and sizes. `target` is the ratio the row must reach."""
    b, m = statistics.median(baseline_values), statistics.median(modelmill_values)
    ratio = (m / b) if higher_is_better else (b / m)
    return {"what": what, "baseline": baseline, "unit": unit,
            "baseline_median": b, "modelmill_median": m,
            "baseline_spread": [min(baseline_values), max(baseline_values)],
            "modelmill_spread": [min(modelmill_values), max(modelmill_values)],
            "repeats": min(len(baseline_values), len(modelmill_values)),
            "ratio": ratio, "ratio_meaning": ratio_meaning, "target": target_text,
            "met": None if target is None else bool(ratio >= target)}


def write_json(path: str | None, bench: str, machine_line: str, rows: list[dict], notes: list[str],
               profile: str | None) -> dict:
    doc = {"bench": bench, "machine": machine_line, "date": datetime.date.today().isoformat(), "rows": rows,
           "notes": notes, "profile": profile}
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(doc, indent=2) + "\n")
    return doc


def publish(args, bench: str, title: str, intro: str, machine_line: str, rows: list[dict], notes: list[str],
            profile: str | None) -> dict:
    """A training bench's results: the Bench JSON (to --json), and its BENCHMARKS.md section (printed, and
    written unless --quick): `intro`, the rows' table, the notes and the profile. Returns the JSON."""
    doc = write_json(args.json, bench, machine_line, rows, notes, profile)
    body = "\n".join([intro, "", rows_table(rows), "", *[f"- {n}" for n in notes]]
                     + ([f"- Profile: {profile}"] if profile else []))
    print(body)
    write_markdown(f"bench_{bench}", title, body, args.quick)
    return doc


def rows_table(rows: list[dict]) -> str:
    """The rows as a markdown table (for each bench's BENCHMARKS.md section)."""
    lines = ["| what | unit | baseline (median, min-max) | ModelMill (median, min-max) | ratio | target | met |",
             "|---|---|---:|---:|---:|---|---|"]
    for r in rows:
        met = {True: "met", False: "**missed**", None: "-"}[r["met"]]
        lines.append(f"| {r['what']} | {r['unit']} | {_fmt(r['baseline_median'])} ({_fmt(r['baseline_spread'][0])}-"
                     f"{_fmt(r['baseline_spread'][1])}) | {_fmt(r['modelmill_median'])} "
                     f"({_fmt(r['modelmill_spread'][0])}-{_fmt(r['modelmill_spread'][1])}) | {r['ratio']:.2f}x | "
                     f"{r['target'] or '-'} | {met} |")
    return "\n".join(lines)


def _fmt(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.1f}" if abs(x) >= 10 else f"{x:.3f}"


def write_markdown(key: str, title: str, body: str, quick: bool) -> None:
    """The bench's BENCHMARKS.md section; a --quick smoke run never overwrites measured figures."""
    if quick:
        return
    sys.path.insert(0, str(BENCH_DIR))
    from benchmarks_md import write_section

    write_section(key, title, body)
