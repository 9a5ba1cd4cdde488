"""The baseline the training benches compare ModelMill against: a plain TRL SFT script, as a user
would write it without ModelMill. Run as its own process, so it pays process start and model load.

    python bench/plain_trl_sft.py --model-dir DIR --train train.jsonl --out OUT_DIR [options] [--report r.json]

It reads OpenAI chat JSONL ({"messages": [...]}) into a datasets.Dataset, and trains TRL's
SFTTrainer with a PEFT LoRA adapter: loss on assistant tokens only (`assistant_only_loss=True`;
the model directory's chat template carries {% generation %} markers), fp32 (bf16=False, as
every CPU run must), then saves the adapter. Everything else is TRL's SFTConfig default unless
a flag mirrors a setting of ModelMill's (see the flags). Imports only torch/transformers/
peft/trl/datasets: nothing of modelmill.

--report writes one JSON object: wall-clock marks (time.time(), comparable across processes)
`started` (first line of this script), `train_called` (just before trainer.train()), `first_step_begin`,
`last_step_end`, `step_ends` (the end of each optimizer step), `finished` (adapter saved); `tokens`
(the real tokens of one pass over the tokenized training set, times the epochs: padding never
counts), `steps`, `examples`, `peak_rss_mb` (VmHWM: this program's peak resident memory, see
training_common.peak_rss_mb) and `rss_at_train_mb` (resident memory just before trainer.train()).
"""

from __future__ import annotations

import time

STARTED = time.time()

import argparse  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", required=True, help="a plain HF model directory (safetensors + tokenizer)")
    p.add_argument("--train", required=True, help="OpenAI chat JSONL")
    p.add_argument("--out", required=True, help="output dir: the adapter is saved to OUT/adapter")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--lora-alpha", type=int, default=16)
    p.add_argument("--lora-targets", default="default",
                   help="'default' = PEFT's default for the architecture (q_proj, v_proj for Llama), "
                        "'all-linear', or a comma-separated list")
    p.add_argument("--padding-free", action="store_true", help="TRL padding_free=True (default: pad to longest)")
    p.add_argument("--no-activation-checkpointing", action="store_true",
                   help="turn off TRL's default activation (gradient) checkpointing")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 = torch's default")
    p.add_argument("--report", help="write the timing report (JSON) here")
    args = p.parse_args()

    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32)
    dataset = load_dataset("json", data_files=args.train, split="train")

    targets = {"default": None, "all-linear": "all-linear"}.get(args.lora_targets, args.lora_targets.split(","))
    peft_config = LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, target_modules=targets, task_type="CAUSAL_LM")
    batching = {"max_length": args.max_length}
    if args.padding_free:  # TRL refuses max_length without packing here: it would not truncate (bench data is short)
        batching = {"padding_free": True, "max_length": None}
    config = SFTConfig(
        output_dir=str(Path(args.out) / "trainer"), num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size, learning_rate=args.lr, seed=args.seed,
        assistant_only_loss=True, bf16=False, fp16=False,
        save_strategy="no", report_to="none", disable_tqdm=True,
        **({"activation_checkpointing": False} if args.no_activation_checkpointing else {}), **batching)

    marks: dict[str, float] = {}

    step_ends: list[float] = []

    class StepTimes(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            marks.setdefault("first_step_begin", time.time())

        def on_step_end(self, a, state, control, **kw):
            step_ends.append(time.time())
            marks["last_step_end"] = step_ends[-1]

    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=peft_config, callbacks=[StepTimes()])
    tokens = sum(len(ids) for ids in trainer.train_dataset["input_ids"]) * args.epochs
    rss_at_train_mb = peak_rss_mb("VmRSS")
    marks["train_called"] = time.time()
    trainer.train()
    trainer.save_model(str(Path(args.out) / "adapter"))
    marks["finished"] = time.time()
    if args.report:
        report = {"started": STARTED, **marks, "step_ends": step_ends, "tokens": tokens,
                  "steps": trainer.state.global_step, "examples": len(trainer.train_dataset),
                  "peak_rss_mb": peak_rss_mb(), "rss_at_train_mb": rss_at_train_mb}
        Path(args.report).write_text(json.dumps(report))


def peak_rss_mb(field: str = "VmHWM") -> float:
    """VmHWM (peak) or VmRSS (now) of /proc/self/status in MiB (not ru_maxrss, which a child inherits
    from its parent at exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


if __name__ == "__main__":
    main()
