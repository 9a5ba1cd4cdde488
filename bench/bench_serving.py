"""Chat-completion serving: a fine-tuned LoRA model through ModelMill's HTTP API, adapter switching,
and 8 concurrent requests (batched by ml/batching.py) against the same 8 sent one after another.

    python bench/bench_serving.py [--quick] [--json PATH] [--repeats 3] [--max-tokens 64] [--no-write]

Every ModelMill figure goes through the real HTTP server: a `modelmill serve --no-worker` subprocess
on 127.0.0.1 with its own temporary MODELMILL_HOME, called with httpx (`POST /v1/chat/completions`,
temperature 0, a fixed max_tokens, prompts that ask for long stories so every answer uses its whole
budget). Two fine-tuned models are made the way the platform makes them: a job is created through
the API, and the bench, standing in for the worker, claims it, saves a LoRA adapter (r=8 on every
linear layer, the platform's LoraConfig, lora_B drawn at random so the adapter changes the model)
with checkpoints.save_adapter_atomically, records its manifest (service/models/adapters.py) and
finishes the job as succeeded. The server then resolves and loads `ft:...` like any other.

Rows (the Bench JSON contract of bench/README.md):
(a) latency and tokens/s of one chat completion with fine-tuned model A, against the base model
    run by plain transformers generate() in a process of its own (greedy, same prompt, same
    budget; no HTTP, no LoRA): the cost of everything ModelMill adds around generate().
(b) adapter switching: requests alternating between models A and B against requests to A only
    (one at a time, both adapters already loaded); the first request to B (load + merge) against a
    warm request; and 8 concurrent requests split 4 + 4 over A and B against 8 concurrent requests
    to A (both adapters are loaded onto one base and decode in one mixed-adapter batch,
    ml/multi_lora.py). Target >= 0.9x.
(c) throughput (completion tokens / wall second) of 8 concurrent requests against the same 8 sent
    one after another. Target >= 3x.
Batch sizes are read from the server's debug log (ml.batching logs every batched generate()).
When a target is missed, "profile" holds a torch.profiler summary of the same 8-request batch run
in this process through ml.sampling.Sampler.

--quick runs the same code with modelmill-tiny and tiny budgets in seconds (for tests); it never
writes BENCHMARKS.md. --only-concurrency measures the (c) rows alone (with the 4 + 4 row of (b)).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from training_common import machine, row, rows_table, serving_bench_parser, write_json, write_markdown  # noqa: E402

MODEL, QUICK_MODEL = "SmolLM2-135M-Instruct", "modelmill-tiny"
TARGET_CONCURRENT = 3.0
TARGET_MIXED = 0.9  # 4 + 4 over two adapters against 8 to one adapter
CONCURRENT = 8
TOPICS = ["a dragon who learns to bake bread", "a lighthouse keeper and a lost whale", "a robot that paints the sea",
          "two rival chess clubs in a small town", "a city where it never stops raining",
          "a cat who runs a train station", "the last bookshop on the moon", "a gardener who grows clocks"]
PROMPTS = [f"Write a long, detailed story about {t}." for t in TOPICS]
BATCH_LOG = re.compile(r"modelmill\.ml\.batching: decoded (\d+) requests, (\d+) rows")


def main() -> None:
    p = serving_bench_parser(__doc__, repeats_help="repeats of each measurement (default 3; --quick 1)",
                             max_tokens_help="completion budget of every request (default 64; --quick 8)",
                             home_help="where the base model is converted once (the server gets its own temporary home)")
    p.add_argument("--only-concurrency", action="store_true",
                   help="only the concurrent rows (8 to one adapter, 4 + 4 over two, 8 one after another)")
    p.add_argument("--plain-baseline", help=argparse.SUPPRESS)  # internal: run the (a) baseline, print JSON
    args = p.parse_args()
    if args.plain_baseline:
        spec = json.loads(args.plain_baseline)
        print(json.dumps(_plain_generate(Path(spec["base_dir"]), spec["prompt"], spec["max_tokens"], spec["repeats"])))
        return
    model = QUICK_MODEL if args.quick else MODEL
    repeats = args.repeats or (1 if args.quick else 3)
    max_tokens = args.max_tokens or (8 if args.quick else 64)
    machine_line = machine()
    started = time.perf_counter()

    from modelmill.local_server import running_server
    from modelmill.ml import models

    base_dir = models.ensure_base(Path(args.home), model)
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        home = Path(tmp) / "home"
        (home / "models").mkdir(parents=True)
        (home / "models" / model).symlink_to(base_dir, target_is_directory=True)  # no second conversion
        log_path = Path(tmp) / "server.log"
        with running_server(home, worker=False, log=log_path, log_level="debug") as server, \
                httpx.Client(base_url=server.base_url, timeout=900,
                             limits=httpx.Limits(max_connections=2 * CONCURRENT)) as http:
            ft_a, ft_b = make_fine_tuned_models(http, home, base_dir, model)
            bench = Bench(http, max_tokens, repeats)
            rows, notes = bench.run_all(ft_a, ft_b, base_dir, only_concurrency=args.only_concurrency)
        batches = [(int(r), int(n)) for r, n in BATCH_LOG.findall(log_path.read_text())]
    notes = [
        f"{model}, float32, temperature 0, max_tokens {max_tokens}, {repeats} repeats; medians with min-max. "
        "ModelMill figures are measured through the HTTP API of a live `modelmill serve --no-worker` "
        "(httpx client in this process); the baseline of (a) is plain transformers generate() in a process of its own.",
        *notes,
        f"Batched generate() calls the server logged (requests, rows): {summarise_batches(batches)}.",
        f"Whole bench: {time.perf_counter() - started:.0f} s. The machine may have been shared with other work "
        "while it ran (see the load average in 'machine').",
    ]
    missed = [r for r in rows if r["target"] is not None and not r["met"]]
    profile = profile_batch(base_dir, model, max_tokens) if missed else None
    doc = write_json(args.json, "serving", machine_line, rows, notes, profile)
    body = "\n".join([f"`python bench/bench_serving.py`, {machine_line}.", "", rows_table(rows), "",
                      *[f"- {n}" for n in notes]] + ([f"\nProfile (target missed):\n\n```\n{profile}\n```"]
                                                      if profile else []))
    print(body)
    if not args.no_write and not args.only_concurrency:
        write_markdown("bench_serving", "Serving (chat completions)", body, args.quick)
    if args.json:
        print(f"wrote {args.json} ({len(doc['rows'])} rows)")


# ---------------------------------------------------------------------------------------------
# Server and fine-tuned models


def make_fine_tuned_models(http: httpx.Client, home: Path, base_dir: Path, model: str) -> tuple[str, str]:
    """Two ft: models, created through the API and finished the way the worker finishes a job."""
    from modelmill.ml import checkpoints, models
    from modelmill.service.models import adapters
    from modelmill.service.store import open_store
    from modelmill.settings import Settings

    lines = [json.dumps({"messages": [{"role": "user", "content": f"Say {i}."},
                                      {"role": "assistant", "content": str(i)}]}) for i in range(10)]
    upload = http.post("/files", files={"file": ("train.jsonl", "\n".join(lines) + "\n")},
                       data={"purpose": "fine-tune"})
    upload.raise_for_status()
    settings = Settings(home=home)
    store = open_store(settings)
    queue = store.job_queue(lease_seconds=600)
    names = []
    try:
        for seed, suffix in ((1, "bench-a"), (2, "bench-b")):
            job = http.post("/fine_tuning/jobs", json={"model": model, "training_file": upload.json()["id"],
                                                       "suffix": suffix})
            job.raise_for_status()
            job_id = job.json()["id"]
            lease = queue.claim("bench-serving")
            assert lease is not None and lease.id == job_id, "another job was runnable"
            adapter_dir = write_adapter(base_dir, settings.jobs_dir / job_id, seed, models, checkpoints)
            adapters.record(store, job_id, adapter_dir)
            ft_name = store.jobs.get(job_id).ft_name
            queue.finish(lease, "succeeded", fine_tuned_model=ft_name, adapter_dir=str(adapter_dir),
                         trained_tokens=0, result_files=[], message="Adapter written by bench_serving.py")
            names.append(ft_name)
    finally:
        store.close()
    return names[0], names[1]


def write_adapter(base_dir: Path, job_dir: Path, seed: int, models, checkpoints) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model

    model, _ = models.load_model(base_dir)
    config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", bias="none",
                        task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # lora_B starts at zero (a no-op adapter); make it change the model a little
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.01)
    job_dir.mkdir(parents=True, exist_ok=True)
    return checkpoints.save_adapter_atomically(peft_model, job_dir)


# ---------------------------------------------------------------------------------------------
# Measurements


class Bench:
    def __init__(self, http: httpx.Client, max_tokens: int, repeats: int):
        self.http, self.max_tokens, self.repeats = http, max_tokens, repeats

    def chat(self, model: str, prompt: str) -> tuple[float, int]:
        """(seconds, completion tokens) of one chat completion."""
        t0 = time.perf_counter()
        r = self.http.post("/chat/completions", json={
            "model": model, "messages": [{"role": "user", "content": prompt}], "temperature": 0,
            "max_tokens": self.max_tokens})
        elapsed = time.perf_counter() - t0
        r.raise_for_status()
        return elapsed, r.json()["usage"]["completion_tokens"]

    def concurrent(self, calls: list[tuple[str, str]]) -> tuple[float, int, list[float]]:
        """Send every (model, prompt) at once: (wall seconds, completion tokens, per-request seconds)."""
        t0 = time.perf_counter()
        with ThreadPoolExecutor(len(calls)) as pool:
            out = list(pool.map(lambda c: self.chat(*c), calls))
        return time.perf_counter() - t0, sum(n for _, n in out), [s for s, _ in out]

    def run_all(self, ft_a: str, ft_b: str, base_dir: Path, only_concurrency: bool = False
                ) -> tuple[list[dict], list[str]]:
        rows, notes = [], []
        self.chat(ft_a, PROMPTS[0])  # load A (and warm up) before anything is timed
        first_b, _ = self.chat(ft_b, PROMPTS[0])  # first request to B: load + merge
        if only_concurrency:
            return self.concurrency(ft_a, ft_b, notes), notes
        rows += self.single_request(ft_a, base_dir, notes)
        rows += self.switching(ft_a, ft_b, first_b)
        rows += self.concurrency(ft_a, ft_b, notes)
        return rows, notes

    def single_request(self, ft_a: str, base_dir: Path, notes: list[str]) -> list[dict]:
        mm = [self.chat(ft_a, PROMPTS[0]) for _ in range(self.repeats)]
        plain = plain_generate(base_dir, PROMPTS[0], self.max_tokens, self.repeats)
        notes.append(f"(a) completion tokens per request: ModelMill {sorted({n for _, n in mm})}, plain transformers "
                     f"{sorted({n for _, n in plain})} (greedy, budget {self.max_tokens}).")
        what = "one chat completion, fine-tuned LoRA model via HTTP"
        baseline = "base model, plain transformers generate() (own process)"
        return [
            row(f"{what}: latency", baseline, "s", [s for s, _ in plain], [s for s, _ in mm], higher_is_better=False,
                target=None, target_text=None, ratio_meaning="plain generate() latency / ModelMill latency"),
            row(f"{what}: tokens/s", baseline, "tok/s", [n / s for s, n in plain], [n / s for s, n in mm],
                higher_is_better=True, target=None, target_text=None,
                ratio_meaning="ModelMill tokens/s / plain generate() tokens/s"),
        ]

    def switching(self, ft_a: str, ft_b: str, first_b: float) -> list[dict]:
        same, alternating = [], []
        for _ in range(self.repeats):
            same += [self.chat(ft_a, PROMPTS[i % 2])[0] for i in range(4)]
            alternating += [self.chat((ft_a, ft_b)[i % 2], PROMPTS[i % 2])[0] for i in range(4)]
        return [
            row("adapter switching: requests alternating between two fine-tuned models, one at a time",
                "requests to one fine-tuned model", "s", same, alternating, higher_is_better=False, target=None,
                target_text=None, ratio_meaning="same-adapter latency / alternating latency (1.0 = switching is free)"),
            row("adapter switching: first request to a fine-tuned model not loaded yet (load + merge)",
                "a request to a loaded fine-tuned model", "s", same, [first_b], higher_is_better=False, target=None,
                target_text=None, ratio_meaning="warm latency / first-request latency"),
        ]

    def concurrency(self, ft_a: str, ft_b: str, notes: list[str]) -> list[dict]:
        one_model = [(ft_a, p) for p in PROMPTS[:CONCURRENT]]
        two_models = [((ft_a, ft_b)[i % 2], p) for i, p in enumerate(PROMPTS[:CONCURRENT])]
        seq_tps, con_tps, two_tps, latencies = [], [], [], []
        for _ in range(self.repeats):
            t0 = time.perf_counter()
            tokens = sum(self.chat(m, p)[1] for m, p in one_model)
            seq_tps.append(tokens / (time.perf_counter() - t0))
            wall, tokens, each = self.concurrent(one_model)
            con_tps.append(tokens / wall)
            latencies += each
            wall, tokens, _ = self.concurrent(two_models)
            two_tps.append(tokens / wall)
        notes.append(f"(c) per-request latency with {CONCURRENT} concurrent requests: median "
                     f"{statistics.median(latencies):.2f} s (min {min(latencies):.2f}, max {max(latencies):.2f}).")
        return [
            row(f"{CONCURRENT} concurrent chat completions (one fine-tuned model): throughput",
                f"the same {CONCURRENT} sent one after another", "tok/s", seq_tps, con_tps, higher_is_better=True,
                target=TARGET_CONCURRENT, target_text=f">= {TARGET_CONCURRENT:g}x",
                ratio_meaning="concurrent tokens/s / sequential tokens/s"),
            row(f"{CONCURRENT} concurrent chat completions split 4 + 4 over two fine-tuned models: throughput",
                f"{CONCURRENT} concurrent to one fine-tuned model", "tok/s", con_tps, two_tps, higher_is_better=True,
                target=TARGET_MIXED, target_text=f">= {TARGET_MIXED:g}x",
                ratio_meaning="two-adapter tokens/s / one-adapter tokens/s (one mixed-adapter batch)"),
        ]


def plain_generate(base_dir: Path, prompt: str, max_tokens: int, repeats: int) -> list[tuple[float, int]]:
    """The baseline, in its own process as the server is (a fresh process, no other torch work in
    it): (seconds, completion tokens) of each repeat."""
    out = subprocess.run([sys.executable, __file__, "--plain-baseline", json.dumps(
        {"base_dir": str(base_dir), "prompt": prompt, "max_tokens": max_tokens, "repeats": repeats})],
        check=True, capture_output=True, text=True)
    return [tuple(x) for x in json.loads(out.stdout.strip().splitlines()[-1])]


def _plain_generate(base_dir: Path, prompt: str, max_tokens: int, repeats: int) -> list[tuple[float, int]]:
    """The base model with transformers alone, greedy, the same rendered prompt and budget."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                         tokenize=False)
    enc = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    eos = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")]

    def once() -> tuple[float, int]:
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=max_tokens, do_sample=False, eos_token_id=eos,
                                 pad_token_id=tokenizer.pad_token_id)
        return time.perf_counter() - t0, int(out.shape[1] - enc["input_ids"].shape[1])

    # Off the main thread, as a server runs it (ModelMill decodes on its batcher thread): on a busy
    # CPU, torch's small ops in the main thread can be many times slower than in a worker thread.
    out: list[tuple[float, int]] = []
    worker = threading.Thread(target=lambda: out.extend(once() for _ in range(repeats + 1)))
    worker.start()
    worker.join()
    return out[1:]  # the first was the warm-up, as the server's first request was


