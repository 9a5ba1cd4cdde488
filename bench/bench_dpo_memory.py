"""Peak memory of one DPO LoRA run vs one SFT LoRA run with the same batch shape.

    python bench/bench_dpo_memory.py [--batch-size 4] [--seq-len 128] [--steps 2]

Each measurement runs in a fresh subprocess and reads its peak RSS (ru_maxrss):
- load: import + load SmolLM2-135M-Instruct (fp32), no training (the floor both share);
- sft:  ml.sft.train_sft, `steps` optimizer steps of batch_size examples, each prompt + answer;
- dpo:  ml.dpo.train_dpo, same steps and batch_size, each pair the same prompt + a chosen and
        a rejected answer of the same length as SFT's answer (so DPO runs 2 x batch_size
        sequences per step: that is the method, not overhead).
The reference model is the policy with its LoRA adapter disabled, so DPO should need no
second model copy: the target is DPO peak <= 1.3 x SFT peak. Results go to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODEL = "SmolLM2-135M-Instruct"
TARGET_RATIO = 1.3


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class _Quiet:
    def on_event(self, *a, **k): ...
    def on_step(self, *a, **k): ...
    def on_checkpoint(self, *a, **k): ...
    def should_stop(self): return None


def child(kind: str, home: Path, batch_size: int, seq_len: int, steps: int) -> dict:
    from modelmill.ml import dpo, models, sft

    base = models.ensure_base(home, MODEL)
    if kind == "sft2x":  # SFT fed the same [2 x batch, T] tensors per step as DPO's chosen + rejected
        kind, batch_size = "sft", batch_size * 2
    n = batch_size * steps
    # ~seq_len/2 tokens of prompt and of each answer: distinct words so lengths are stable.
    words = seq_len // 4
    prompt = lambda i: " ".join(f"q{i}w{j}" for j in range(words // 2))  # noqa: E731
    answer = lambda i, t: " ".join(f"{t}{i}a{j}" for j in range(words // 2))  # noqa: E731
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-{kind}-"))
    t0 = time.time()
    if kind == "load":
        models.load_model(base, None, trainable=True)
    elif kind == "sft":
        path = tmp / "sft.jsonl"
        path.write_text("\n".join(json.dumps({"messages": [{"role": "user", "content": prompt(i)},
                                                           {"role": "assistant", "content": answer(i, "c")}]})
                                  for i in range(n)) + "\n")
        sft.train_sft(sft.SFTConfig(base_dir=base, train_path=path, valid_path=None, output_dir=tmp / "out",
                                    n_epochs=1, batch_size=batch_size, learning_rate_multiplier=1.0,
                                    max_seq_len=seq_len * 2, torch_threads=2), _Quiet())
    else:
        path = tmp / "dpo.jsonl"
        path.write_text("\n".join(json.dumps({"input": {"messages": [{"role": "user", "content": prompt(i)}]},
                                              "preferred_output": [{"role": "assistant", "content": answer(i, "c")}],
                                              "non_preferred_output": [{"role": "assistant", "content": answer(i, "r")}]})
                                  for i in range(n)) + "\n")
        dpo.train_dpo(dpo.DPOConfig(base_dir=base, train_path=path, valid_path=None, output_dir=tmp / "out",
                                    n_epochs=1, batch_size=batch_size, learning_rate_multiplier=1.0,
                                    max_seq_len=seq_len * 2, torch_threads=2), _Quiet())
    return {"kind": kind, "peak_rss_mb": _peak_rss_mb(), "seconds": time.time() - t0}


def measure(kind: str, args) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--home", args.home, "--batch-size", str(args.batch_size),
           "--seq-len", str(args.seq_len), "--steps", str(args.steps)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=128, help="approximate tokens of prompt + one answer")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--home", default=os.environ.get("MODELMILL_HOME", str(Path.home() / ".modelmill")))
    p.add_argument("--child", choices=["load", "sft", "sft2x", "dpo"])
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, Path(args.home), args.batch_size, args.seq_len, args.steps)))
        return
    from modelmill.ml import models

    models.ensure_base(Path(args.home), MODEL)  # convert once, outside the measurements
    kinds = ("load", "sft", "sft2x", "dpo")
    r = {k: measure(k, args) for k in kinds}
    ratio = r["dpo"]["peak_rss_mb"] / r["sft"]["peak_rss_mb"]
    ratio2x = r["dpo"]["peak_rss_mb"] / r["sft2x"]["peak_rss_mb"]
    over = {k: r[k]["peak_rss_mb"] - r["load"]["peak_rss_mb"] for k in ("sft", "dpo")}
    verdict = "PASS" if ratio <= TARGET_RATIO else "FAIL"
    verdict2x = "PASS" if ratio2x <= TARGET_RATIO else "FAIL"
    names = {"load": "load only", "sft": f"SFT, batch {args.batch_size}",
             "sft2x": f"SFT, batch {2 * args.batch_size} (DPO's sequence count)", "dpo": f"DPO, {args.batch_size} pairs"}
    lines = [f"- {names[k]}: peak RSS {r[k]['peak_rss_mb']:.0f} MiB ({r[k]['seconds']:.1f} s)" for k in kinds]
    body = "\n".join([
        f"{MODEL}, fp32, LoRA r=8 all-linear, batch {args.batch_size} examples (DPO: pairs) of ~{args.seq_len} "
        f"tokens (prompt + answer), {args.steps} optimizer steps, each run in a fresh process "
        f"(`python bench/bench_dpo_memory.py`), {platform.machine()} {os.cpu_count()} CPUs, torch threads 2.",
        "", *lines, "",
        f"DPO / SFT peak RSS: **{ratio:.2f}x** against SFT with the same number of examples (target <= "
        f"{TARGET_RATIO}x: {verdict}); **{ratio2x:.2f}x** against SFT fed the same number of sequences per step "
        f"({verdict2x}). "
        f"Above the load-only floor: SFT +{over['sft']:.0f} MiB, DPO +{over['dpo']:.0f} MiB "
        f"(DPO runs chosen and rejected, 2x the sequences, plus a no-grad reference forward "
        f"with the adapter disabled; no second model copy).",
    ])
    print(body)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from benchmarks_md import write_section

    write_section("bench_dpo_memory", "DPO memory", body)


if __name__ == "__main__":
    main()
