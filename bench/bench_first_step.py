"""Time to first step (TTFS): from `client.fine_tuning.jobs.create` to the job's first metrics
event (step 1), against a plain TRL SFTTrainer script's time from process start to its first step.

    python bench/bench_first_step.py [--models modelmill-tiny,SmolLM2-135M-Instruct]
        [--repeats-tiny 3] [--repeats-smol 2] [--budget-s 900] [--json bench/out/first_step.json] [--quick]

ModelMill: a live `modelmill serve` (API + in-process worker) on a temporary MODELMILL_HOME whose
models/ links to the converted base models in --cache-home (converted there once, outside the
timing: the SmolLM2 target is "once its conversion is cached"), driven by the official openai SDK.
Per model, in this order on one server:
- "first job after server start": submitted as soon as the API answers (the worker's imports of
  torch / transformers / trl may still be running);
- `repeats` more jobs ("warm worker"), interleaved with the baseline runs;
- for modelmill-tiny, `repeats` jobs with a validation file as well (such a job gets automatic
  before/after evals, service/jobs/eval_reports.py), and `repeats` more asking for the base-model eval
  before training (metadata eval_base_first=true), to show what that order costs.
Each job trains 1 epoch of short chat examples (batch 4); once step 1 is seen it is cancelled and
the next job waits until it has stopped.

How TTFS is timed. t0 = time.time() just before jobs.create. The client then lists the job's
events every POLL_S (50 ms) and stops at the first metrics event with data.step == 1:
TTFS = the time.time() of that poll's reply - t0, i.e. what a user's client sees (it includes up
to POLL_S of polling delay plus one HTTP round trip). The wire `created_at` of an event is whole
seconds (OpenAI's format), too coarse, so a second figure comes from the store: the worker writes
each event's created_at as a float time.time() in the SQLite db (same machine, same clock), read
after the job: "stored" TTFS = that - t0. The stored timestamps of every event of the job also
give the phase breakdown (poll/claim, file validation, base model, trainer build, step 1).

Baseline: this file run with --baseline-child in a fresh process: imports, loads the same model
directory with transformers, reads the JSONL with datasets.load_dataset, builds TRL's SFTTrainer
(ModelMill's settings: LoRA r=8 all-linear, assistant-only loss, fp32, no activation checkpointing;
same data, batch 4) and trains; a callback prints time.time() at the first logged loss.
Baseline TTFS = that - the time.time() just before the process was started.
Ratio = baseline / ModelMill (>1: ModelMill reaches step 1 sooner). Targets (warm worker):
< 3 s for modelmill-tiny, < 15 s for SmolLM2-135M-Instruct. When a model misses its target and
py-spy is installed (pip install py-spy), one more job runs with py-spy sampling the server, and
the JSON "profile" says which phases the worker thread's samples fell in (PHASES).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
POLL_S = 0.05  # client-side polling interval of the events endpoint
BATCH_SIZE = 4
N_EXAMPLES = 40
TARGETS_S = {"modelmill-tiny": 3.0, "SmolLM2-135M-Instruct": 15.0}
JOB_TIMEOUT_S = 300.0
DONE = ("succeeded", "failed", "cancelled")


# ---------------------------------------------------------------- data


def chat_lines(n: int, seed: int) -> str:
    """Short chat examples (~30 tokens each), as tests/e2e use: steps are cheap, so the figure is overhead."""
    sys.path.insert(0, str(HERE.parent))  # tools/, when run as a script
    from tools.datasets import short_dataset

    return short_dataset(n, seed).decode()


# ---------------------------------------------------------------- the baseline (a fresh process)


def baseline_child(model_dir: str, train_path: str, out_dir: str) -> None:
    """A plain TRL script, as a user would write it; prints FIRST_STEP <unix time> at step 1's loss."""
    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    class FirstStep(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                print(f"FIRST_STEP {time.time():.6f}", flush=True)
                control.should_training_stop = True

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    dataset = load_dataset("json", data_files=train_path, split="train", cache_dir=str(Path(out_dir) / "cache"))
    # ModelMill's training settings (LoRA all-linear r=8, no activation checkpointing, fp32), so only the
    # overhead differs; everything else is TRL's default.
    args = SFTConfig(output_dir=out_dir, num_train_epochs=1, per_device_train_batch_size=BATCH_SIZE,
                     learning_rate=2e-4, logging_steps=1, save_strategy="no", report_to="none",
                     bf16=False, fp16=False, assistant_only_loss=True, max_length=1024, disable_tqdm=True,
                     activation_checkpointing=False)
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=LoraConfig(r=8, lora_alpha=16, target_modules="all-linear",
                                                task_type="CAUSAL_LM"),
                         callbacks=[FirstStep()])
    trainer.train()


