"""Random LoRA adapters for the tests of adapter serving (multi-LoRA, batching, vLLM, vision)."""

from __future__ import annotations

from pathlib import Path

from modelmill.ml import models


def random_lora_adapter(base_dir: Path, out_dir: Path, *, seed: int, r: int, targets, **lora_kwargs) -> Path:
    """A LoRA adapter of base_dir with random A and B (torch seed `seed`), scaled up 20x so it visibly
    changes the model's output, saved to out_dir (returned). lora_kwargs go to peft's LoraConfig."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model, _ = models.load_model(base_dir)
    peft_model = get_peft_model(model, LoraConfig(r=r, lora_alpha=8, init_lora_weights=False, target_modules=targets,
                                                  **lora_kwargs))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.mul_(20)
    peft_model.save_pretrained(out_dir)
    return out_dir
