"""Where RFT's completions come from: the rollout backend of training steps (TRL's GRPOTrainer generates
them, `rollout_backend_args` picks how) and `sample_completions`, which samples the live policy for the
base-model check and the validation-reward evaluations (ml/rft/train.py).

Why a third generation path beside the Sampler's (ml/batching.decode_batch) and TRL's: TRL's only
generates inside a training step, and the Sampler serves saved models (a base from its LRU cache plus
adapters loaded by name) while an evaluation samples the model being trained, mid-run, from prompts the
trainer has already rendered. decode_batch could take the live model, but as it stands it would change
what an evaluation samples: it draws each request's tokens from its own CPU torch.Generator (here: the
forked global RNG, seeded, on the model's device, as TRL's rollouts draw), builds its inputs on the CPU
(a CUDA policy needs them on its device), and holds the process-wide GENERATE_LOCK, so a run's
evaluations would queue behind the server's chat traffic. The same seed would then give other
completions and rewards than today; the RFT tests check the rule, not the tokens, so they cannot show
that nothing changed. Kept as it is until decode_batch takes a device and an RNG.
"""

from __future__ import annotations

from collections.abc import Callable

from modelmill.errors import InvalidRequestError
from modelmill.ml import ml_imports

with ml_imports():  # not alongside another thread's first import of the stack (see modelmill.ml)
    import torch

EVAL_BATCH_ROWS = 16  # completions generated per generate() call when evaluating (bounds the KV cache)

# How RFT training generates its rollouts (see rollout_backend_args). "transformers": the policy's
# own model.generate(), one left-padded call for a whole step (every prompt x its group of
# generations), works on CPU and GPU. "vllm": TRL's colocated vLLM engine on the training GPU,
# which gets the current LoRA weights synced before each step's generation.
ROLLOUT_BACKENDS = ("transformers", "vllm")


def rollout_backend_args(backend: str = "transformers") -> dict:
    """The trl.GRPOConfig keyword arguments that select the RFT rollout backend.

    "transformers" (default): use_vllm=False; TRL repeats each prompt num_generations times in
    one batch and calls generate() once per step (generation_batch_size = the step's completions).
    "vllm": use_vllm=True in "colocate" mode (vLLM shares the training GPU, 30% of its memory,
    no separate server). Needs a CUDA GPU and the vllm package; raises InvalidRequestError
    (param "rollout_backend") otherwise, and for an unknown backend name.
    """
    if backend == "transformers":
        return {"use_vllm": False}
    if backend == "vllm":
        import importlib.util

        if not torch.cuda.is_available():
            raise InvalidRequestError("the vllm rollout backend needs a CUDA GPU; on CPU use 'transformers'",
                                      param="rollout_backend")
        if importlib.util.find_spec("vllm") is None:
            raise InvalidRequestError("the vllm rollout backend needs the vllm package (pip install vllm)",
                                      param="rollout_backend")
        return {"use_vllm": True, "vllm_mode": "colocate", "vllm_gpu_memory_utilization": 0.3}
    raise InvalidRequestError(f"unknown rollout backend {backend!r} (known: {', '.join(ROLLOUT_BACKENDS)})",
                              param="rollout_backend")


def sample_completions(model, tokenizer, prompts: list[str], *, max_new_tokens: int, temperature: float,
                       eos_ids: list[int], seed: int, before_batch: Callable[[], None] | None = None) -> list[str]:
    """Sample one completion per prompt text with the live (training) model, EVAL_BATCH_ROWS rows per
    left-padded generate() call, under a private RNG seeded with `seed` (the training run's RNG
    stream is left as it was). The model is put back in train mode afterwards. before_batch is
    called before every generate() call but the first (it raises to stop the sampling: a cancel)."""
    from transformers import GenerationConfig

    gen = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature, top_p=1.0,
                           top_k=0, eos_token_id=eos_ids, pad_token_id=tokenizer.pad_token_id)
    device = next(model.parameters()).device
    texts: list[str] = []
    model.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            for start in range(0, len(prompts), EVAL_BATCH_ROWS):
                if start and before_batch is not None:
                    before_batch()
                ids = [torch.tensor(x) for x in tokenizer(text=prompts[start:start + EVAL_BATCH_ROWS])["input_ids"]]
                width = max(len(x) for x in ids)
                input_ids = torch.full((len(ids), width), tokenizer.pad_token_id, dtype=torch.long)
                mask = torch.zeros((len(ids), width), dtype=torch.long)
                for r, x in enumerate(ids):
                    input_ids[r, width - len(x):], mask[r, width - len(x):] = x, 1
                out = model.generate(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                                     generation_config=gen)
                for row in out[:, width:].tolist():
                    cut = next((i for i, t in enumerate(row) if t in eos_ids), len(row))
                    texts.append(tokenizer.decode(row[:cut], skip_special_tokens=True))
    finally:
        model.train()
    return texts