def time_baseline(model_dir: Path, train_path: Path, work: Path) -> float:
    out = Path(tempfile.mkdtemp(prefix="baseline-", dir=work))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--baseline-child", str(model_dir), str(train_path),
           str(out)]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=JOB_TIMEOUT_S)
    shutil.rmtree(out, ignore_errors=True)
    for line in proc.stdout.splitlines():
        if line.startswith("FIRST_STEP "):
            return float(line.split()[1]) - t0
    raise RuntimeError(f"baseline run failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")


# ---------------------------------------------------------------- ModelMill (a live server)


class LiveServer:
    """`modelmill serve` on a temp home whose models/<name> link to already converted models."""

    def __init__(self, cache_home: Path, models: list[str], work: Path):
        from openai import OpenAI

        from modelmill.local_server import LocalServer

        self.home = Path(tempfile.mkdtemp(prefix="home-", dir=work))
        (self.home / "models").mkdir()
        for name in models:
            (self.home / "models" / name).symlink_to(cache_home / "models" / name)
        self.log = open(self.home / "server.log", "w")
        self.server = LocalServer(self.home, log=self.log)
        self.proc, self.base_url = self.server.proc, self.server.base_url
        self.client = OpenAI(base_url=self.base_url, api_key="bench", max_retries=0)

    def upload(self, text: str, name: str) -> str:
        return self.client.files.create(file=(name, text.encode()), purpose="fine-tune").id

    def stored_events(self, job_id: str) -> list[dict]:
        """Every event of the job with its float created_at, oldest first, straight from the db."""
        db = sqlite3.connect(f"file:{self.home / 'modelmill.db'}?mode=ro", uri=True, timeout=10)
        try:
            rows = db.execute("SELECT created_at, type, message, data FROM events WHERE job_id = ? ORDER BY seq",
                              (job_id,)).fetchall()
        finally:
            db.close()
        return [{"t": r[0], "type": r[1], "message": r[2], "data": json.loads(r[3]) if r[3] else {}} for r in rows]

    def stop(self) -> None:
        self.server.stop(timeout=60)
        self.log.close()
        shutil.rmtree(self.home, ignore_errors=True)


