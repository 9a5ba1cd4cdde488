"""Peak GPU memory of one QLoRA (nf4) LoRA step against one bf16 LoRA step on the same model and batch.

    python bench/bench_qlora_memory.py [--hidden 2048 --layers 16 --batch-size 1 --seq-len 512]

Needs a CUDA GPU, bitsandbytes (`pip install 'modelmill[gpu]'`) and peft; it downloads nothing.
The model is a random Llama of the given shape saved as safetensors (weights' values do not change
memory), with a word-level tokenizer so models.load_model can load it. Each side runs in a fresh
subprocess: models.load_model(trainable=True, dtype="bfloat16", quantization=...) (the loader the
training jobs use), PEFT LoRA r=8 on every linear layer, activation checkpointing on both sides, one
AdamW step on random token ids; the peak is torch.cuda.max_memory_allocated over load + step.
Target (issue 14): nf4 peak <= 0.45 x bf16 peak. Also prints ml/memory.estimate_bytes for both sides.
Not yet run: this task's sessions had no GPU (2026-12-02).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

TARGET_RATIO = 0.45
VOCAB = 32000


def build_model(out: Path, a) -> None:
    import torch
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    config = LlamaConfig(vocab_size=VOCAB, hidden_size=a.hidden, intermediate_size=a.hidden * 11 // 4,
                         num_hidden_layers=a.layers, num_attention_heads=a.hidden // 128, num_key_value_heads=8,
                         max_position_embeddings=max(4096, a.seq_len), tie_word_embeddings=False)
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    vocab = {"[UNK]": 0, **{f"w{i}": i for i in range(1, VOCAB)}}
    PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="[UNK]")),
                            unk_token="[UNK]").save_pretrained(out)


def one_step(model_dir: Path, quantization: str, batch_size: int, seq_len: int) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model

    from modelmill.ml import memory, models

    torch.cuda.reset_peak_memory_stats()
    model, _ = models.load_model(model_dir, trainable=True, dtype="bfloat16", quantization=quantization)
    model = get_peft_model(model.cuda() if quantization == "none" else model,
                           LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"))
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(1, VOCAB, (batch_size, seq_len), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    optimizer.step()
    torch.cuda.synchronize()
    estimate = memory.estimate_bytes(memory.model_shape(model_dir), batch_size * seq_len, dtype="bfloat16",
                                     quantization=quantization, checkpointing=True)
    return {"quantization": quantization, "peak_bytes": torch.cuda.max_memory_allocated(),
            "estimate_bytes": estimate - memory.RUNTIME_BYTES, "loss": float(loss)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--child", nargs=2, metavar=("MODEL_DIR", "QUANTIZATION"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print(json.dumps(one_step(Path(a.child[0]), a.child[1], a.batch_size, a.seq_len)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        build_model(Path(tmp), a)
        sides = {}
        for q in ("none", "nf4"):
            out = subprocess.run([sys.executable, __file__, "--child", tmp, q, "--batch-size", str(a.batch_size),
                                  "--seq-len", str(a.seq_len)], capture_output=True, text=True, check=True)
            sides[q] = json.loads(out.stdout.strip().splitlines()[-1])
    ratio = sides["nf4"]["peak_bytes"] / sides["none"]["peak_bytes"]
    print(json.dumps({"shape": {"hidden": a.hidden, "layers": a.layers, "batch_size": a.batch_size,
                                "seq_len": a.seq_len}, "bf16": sides["none"], "nf4": sides["nf4"],
                      "ratio": round(ratio, 3), "target": TARGET_RATIO, "met": ratio <= TARGET_RATIO}, indent=2))


if __name__ == "__main__":
    main()
