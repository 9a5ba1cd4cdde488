"""`make gpu-check`: the GPU figures of the "real models on real hardware" issue, in one script that
fits in 8 minutes on one H200 (each part has its own time limit; a part that fails is reported and
the next one still runs).

    python bench/gpu_check.py [--json bench/out/gpu_check.json] [--only sft,qlora,grpo,native]

Parts, each measured in this run against its baseline in the same run:
- sft:    bench_gpu.py (bf16 LoRA SFT of a random ~1B Llama, ModelMill vs plain TRL; tokens/s, MFU with
          LoRA-correct FLOPs), 1 repeat of 30 steps. Targets: MFU >= 40 %, >= 1.3x TRL's defaults.
- qlora:  peak CUDA memory of the same SFT (same model, batch and data) with quantization "nf4" (QLoRA,
          bitsandbytes) vs "none" (bf16 weights), each in a fresh process. Target: <= 0.45x.
- grpo:   4 GRPO steps of ml.rft.train_rft on the same model with a string_check grader (rollouts on the GPU).
- native: a Qwen2-shaped random model with Qwen2.5's own chat template (tests/fixtures): ModelMill keeps the
          template, the loss mask covers the assistant tokens only, 4 SFT steps in bf16, and the served prompt
          has the family's own token count.

Without a CUDA device it prints why, writes {"skipped": "no CUDA device"} and exits 0.
The GPU check machine has torch, transformers, peft and accelerate but no network: `make gpu-wheels`
(run where PyPI is reachable) puts trl, bitsandbytes and what they need into wheels/gpu/, which
`make gpu-check` installs offline first.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PARTS = ("sft", "qlora", "grpo", "native")
LIMITS_S = {"sft": 240, "qlora": 120, "grpo": 90, "native": 60}  # sums to 8.5 min with start-up; sft rarely needs it all
QLORA_STEPS, QLORA_BATCH = 10, 8


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", default=str(ROOT / "bench" / "out" / "gpu_check.json"))
    p.add_argument("--only", default=",".join(PARTS), help="comma-separated parts to run")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(CHILDREN[args.child](Path(args.work))), flush=True)
        return {}

    import torch

    doc: dict = {"bench": "gpu_check", "date": time.strftime("%Y-%m-%d"), "parts": {}}
    if not torch.cuda.is_available():
        print("gpu_check: skipped, no CUDA device")
        doc["skipped"] = "no CUDA device"
        _write(args.json, doc)
        return doc
    doc["device"] = torch.cuda.get_device_name(0)
    doc["versions"] = _versions()
    print(f"gpu_check on {doc['device']}: {doc['versions']}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    for part in [x for x in args.only.split(",") if x]:
        started = time.monotonic()
        try:
            result = RUNNERS[part](work, args)
            result["ok"] = True
        except Exception as e:  # noqa: BLE001 - one broken part must not hide the others' figures
            result = {"ok": False, "error": f"{type(e).__name__}: {e}"[-2000:]}
        result["seconds"] = round(time.monotonic() - started, 1)
        doc["parts"][part] = result
        print(f"[{part}] {json.dumps(result)}", flush=True)
        _write(args.json, doc)
    return doc


# ---------------------------------------------------------------- parts (the parent's side)


def run_sft(work: Path, args) -> dict:
    out = work / "bench_gpu.json"
    _run([sys.executable, str(HERE / "bench_gpu.py"), "--json", str(out), "--steps", "30", "--repeats", "1"],
         LIMITS_S["sft"])
    bench = json.loads(out.read_text())
    return {"rows": bench.get("rows"), "runs": {k: [{m: r.get(m) for m in ("train_s", "wall_s", "peak_memory_gb")}
                                                    for r in v] for k, v in bench.get("runs", {}).items()}}


def run_qlora(work: Path, args) -> dict:
    _prepare_llama(work)
    bf16 = _child("sft_bf16", work, LIMITS_S["qlora"] / 2)
    nf4 = _child("sft_nf4", work, LIMITS_S["qlora"] / 2)
    return {"bf16_peak_gb": bf16["peak_gb"], "nf4_peak_gb": nf4["peak_gb"],
            "ratio": round(nf4["peak_gb"] / bf16["peak_gb"], 3), "target": "<= 0.45",
            "bf16_events": bf16["plan"], "nf4_events": nf4["plan"]}


def run_grpo(work: Path, args) -> dict:
    _prepare_llama(work)
    return _child("grpo", work, LIMITS_S["grpo"])


def run_native(work: Path, args) -> dict:
    return _child("native", work, LIMITS_S["native"])


RUNNERS = {"sft": run_sft, "qlora": run_qlora, "grpo": run_grpo, "native": run_native}


# ---------------------------------------------------------------- children (one fresh process each)


def child_sft(work: Path, quantization: str) -> dict:
    import torch

    from modelmill.ml import sft

    reporter = _Recorder()
    sft.train_sft(sft.SFTConfig(base_dir=work / "llama", train_path=work / "chat.jsonl", valid_path=None,
                                output_dir=work / f"out-{quantization}", n_epochs=1, batch_size=QLORA_BATCH,
                                learning_rate_multiplier=1.0, quantization=quantization,
                                quantization_from="gpu_check"), reporter)
    return {"peak_gb": round(torch.cuda.max_memory_allocated() / 1e9, 3), "steps": len(reporter.steps),
            "plan": [m for _, m in reporter.events if m.startswith(("Precision", "Memory", "Training on"))]}


def child_grpo(work: Path) -> dict:
    from modelmill.ml import rft

    rows = [{"messages": [{"role": "user", "content": f"Say the word {w}."}], "word": w}
            for w in ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel")]
    train = work / "rft.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    grader = {"type": "string_check", "name": "says it", "operation": "ilike", "input": "{{sample.output_text}}",
              "reference": "%{{item.word}}%"}
    reporter = _Recorder()
    started = time.monotonic()
    result = rft.train_rft(rft.RFTConfig(base_dir=work / "llama", train_path=train, valid_path=None,
                                         output_dir=work / "out-grpo", n_epochs=1, batch_size=2,
                                         learning_rate_multiplier=1.0, grader=grader, max_completion_tokens=32,
                                         eval_interval=0), reporter)
    return {"status": result.status, "steps": result.steps, "seconds": round(time.monotonic() - started, 1),
            "rewards": [m.get("train_reward_mean") for _, _, m in reporter.steps]}


def child_native(work: Path) -> dict:
    """Qwen2-shaped random model + Qwen2.5's template: kept, masked by prefix diffing, trained, served."""
    import torch

    sys.path.insert(0, str(ROOT))
    from modelmill.ml import chat_format, models, sampling, sft
    from modelmill.ml.types import ModelRef
    from tools.family_models import SPECS, build_family_model

    model_dir = build_family_model(SPECS["qwen2"], work / "qwen2")  # the tests' tiny Qwen2 with Qwen2.5's template
    tokenizer = models.load_model(model_dir)[1]
    rows = [{"messages": [{"role": "user", "content": f"What is {i} + {i}?"},
                          {"role": "assistant", "content": f"{2 * i}"}]} for i in range(16)]
    train = work / "native.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ids, mask = chat_format.tokenize_conversation(tokenizer, rows[0]["messages"], None)
    learned = tokenizer.decode([t for t, m in zip(ids, mask) if m])
    reporter = _Recorder()
    result = sft.train_sft(sft.SFTConfig(base_dir=model_dir, train_path=train, valid_path=None,
                                         output_dir=work / "out-native", n_epochs=1, batch_size=4,
                                         learning_rate_multiplier=1.0), reporter)
    own = tokenizer.apply_chat_template(rows[0]["messages"][:1], add_generation_prompt=True, tokenize=True)
    sampler = sampling.Sampler()
    out = sampler.generate(ModelRef(model_dir, result.adapter_dir), rows[0]["messages"][:1],
                           params=sampling.SamplingParams(max_tokens=4))
    return {"status": result.status, "steps": result.steps, "learned_text": learned,
            "prompt_tokens": out.usage["prompt_tokens"], "family_prompt_tokens": len(own),
            "bf16": next(p.dtype for p in sampler.load(ModelRef(model_dir, None))[0].parameters())
            == torch.bfloat16}