def time_job(server: LiveServer, model: str, train_id: str, valid_id: str | None = None,
             metadata: dict | None = None) -> dict:
    """Create one job, poll its events until step 1's metrics, cancel it; the timings of that run."""
    client = server.client
    t0 = time.time()
    job = client.fine_tuning.jobs.create(
        model=model, training_file=train_id, validation_file=valid_id, seed=0, metadata=metadata,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": BATCH_SIZE}}})
    create_s = time.time() - t0
    seen, polls = None, 0
    deadline = time.monotonic() + JOB_TIMEOUT_S
    def has_step1() -> bool:
        page = client.fine_tuning.jobs.list_events(job.id, limit=50)
        return any(e.type == "metrics" and (e.data or {}).get("step") == 1 for e in page.data)

    while seen is None:
        if has_step1():
            seen = time.time() - t0
            break
        polls += 1
        if polls % 20 == 0:  # about once a second: has the job ended without a step?
            status = client.fine_tuning.jobs.retrieve(job.id)
            if (status.status in DONE or time.monotonic() > deadline) and not has_step1():
                raise RuntimeError(f"job {job.id} is {status.status} and has no step 1: {status.error}")
        time.sleep(POLL_S)
    if client.fine_tuning.jobs.retrieve(job.id).status not in DONE:
        client.fine_tuning.jobs.cancel(job.id)
    while client.fine_tuning.jobs.retrieve(job.id).status not in DONE:
        if time.monotonic() > deadline:
            raise RuntimeError(f"job {job.id} did not stop after cancel")
        time.sleep(0.1)
    events = server.stored_events(job.id)
    step1 = next(e for e in events if e["type"] == "metrics" and e["data"].get("step") == 1)
    return {"job_id": job.id, "client_s": seen, "stored_s": step1["t"] - t0, "create_call_s": create_s,
            "phases": phases(events, t0)}


def phases(events: list[dict], t0: float) -> list[list]:
    """[seconds after t0, what] for each event up to step 1's metrics: where the time went."""
    out = []
    for e in events:
        what = f"metrics step {e['data'].get('step')}" if e["type"] == "metrics" else e["message"][:70]
        out.append([round(e["t"] - t0, 3), what])
        if e["type"] == "metrics":
            break
    return out


# ---------------------------------------------------------------- py-spy (when a target is missed)

# Where a worker-thread sample is attributed: the first of these functions found on its stack.
PHASES = (("validate the files", "_validate ("), ("load model + tokenizer", "load_model ("),
          ("tokenize the data", "_load_dataset ("), ("build the trainer", "_build_trainer ("),
          ("trainer's gc before step 1", "free_memory ("), ("training step", "training_step ("),
          ("store writes and stop polls", "add_event ("), ("store writes and stop polls", "record_step ("),
          ("store writes and stop polls", "requested_action ("),
          ("trainer.train(): other (setup, data, callbacks)", "_inner_training_loop ("),
          ("base eval", "before_training ("))


def pyspy_exe() -> str | None:
    found = shutil.which("py-spy") or Path(sys.executable).with_name("py-spy")
    return str(found) if found and Path(found).exists() else None


def profile_job(server: LiveServer, model: str, train_id: str) -> tuple[dict, str]:
    """One more warm job with py-spy sampling the server process (100 Hz, it is paused for each
    sample); the job's timings and where the worker thread's samples fell, as one line."""
    out = server.home / "pyspy.txt"
    spy = subprocess.Popen([pyspy_exe(), "record", "--pid", str(server.proc.pid), "--format", "raw", "--rate",
                            "100", "--output", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # attached
    try:
        run = time_job(server, model, train_id)
    finally:
        spy.send_signal(signal.SIGINT)  # py-spy writes its file on Ctrl-C
        spy.wait(timeout=60)
    counts: dict[str, int] = {}
    for line in out.read_text().splitlines() if out.exists() else []:
        stack, _, n = line.rpartition(" ")
        if "Worker.run_once (" not in stack:  # not the worker thread at work (API threads, idle polling)
            continue
        label = next((name for name, marker in PHASES if marker in stack), "other worker code")
        counts[label] = counts.get(label, 0) + int(n)
    total = sum(counts.values())
    if not total:
        return run, "py-spy recorded no worker samples"
    shares = ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))
    return run, (f"py-spy on one more warm {model} job (TTFS {run['client_s']:.2f} s under sampling; {total} "
                 f"worker-thread samples at 100 Hz, job claim to cancel): {shares}")


# ---------------------------------------------------------------- one model


def ensure_cached(cache_home: Path, model: str) -> tuple[Path, float]:
    """The converted model dir in cache_home (converted now if missing) and the seconds that took."""
    from modelmill.ml import models

    started = time.monotonic()
    path = models.ensure_base(cache_home, model)
    return path, time.monotonic() - started


def bench_model(model: str, repeats: int, with_validation: bool, args, work: Path, deadline: float) -> dict:
    model_dir, convert_s = ensure_cached(Path(args.cache_home), model)
    train_path = work / "train.jsonl"
    train_path.write_text(chat_lines(N_EXAMPLES, seed=0))
    server = LiveServer(Path(args.cache_home), [model], work)
    result = {"model": model, "convert_s": convert_s, "cold": None, "warm": [], "valid": [], "valid_first": [],
              "baseline": [], "skipped_for_budget": 0, "pyspy": None}
    try:
        train_id = server.upload(train_path.read_text(), "train.jsonl")
        valid_id = server.upload(chat_lines(12, seed=1), "valid.jsonl") if with_validation else None
        result["cold"] = time_job(server, model, train_id, None)
        _show(model, "first job", result["cold"])
        for i in range(repeats):
            if i > 0 and time.monotonic() > deadline:
                result["skipped_for_budget"] = repeats - i
                break
            result["warm"].append(time_job(server, model, train_id, None))
            _show(model, f"warm {i + 1}", result["warm"][-1])
            result["baseline"].append(time_baseline(model_dir, train_path, work))
            print(f"  {model} baseline {i + 1}: {result['baseline'][-1]:.2f} s", flush=True)
            if valid_id:
                result["valid"].append(time_job(server, model, train_id, valid_id))
                _show(model, f"with validation file {i + 1}", result["valid"][-1])
                result["valid_first"].append(time_job(server, model, train_id, valid_id, {"eval_base_first": "true"}))
                _show(model, f"with validation file, base eval first {i + 1}", result["valid_first"][-1])
        target = TARGETS_S.get(model)
        if target and result["warm"] and statistics.median(x["client_s"] for x in result["warm"]) >= target:
            if pyspy_exe():
                result["pyspy"] = profile_job(server, model, train_id)[1]
            else:
                result["pyspy"] = "py-spy is not installed (pip install py-spy) for a sampled profile"
    finally:
        server.stop()
    return result


def _show(model: str, label: str, run: dict) -> None:
    print(f"  {model} {label}: client {run['client_s']:.2f} s, stored {run['stored_s']:.2f} s", flush=True)


# ---------------------------------------------------------------- report


def build_rows(results: list[dict]) -> list[dict]:
    from training_common import row

    rows = []
    base_what = "plain TRL SFTTrainer script, process start to first logged loss"
    meaning = "baseline seconds / ModelMill seconds (>1: ModelMill reaches step 1 sooner)"

    def add(what: str, values: list[float], baseline: list[float], target: float | None) -> None:
        r = row(what, base_what, "s", baseline, values, higher_is_better=False, target=None,
                target_text=f"< {target:g} s" if target else None, ratio_meaning=meaning)
        r["met"] = bool(statistics.median(values) < target) if target else None  # an absolute target, not a ratio
        rows.append(r)

    for r in results:
        model, target = r["model"], TARGETS_S.get(r["model"])
        if not r["warm"] or not r["baseline"]:
            continue
        add(f"time to first step, {model}, warm worker", [x["client_s"] for x in r["warm"]], r["baseline"], target)
        add(f"time to first step, {model}, first job after server start", [r["cold"]["client_s"]], r["baseline"],
            None)
        if r["valid"]:
            add(f"time to first step, {model}, job with a validation file (base eval after training)",
                [x["client_s"] for x in r["valid"]], r["baseline"], target)
        if r["valid_first"]:
            add(f"time to first step, {model}, job with a validation file, base eval first (metadata "
                f"eval_base_first)", [x["client_s"] for x in r["valid_first"]], r["baseline"], None)
    return rows


def median_phases(runs: list[dict]) -> list[list]:
    """The phase list of the run whose TTFS is the median one."""
    ordered = sorted(runs, key=lambda x: x["client_s"])
    return ordered[len(ordered) // 2]["phases"] if ordered else []


def markdown(doc: dict, results: list[dict]) -> str:
    lines = [f"Measured {doc['date']} on {doc['machine']}, by `bench/bench_first_step.py`. "
             f"TTFS = from `jobs.create` (openai SDK, live `modelmill serve` with its in-process worker) to the "
             f"first metrics event (step 1) seen by the client polling the events endpoint every "
             f"{POLL_S * 1000:.0f} ms. Baseline: a fresh `python` process running a plain TRL SFTTrainer script "
             f"(same model dir, same {N_EXAMPLES} short chat examples, LoRA r=8, batch {BATCH_SIZE}), from process "
             f"start to its first logged loss.", "",
             "| what | baseline median s | ModelMill median s | ModelMill min-max s | repeats "
             "| baseline / ModelMill | target | met |",
             "|---|---:|---:|---:|---:|---:|---|---|"]
    for r in doc["rows"]:
        met = {True: "met", False: "missed", None: "-"}[r["met"]]
        lo, hi = r["modelmill_spread"]
        lines.append(f"| {r['what']} | {r['baseline_median']:.2f} | {r['modelmill_median']:.2f} | {lo:.2f}-{hi:.2f} "
                     f"| {r['repeats']} | {r['ratio']:.2f}x | {r['target'] or '-'} | {met} |")
    lines.append("")
    for r in results:
        if r["warm"]:
            ph = median_phases(r["warm"])
            lines.append(f"Where the time goes ({r['model']}, median warm job; seconds after jobs.create, from "
                         f"the stored event timestamps): " + "; ".join(f"{t:.2f} {w}" for t, w in ph) + ".")
            if r["pyspy"]:
                lines.append("")
                lines.append(r["pyspy"] + ".")
            lines.append("")
    lines += [f"- {n}" for n in doc["notes"]]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="modelmill-tiny,SmolLM2-135M-Instruct")
    p.add_argument("--repeats-tiny", type=int, default=3)
    p.add_argument("--repeats-smol", type=int, default=2)
    p.add_argument("--no-validation", action="store_true", help="skip the jobs with a validation file")
    p.add_argument("--budget-s", type=float, default=900.0,
                   help="stop starting new repeats (after the first) once this many seconds have passed")
    p.add_argument("--cache-home", default=os.environ.get("MODELMILL_HOME", str(Path.home() / ".modelmill")),
                   help="where base models are converted once (linked into the bench's temp homes)")
    p.add_argument("--json", help="also write the bench JSON here")
    p.add_argument("--quick", action="store_true", help="smoke run: modelmill-tiny, 1 repeat, no SmolLM2")
    p.add_argument("--no-markdown", action="store_true", help="do not rewrite BENCHMARKS.md")
    p.add_argument("--baseline-child", nargs=3, metavar=("MODEL_DIR", "TRAIN", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.baseline_child:
        return baseline_child(*args.baseline_child)

    sys.path.insert(0, str(HERE))
    from training_common import machine as machine_line
    from training_common import write_json, write_markdown

    machine = machine_line()
    load_at_start = os.getloadavg()[0]
    started = time.monotonic()
    deadline = started + args.budget_s
    models = ["modelmill-tiny"] if args.quick else [m for m in args.models.split(",") if m]
    work = Path(tempfile.mkdtemp(prefix="bench-first-step-"))
    results = []
    try:
        for model in models:
            repeats = 1 if args.quick else (args.repeats_tiny if model == "modelmill-tiny" else args.repeats_smol)
            with_valid = model == "modelmill-tiny" and not args.no_validation
            print(f"{model}: {repeats} repeats", flush=True)
            results.append(bench_model(model, repeats, with_valid, args, work, deadline))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    rows = build_rows(results)
    notes = [f"Client-observed TTFS includes up to {POLL_S * 1000:.0f} ms of polling delay; the stored timestamp "
             "(the worker's float time.time() of the step-1 event, read from the SQLite db) gives warm-worker "
             "medians of " + ", ".join(f"{r['model']} {statistics.median(x['stored_s'] for x in r['warm']):.2f} s"
                                       for r in results if r["warm"]) + ".",
             "A job with a validation file gets automatic before/after evals (service/jobs/eval_reports.py); by default its "
             "base-model eval runs after training, next to the final one (same result: the base model does not "
             "change). The 'base eval first' row is the old order, kept as metadata eval_base_first=true."]
    if load_at_start > (os.cpu_count() or 1):
        notes.insert(0, f"The load average at the start ({load_at_start:.1f}) was above the {os.cpu_count()} CPUs: "
                        "other work shared the machine, which slows every training step (both sides), so these "
                        "times are inflated and noisy.")
    for r in results:
        if r["convert_s"] > 5:
            notes.append(f"{r['model']} was converted into the cache first ({r['convert_s']:.0f} s, not timed).")
        if r["skipped_for_budget"]:
            notes.append(f"{r['model']}: {r['skipped_for_budget']} repeat(s) skipped to stay within --budget-s.")
    profile = None
    if any(r["met"] is False for r in rows):
        profile = " | ".join(
            f"{r['model']} (median warm job, s after jobs.create): "
            + "; ".join(f"{t:.2f} {w}" for t, w in median_phases(r["warm"]))
            + (f". {r['pyspy']}" if r["pyspy"] else "")
            for r in results if r["warm"])
    doc = write_json(None, "first_step", machine, rows, notes, profile)
    doc["runs"] = {r["model"]: {k: r[k] for k in ("convert_s", "cold", "warm", "valid", "valid_first", "baseline")}
                   for r in results}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    body = markdown(doc, results)
    print(body)
    write_markdown("bench_first_step", "Time to first step", body, quick=args.quick or args.no_markdown)
    print(f"total {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