def summarise_batches(batches: list[tuple[int, int]]) -> str:
    if not batches:
        return "none logged"
    counts: dict[tuple[int, int], int] = {}
    for b in batches:
        counts[b] = counts.get(b, 0) + 1
    return ", ".join(f"{n} x ({r} req, {rows} rows)" for (r, rows), n in sorted(counts.items()))


def profile_batch(base_dir: Path, model: str, max_tokens: int) -> str:
    """Where the time of one 8-request batch goes: the same burst through an in-process Sampler,
    with torch's profiler wrapped around the model's generate() on the batcher thread (the profiler
    records the thread it runs in)."""
    import torch

    from modelmill.ml.sampling import Sampler, SamplingParams
    from modelmill.ml.types import ModelRef

    sampler = Sampler(batch_window_s=0.05)
    ref, params = ModelRef(base_dir), SamplingParams(temperature=0, max_tokens=max_tokens)
    sampler.generate(ref, [{"role": "user", "content": PROMPTS[0]}], None, params)  # load + warm up
    model_, _ = sampler.load(ref)
    inner, profiles, profiled = model_.generate, [], threading.Event()

    def generate(**kw):
        # The legacy (non-Kineto) profiler: Kineto must be started on the thread that set it up.
        with torch.autograd.profiler.profile(use_kineto=False) as prof:
            t0 = time.perf_counter()
            out = inner(**kw)
        profiles.append((time.perf_counter() - t0, kw["input_ids"].shape, prof))
        profiled.set()
        return out

    model_.generate = generate
    threads = [threading.Thread(target=sampler.generate, args=(ref, [{"role": "user", "content": p}], None, params))
               for p in PROMPTS[:CONCURRENT]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    profiled.wait(600)  # callers get their answers at the last step, before generate() has returned
    lines = [f"{CONCURRENT} concurrent requests to {model} (base) through an in-process Sampler, torch threads "
             f"{torch.get_num_threads()}, batches (requests, rows): {sampler.batch_history[1:]}"]
    for wall, shape, prof in profiles:
        lines.append(f"generate() on input {tuple(shape)}: {wall:.2f} s (under the profiler); top ops by self CPU:")
        lines.append(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=10,
                                               max_name_column_width=40))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