CHILDREN = {"sft_bf16": lambda w: child_sft(w, "none"), "sft_nf4": lambda w: child_sft(w, "nf4"),
            "grpo": child_grpo, "native": child_native}


# ---------------------------------------------------------------- helpers


class _Recorder:
    def __init__(self):
        self.events, self.steps = [], []

    def on_event(self, level, message, data=None):
        self.events.append((level, message))

    def on_step(self, step, total_steps, metrics):
        self.steps.append((step, total_steps, metrics))

    def on_checkpoint(self, step, path, metrics):
        pass

    def should_stop(self):
        return None


def _prepare_llama(work: Path) -> None:
    """bench_gpu's random 1B Llama (bf16) and chat data, built once per check."""
    if (work / "llama" / "config.json").exists():
        return
    sys.path.insert(0, str(HERE))
    import bench_gpu

    from modelmill.ml import models

    tokenizer_dir = models.ensure_base(work / "home", "modelmill-tiny")
    bench_gpu.build_model(bench_gpu.GPU_SHAPE, work / "llama", tokenizer_dir, "bfloat16")
    rows = bench_gpu.chat_rows(QLORA_STEPS * QLORA_BATCH, median_words=180, max_words=700, seed=0)
    (work / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _child(name: str, work: Path, limit_s: float) -> dict:
    proc = _run([sys.executable, str(Path(__file__).resolve()), "--child", name, "--work", str(work)], limit_s)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if not lines:
        raise RuntimeError(f"{name}: no result:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def _run(cmd: list[str], limit_s: float) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=limit_s)
    if proc.returncode != 0:
        raise RuntimeError(f"exit {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


def _versions() -> dict:
    from importlib import metadata

    out = {}
    for name in ("torch", "transformers", "peft", "accelerate", "trl", "bitsandbytes"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _write(path: str, doc: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
