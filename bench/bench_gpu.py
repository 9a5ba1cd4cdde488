"""GPU harness: ModelMill's train_sft against plain TRL SFTTrainer on one CUDA device, bf16 mixed
precision, on a randomly initialised ~1B-parameter Llama (built from a config: no weights travel).

    python bench/bench_gpu.py [--json bench/out/gpu.json] [--steps 40] [--batch-size 8] [--repeats 2]
    python bench/bench_gpu.py --cpu-smoke [--peak-tflops X]   # the whole code path on CPU, tiny config, fp32

Without a CUDA device (and without --cpu-smoke) it prints why, writes {"skipped": "no CUDA device"}
to --json and exits 0.

Model: LlamaConfig with TinyLlama-1.1B's shape (hidden 2048, 22 layers, 32 heads, 4 KV heads, MLP
5632) and the SmolLM2 tokenizer's vocabulary (49,152), initialised from a fixed seed and saved as
safetensors (bf16) into a temp dir, with the tokenizer of ModelMill's modelmill-tiny (SmolLM2's,
carrying ModelMill's chat template). Data: synthetic chat examples whose lengths follow a
log-normal distribution (most short, a few near max_seq_len), steps x batch_size of them, 1 epoch.

Three kinds of run, each its own process, repeats interleaved:
- modelmill:   ml.sft.train_sft with ModelMill's automatic configuration (on CUDA: bf16 mixed
               precision, LoRA r=8 on every linear layer, no activation checkpointing, ...).
- trl_same:    plain TRL SFTTrainer with ModelMill's settings (bf16, LoRA r=8 all-linear, no
               activation checkpointing, log every step): the job-overhead comparison. Same work,
               so wall time from process start to the end of training differs only by overhead.
- trl_default: plain TRL SFTTrainer with TRL's defaults (bf16, activation checkpointing, PEFT's
               default LoRA targets q_proj/v_proj, pad to longest): the default-efficiency comparison.
All three: assistant-only loss, the same learning rate, batch size, seed and data.

Measured per run: wall (just before the process starts -> training returned and the adapter saved),
the training phase (just before trainer.train() -> the end of the last optimizer step, the device
synchronised), real tokens (the examples' tokenized lengths: padding never counts), tokens/s =
real tokens / training phase, MFU = lora_train_flops(...) / training phase / peak FLOPs of the device
(PEAK_FLOPS, matched on torch.cuda.get_device_name()), and peak device memory.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
LEARNING_RATE = 2e-4  # ml.sft.BASE_LEARNING_RATE at multiplier 1
LORA_R, LORA_ALPHA = 8, 16
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
PEFT_DEFAULT_LLAMA = ("q_proj", "v_proj")  # PEFT's default LoRA targets for Llama
# Dense (no sparsity) bf16 tensor-core peak FLOP/s per device, first match on the CUDA device name.
PEAK_FLOPS = (("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("A100", 312e12))
KINDS = ("modelmill", "trl_same", "trl_default")
WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa "
         "quebec romeo sierra tango uniform victor whiskey xray yankee zulu red green blue amber").split()


@dataclass(frozen=True)
class Shape:
    """The Llama config fields the model and the FLOP count need."""

    hidden: int  # d_model
    layers: int
    heads: int  # attention heads
    kv_heads: int  # key/value heads (grouped-query attention)
    intermediate: int  # MLP width
    vocab: int
    tie_embeddings: bool = False

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in_features, out_features) of each linear layer in one decoder layer."""
        d, q, kv, ff = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate
        return {"q_proj": (d, q), "k_proj": (d, kv), "v_proj": (d, kv), "o_proj": (q, d),
                "gate_proj": (d, ff), "up_proj": (d, ff), "down_proj": (ff, d)}


GPU_SHAPE = Shape(hidden=2048, layers=22, heads=32, kv_heads=4, intermediate=5632, vocab=49152)
SMOKE_SHAPE = Shape(hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128, vocab=49152, tie_embeddings=True)


# ---------------------------------------------------------------- FLOPs


@dataclass(frozen=True)
class Flops:
    forward: float
    backward: float

    @property
    def total(self) -> float:
        return self.forward + self.backward


def frozen_matmul_params(shape: Shape) -> int:
    """N: the weights every token is multiplied by: all decoder linear layers plus the LM head
    (counted even when tied to the embedding: the output projection is a matmul either way). The
    embedding lookup and the norms do no matmul and are left out."""
    per_layer = sum(i * o for i, o in shape.linear_shapes().values())
    return shape.layers * per_layer + shape.hidden * shape.vocab


def lora_params(shape: Shape, r: int, targets: tuple[str, ...]) -> int:
    """N_lora: r * (in + out) per adapted linear layer (A is in x r, B is r x out), every layer."""
    return shape.layers * sum(r * (i + o) for name, (i, o) in shape.linear_shapes().items() if name in targets)


def attention_forward_flops(shape: Shape, seq_lens: list[int]) -> float:
    """Score (Q K^T) and mix (A V) matmuls of causal attention: a sequence of s tokens has
    s (s + 1) / 2 query-key pairs, each costing 2 * head_dim FLOPs for the score and 2 * head_dim for
    the mix, per head and layer: 2 * layers * heads * head_dim * s (s + 1) per sequence."""
    per_pair = 4 * shape.heads * shape.head_dim * shape.layers
    return float(sum(per_pair * s * (s + 1) // 2 for s in seq_lens))


def lora_train_flops(shape: Shape, seq_lens: list[int], r: int, targets: tuple[str, ...]) -> Flops:
    """Model FLOPs of one LoRA training pass over sequences of these real lengths (padding excluded).

    With T = sum(seq_lens), N = frozen_matmul_params, N_lora = lora_params, A = attention_forward_flops:

        forward  = 2 N T + 2 N_lora T + A
        backward = 2 N T + 4 N_lora T + 2 A

    Forward: every token goes through each frozen weight (2 FLOPs per weight: multiply + add) and
    through each LoRA A and B. Backward: gradients still flow back through every frozen weight to
    the activations below (2 N T), but frozen weights get no weight gradient (that would be another
    2 N T, which full fine-tuning pays: 6 N T in all); LoRA weights get both the activation and the
    weight gradient (4 N_lora T); the attention matmuls have two activation operands each, so their
    backward is twice their forward. Total = 4 N T + 6 N_lora T + 3 A.

    Not counted: norms, activations, softmax, the optimizer (all O(T d) or O(N_lora), far below the
    matmuls), and the forward recomputed under activation checkpointing (MFU counts model FLOPs, so
    a run that recomputes shows a lower MFU for the same useful work). The first layer's q/k/v input
    gradient is counted though autograd can skip it (the embedding is frozen): an overcount of at most
    2 (q+k+v weights of one layer) T, under 1% for a 22-layer model.
    """
    t = sum(seq_lens)
    n, n_lora = frozen_matmul_params(shape), lora_params(shape, r, targets)
    attn = attention_forward_flops(shape, seq_lens)
    return Flops(forward=2 * n * t + 2 * n_lora * t + attn, backward=2 * n * t + 4 * n_lora * t + 2 * attn)


def peak_flops(device_name: str) -> float | None:
    """Dense bf16 peak FLOP/s of a device from PEAK_FLOPS (first name fragment found), or None."""
    for fragment, flops in PEAK_FLOPS:
        if fragment.lower() in device_name.lower():
            return flops
    return None


# ---------------------------------------------------------------- model and data


def build_model(shape: Shape, out: Path, tokenizer_dir: Path, dtype_name: str) -> Path:
    """A randomly initialised Llama of `shape` (fixed seed) with ModelMill's tokenizer, saved as safetensors."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
                         num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
                         num_key_value_heads=shape.kv_heads, max_position_embeddings=4096,
                         tie_word_embeddings=shape.tie_embeddings, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(getattr(torch, dtype_name))
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def chat_rows(n: int, median_words: float, max_words: int, seed: int) -> list[dict]:
    """n synthetic chat examples with log-normal lengths (the answer about as long as the question)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = max(2, min(max_words, round(math.exp(rng.gauss(math.log(median_words), 0.8)))))
        text = lambda k: " ".join(rng.choice(WORDS) for _ in range(k))  # noqa: E731
        rows.append({"messages": [{"role": "user", "content": text(words // 2)},
                                  {"role": "assistant", "content": text(words - words // 2)}]})
    return rows


def token_lengths(model_dir: Path, train: Path, max_seq_len: int) -> list[int]:
    """Each example's tokens as ModelMill renders them (the template both sides use), truncated."""
    from modelmill.ml import data, models, sft

    tokenizer = models.load_model(model_dir)[1]
    return [len(sft.tokenize_example(tokenizer, ex, max_seq_len).input_ids)
            for ex in data.read_examples(train, "supervised", min_examples=1)]


# ---------------------------------------------------------------- the three runs (child processes)


def child(kind: str, a) -> dict:
    """One training run in this (fresh) process; returns its time marks (time.time())."""
    import torch

    cuda = torch.cuda.is_available()
    marks: dict = {}

    def sync() -> float:
        if cuda:
            torch.cuda.synchronize()
        return time.time()

    if kind == "modelmill":
        from modelmill.ml import sft

        class Reporter:
            def on_event(self, level, message, data=None):
                if message.startswith("Training on "):
                    marks["train_called"] = time.time()

            def on_step(self, step, total_steps, metrics):
                marks["last_step_end"], marks["steps"] = time.time(), step  # logged loss: device already synced

            def on_checkpoint(self, step, path, metrics):
                pass

            def should_stop(self):
                return None

        sft.train_sft(sft.SFTConfig(base_dir=Path(a.model_dir), train_path=Path(a.train), valid_path=None,
                                    output_dir=Path(a.out), n_epochs=1, batch_size=a.batch_size,
                                    learning_rate_multiplier=1.0, max_seq_len=a.max_seq_len,
                                    truncation=True), Reporter())  # cut like the TRL side (max_length)
    else:
        from datasets import load_dataset
        from peft import LoraConfig
        from transformers import TrainerCallback
        from trl import SFTConfig, SFTTrainer

        class Marks(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step == state.max_steps:
                    marks["last_step_end"], marks["steps"] = sync(), state.global_step

        same = kind == "trl_same"
        extra = {"activation_checkpointing": False, "logging_steps": 1} if same else {}
        if not cuda:  # --cpu-smoke: bf16 autocast is ~20x slower on CPU
            extra.update(bf16=False, fp16=False)
        args = SFTConfig(output_dir=str(Path(a.out) / "trainer"), num_train_epochs=1,
                         per_device_train_batch_size=a.batch_size, learning_rate=LEARNING_RATE, seed=0,
                         max_length=a.max_seq_len, assistant_only_loss=True, save_strategy="no", report_to="none",
                         disable_tqdm=True, **extra)
        dataset = load_dataset("json", data_files=a.train, split="train", cache_dir=str(Path(a.out) / "cache"))
        targets = "all-linear" if same else None  # None: PEFT's default for the architecture
        trainer = SFTTrainer(model=a.model_dir, args=args, train_dataset=dataset,
                             peft_config=LoraConfig(r=LORA_R, lora_alpha=LORA_ALPHA, target_modules=targets,
                                                    task_type="CAUSAL_LM"),
                             callbacks=[Marks()])
        marks["train_called"] = time.time()
        trainer.train()
        trainer.save_model(str(Path(a.out) / "adapter"))
    marks["finished"] = sync()
    marks["peak_memory_gb"] = torch.cuda.max_memory_allocated() / 1e9 if cuda else None
    marks["device"] = torch.cuda.get_device_name(0) if cuda else "cpu"
    return marks


def run_child(kind: str, model_dir: Path, train: Path, out: Path, args, env: dict) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--model-dir", str(model_dir),
           "--train", str(train), "--out", str(out), "--batch-size", str(args.batch_size),
           "--max-seq-len", str(args.max_seq_len)]
    launched = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{kind} run failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    marks = json.loads(lines[-1].removeprefix("RESULT "))
    return {**marks, "launched": launched, "wall_s": marks["finished"] - launched,
            "train_s": marks["last_step_end"] - marks["train_called"]}


# ---------------------------------------------------------------- report


def summarise(runs: dict[str, list[dict]], shape: Shape, lengths: list[int], peak: float | None) -> list[dict]:
    """Per-run tokens/s and MFU, then the rows (training_common.row)."""
    from training_common import row

    tokens = sum(lengths)
    targets = {"modelmill": ALL_LINEAR, "trl_same": ALL_LINEAR, "trl_default": PEFT_DEFAULT_LLAMA}
    for kind, rs in runs.items():
        flops = lora_train_flops(shape, lengths, LORA_R, targets[kind]).total
        for r in rs:
            r["tokens"], r["tokens_per_s"] = tokens, tokens / r["train_s"]
            r["model_tflops"] = flops / 1e12
            r["mfu"] = flops / r["train_s"] / peak if peak else None

    def med_mfu(kind):
        values = [r["mfu"] for r in runs[kind] if r["mfu"] is not None]
        return statistics.median(values) if values else None

    mm, same, default = runs["modelmill"], runs["trl_same"], runs["trl_default"]
    rows = [
        row("GPU job wall time, process start to trained adapter", "plain TRL SFTTrainer with ModelMill's settings",
            "s", [r["wall_s"] for r in same], [r["wall_s"] for r in mm], higher_is_better=False, target=None,
            target_text=None, ratio_meaning="baseline seconds / ModelMill seconds (>1: less overhead)"),
        row("GPU training throughput, same settings", "plain TRL SFTTrainer with ModelMill's settings", "tok/s",
            [r["tokens_per_s"] for r in same], [r["tokens_per_s"] for r in mm], higher_is_better=True, target=None,
            target_text=None, ratio_meaning="ModelMill tokens/s / baseline tokens/s (real tokens)"),
        row("GPU training throughput, ModelMill auto vs TRL defaults", "plain TRL SFTTrainer, TRL defaults",
            "tok/s", [r["tokens_per_s"] for r in default], [r["tokens_per_s"] for r in mm], higher_is_better=True,
            target=None, target_text=None, ratio_meaning="ModelMill tokens/s / baseline tokens/s (real tokens)"),
    ]
    rows[1]["baseline_mfu"], rows[1]["modelmill_mfu"] = med_mfu("trl_same"), med_mfu("modelmill")
    rows[2]["baseline_mfu"], rows[2]["modelmill_mfu"] = med_mfu("trl_default"), med_mfu("modelmill")
    if all(r["peak_memory_gb"] is not None for r in mm + default):
        rows.append(row("GPU peak memory", "plain TRL SFTTrainer, TRL defaults", "GB",
                        [r["peak_memory_gb"] for r in default], [r["peak_memory_gb"] for r in mm],
                        higher_is_better=False, target=None, target_text=None,
                        ratio_meaning="baseline GB / ModelMill GB (>1: ModelMill uses less)"))
    return rows


def markdown(doc: dict, lengths: list[int], args) -> str:
    from training_common import rows_table

    mfu = [f"{r['what']}: ModelMill {_pct(r.get('modelmill_mfu'))}, baseline {_pct(r.get('baseline_mfu'))}"
           for r in doc["rows"] if "modelmill_mfu" in r]
    return "\n".join([f"`python bench/bench_gpu.py` on {doc['device']} ({doc['machine']}); {args.repeats} interleaved "
                      f"repeats, each run its own process; {len(lengths)} examples ({sum(lengths)} real tokens, "
                      f"median {statistics.median(lengths):.0f}, max {max(lengths)}), batch {args.batch_size}, "
                      "1 epoch.", "", rows_table(doc["rows"]), "", "MFU (median): " + "; ".join(mfu) + ".", "",
                      *[f"- {n}" for n in doc["notes"]]])


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.3g}%"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", help="also write the Bench JSON here")
    p.add_argument("--steps", type=int, default=40, help="optimizer steps per run (examples = steps x batch size)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-seq-len", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--cpu-smoke", action="store_true",
                   help="run every code path on CPU with a modelmill-tiny-sized model (fp32, 2 steps, 1 repeat)")
    p.add_argument("--peak-tflops", type=float, help="the device's peak TFLOP/s, overriding the PEAK_FLOPS table")
    p.add_argument("--home", default=os.environ.get("MODELMILL_HOME", str(Path.home() / ".modelmill")),
                   help="where modelmill-tiny (for its tokenizer) is built once")
    p.add_argument("--child", choices=KINDS, help=argparse.SUPPRESS)
    for hidden in ("--model-dir", "--train", "--out"):
        p.add_argument(hidden, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args)), flush=True)
        return {}

    import torch

    sys.path.insert(0, str(HERE))
    from training_common import machine, write_json, write_markdown

    if not args.cpu_smoke and not torch.cuda.is_available():
        print("bench_gpu: skipped, no CUDA device (--cpu-smoke runs the code path on CPU)")
        doc = {"bench": "gpu", "skipped": "no CUDA device"}
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(doc) + "\n")
        return doc
    if args.cpu_smoke:
        args.steps, args.batch_size, args.repeats, args.max_seq_len = 2, 2, 1, 128
    shape = SMOKE_SHAPE if args.cpu_smoke else GPU_SHAPE
    env = dict(os.environ, **({"CUDA_VISIBLE_DEVICES": ""} if args.cpu_smoke else {}))
    device = "cpu" if args.cpu_smoke else torch.cuda.get_device_name(0)
    peak = args.peak_tflops * 1e12 if args.peak_tflops else (None if args.cpu_smoke else peak_flops(device))

    from modelmill.ml import models

    machine_line = machine()
    work = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    try:
        tokenizer_dir = models.ensure_base(Path(args.home), "modelmill-tiny")
        model_dir = build_model(shape, work / "model", tokenizer_dir, "float32" if args.cpu_smoke else "bfloat16")
        rows_data = chat_rows(args.steps * args.batch_size, median_words=12 if args.cpu_smoke else 180,
                              max_words=40 if args.cpu_smoke else 700, seed=0)
        train = work / "train.jsonl"
        train.write_text("".join(json.dumps(r) + "\n" for r in rows_data))
        lengths = token_lengths(model_dir, train, args.max_seq_len)
        runs: dict[str, list[dict]] = {k: [] for k in KINDS}
        for rep in range(args.repeats):
            for kind in (KINDS if rep % 2 == 0 else KINDS[::-1]):
                r = run_child(kind, model_dir, train, work / f"{kind}-{rep}", args, env)
                runs[kind].append(r)
                print(f"[{kind} {rep}] wall {r['wall_s']:.1f} s, training {r['train_s']:.2f} s, {r['steps']} steps",
                      flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    rows = summarise(runs, shape, lengths, peak)
    n, n_lora = frozen_matmul_params(shape), lora_params(shape, LORA_R, ALL_LINEAR)
    notes = [f"Model: random Llama, hidden {shape.hidden}, {shape.layers} layers, {shape.heads} heads "
             f"({shape.kv_heads} KV), MLP {shape.intermediate}, vocab {shape.vocab}: N = {n:,} matmul weights, "
             f"LoRA r={LORA_R} all-linear {n_lora:,}.",
             "MFU = lora_train_flops (4 N T + 6 N_lora T + 3 x causal attention; bench_gpu.py docstring) / training "
             "seconds / peak " + (f"{peak / 1e12:.0f} TFLOP/s (dense bf16, {device})" if peak else
                                  f"(unknown for {device}: MFU not computed)") + ".",
             "Training phase: just before trainer.train() to the end of the last optimizer step; wall: process "
             "start to trained adapter saved (ModelMill also writes its epoch-end checkpoint)."]
    if args.cpu_smoke:
        notes.insert(0, "CPU smoke run (--cpu-smoke): a tiny model in fp32; the figures test the code path only.")
    doc = write_json(None, "gpu", machine_line, rows, notes, None)
    doc["device"] = device
    doc["runs"] = runs
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    body = markdown(doc, lengths, args)
    print(body)
    write_markdown("bench_gpu", "GPU: ModelMill vs plain TRL on a 1B Llama (bf16)", body, quick=args.cpu_smoke)
    return doc


if __name__ == "__main__":
    main()
