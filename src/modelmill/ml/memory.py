"""Precision, quantisation, activation checkpointing and the sequence limit of one training run,
decided in one visible place: `plan_memory(model, device, requested) -> MemoryPlan`.

The rule (docs/models.md, "Precision, memory and sequence length", says the same for users):

1. Weights. A CUDA GPU with bf16 support: bfloat16 weights, TRL bf16=True. Anything else: float32
   (on CPU bf16 autocast is about 20x slower, docs: OFFLINE.md), exactly as before this module.
2. max_seq_len. Requested (a job's metadata "modelmill.max_seq_len", or the config): that, if the
   model's context allows it. Otherwise min(model context, memory cap), where the memory cap is the
   longest length L (a multiple of 128) at which one step of batch_size examples of L tokens fits the
   device's whole memory budget with the cheapest settings the request allows (checkpointing on, and
   nf4 on CUDA unless quantisation is "none"). The cap uses the device's total memory, not what is
   free right now, so the limit of a job is the same on every attempt on the same kind of machine.
3. Quantisation. "nf4" requested: QLoRA (4-bit NormalFloat weights through bitsandbytes, CUDA only:
   on CPU this is an error, never ignored). "none": no quantisation. "auto": nf4 on CUDA when the
   bf16 weights + LoRA + activations (with checkpointing on) of the longest step do not fit the
   GPU's free memory; never on CPU.
4. Activation (gradient) checkpointing. Requested: that. Otherwise on when the estimated peak of
   the longest step without it exceeds the budget (CUDA: free memory; CPU: CPU_MEMORY_SHARE of the
   RAM), and off otherwise, which is what every CPU run did before (speed, not memory, is the limit).

The estimate (bytes), for T tokens in one step (batch_size x rows_per_example x the longest example,
capped at max_seq_len), hidden size h, MLP width i, L layers, vocabulary V, element size e (4 in
fp32, 2 under bf16 autocast):
- weights: parameters x 4 (fp32) or 2 (bf16); nf4 stores the decoder's linear weights at
  NF4_BYTES_PER_PARAM and keeps the rest (embeddings, lm_head, norms) in bf16 (models.load_model);
- LoRA: r x (in + out) per linear layer, x 16 bytes (fp32 weight, gradient, two Adam moments);
- activations without checkpointing: L x T x (ACT_HIDDEN x h + ACT_MLP x i) x e; with it, each
  layer keeps only its input (L x T x h x e) plus one layer's full activations for the recompute;
- logits: T x V x 4 x LOGITS_COPIES (the loss upcasts them to fp32);
- RUNTIME_BYTES for the framework itself (CUDA context, Python heap).
The factors are measured, not derived: see the constants. Attention scores (T^2) are not counted:
SDPA's fused kernels (flash on CUDA and on CPU) never store them; an 11,614-token step of
modelmill-tiny (4 heads) peaked at 5.0 GB, where storing them would have added about 4 GB.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from modelmill.errors import InvalidRequestError

GIB = 1024**3
QUANTIZATIONS = ("auto", "none", "nf4")
# nf4 with double quantisation (QLoRA paper, section 3): 4 bits per weight, one fp8 absmax per
# block of 64, one fp32 second-level constant per 256 blocks: 4 + 8/64 + 32/(64*256) bits.
NF4_BYTES_PER_PARAM = (4 + 8 / 64 + 32 / (64 * 256)) / 8
LORA_BYTES_PER_PARAM = 16  # fp32 weight + gradient + Adam's two moments
# Activations a decoder layer keeps for the backward pass, per token, in elements of the hidden and
# MLP widths. Korthikanti et al. 2022 count 34 bytes x h in 16-bit (17 elements) for a 4h MLP; eager
# fp32 with LoRA keeps more (RMSNorm inputs, rotary copies, SwiGLU's gate/up/product, each LoRA
# path's input). Checked on CPU, fp32, 2026-12-02 (peak RSS of one SFT step): SmolLM2-135M with
# 1 x 2,003 tokens measured 7.8 GB, this estimate 7.2 GB (+0.5 GB for a second model copy the
# measuring script held); 4 x 1,024 tokens measured 14.5 GB (sft.py), estimated 13.4 GB.
ACT_HIDDEN = 20
ACT_MLP = 6
# fp32 logits and their gradient: modelmill-tiny (vocabulary 49,152), one step of 11,614 tokens peaked
# at 5.0 GB RSS, almost all of it logits; the estimate says 5.8 GB.
LOGITS_COPIES = 2
RUNTIME_BYTES = 1 * GIB  # CUDA context and cuBLAS workspace, or the Python/torch heap on CPU
CPU_MEMORY_SHARE = 0.75  # of the machine's RAM a CPU run may plan to use (the OS, the API, other jobs)
CUDA_MEMORY_SHARE = 0.9  # of the GPU's memory: allocator fragmentation
SEQ_LEN_STEP = 128  # the memory cap is rounded down to a multiple of this
MIN_SEQ_LEN = 128  # the cap never goes below this (a model that cannot fit 128 tokens fails when it runs)


@dataclass(frozen=True)
class Device:
    """The accelerator a run trains on, as plan_memory sees it."""

    kind: str  # "cpu" | "cuda"
    name: str  # shown in the event, e.g. "NVIDIA H200" or "cpu"
    total_bytes: int  # all of the device's memory (GPU memory, or the machine's RAM)
    free_bytes: int  # free now (torch.cuda.mem_get_info; MemAvailable on CPU)
    bf16: bool  # bf16 weights and autocast are supported and fast (CUDA with bf16 only)


def detect_device() -> Device:
    """The device this process trains on: CUDA device 0 (what the Trainer uses) if present, else the CPU."""
    import torch

    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        return Device("cuda", torch.cuda.get_device_name(), int(total), int(free),
                      bool(torch.cuda.is_bf16_supported()))
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return Device("cpu", "cpu", int(total), _mem_available(total), False)


def _mem_available(default: int) -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return default


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs of a causal LM: sizes from its config, parameters counted."""

    params: int  # all parameters (tied embeddings counted once)
    quantizable_params: int  # parameters of the decoder layers' linear layers (what nf4 stores in 4 bits)
    hidden: int  # hidden size h
    intermediate: int  # MLP width i
    layers: int
    vocab: int
    context: int | None  # max_position_embeddings; None = the config states none
    lora_params_per_rank: int  # LoRA parameters at r=1 on every decoder linear layer (PEFT "all-linear")

    @classmethod
    def of(cls, config, params: int | None = None) -> "ModelShape":
        """From a transformers config (a Llama-style decoder); `params` counted from the weights when
        known, else computed from the config."""
        cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
        h, layers, heads = cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads
        kv = getattr(cfg, "num_key_value_heads", None) or heads
        head_dim = getattr(cfg, "head_dim", None) or h // heads
        i = getattr(cfg, "intermediate_size", None) or 4 * h
        q, k = heads * head_dim, kv * head_dim
        # (in, out) of q, k, v, o, gate, up, down in one decoder layer
        shapes = ((h, q), (h, k), (h, k), (q, h), (h, i), (h, i), (i, h))
        linear = layers * sum(a * b for a, b in shapes)
        embeddings = cfg.vocab_size * h * (1 if getattr(cfg, "tie_word_embeddings", False) else 2)
        total = params if params is not None else linear + embeddings + layers * 2 * h + h
        return cls(params=int(total), quantizable_params=int(min(linear, total)), hidden=h, intermediate=i,
                   layers=layers, vocab=cfg.vocab_size, context=getattr(cfg, "max_position_embeddings", None),
                   lora_params_per_rank=layers * sum(a + b for a, b in shapes))


def model_shape(model_dir: Path) -> ModelShape:
    """The shape of the HF model in `model_dir`: its config, and its parameters counted from the
    safetensors headers (no weights are read)."""
    from safetensors import safe_open
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=False)
    params = 0
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            for key in st.keys():
                n = 1
                for d in st.get_slice(key).get_shape():
                    n *= d
                params += n
    return ModelShape.of(config, params or None)


def model_context(model_dir: Path) -> int | None:
    """max_position_embeddings from config.json (a cheap read: no transformers import); None if unknown."""
    try:
        cfg = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    cfg = cfg.get("text_config", cfg)
    value = cfg.get("max_position_embeddings")
    return int(value) if isinstance(value, int) else None


@dataclass(frozen=True)
class MemoryRequest:
    """What a run asks for; every None / "auto" is decided by plan_memory."""

    batch_size: int = 1  # examples per optimizer step
    rows_per_example: int = 1  # sequences the model runs per example in one step: DPO 2, RFT the group size
    longest_example: int | None = None  # tokens of the longest example, untruncated; None = assume max_seq_len
    max_seq_len: int | None = None  # tokens; None = min(model context, memory cap)
    quantization: str = "auto"  # "auto" | "none" | "nf4"
    quantization_from: str = "the config"  # who asked, for the why and errors: "job metadata ...", "MODELMILL_..."
    gradient_checkpointing: bool | None = None  # None = from the estimate
    lora_r: int = 8  # LoRA rank (its optimizer state is part of the estimate)


@dataclass(frozen=True)
class MemoryPlan:
    """The resolved choices, each with why."""

    device: str  # "cpu" | "cuda"
    dtype: str  # "float32" | "bfloat16": the base weights (and autocast)
    dtype_why: str
    quantization: str  # "none" | "nf4"
    quantization_why: str
    gradient_checkpointing: bool
    gradient_checkpointing_why: str
    max_seq_len: int
    max_seq_len_why: str
    context_length: int | None  # the model's max_position_embeddings
    estimated_peak_bytes: int  # the longest step with these choices
    budget_bytes: int  # what the estimate was compared with

    @property
    def bf16(self) -> bool:
        return self.dtype == "bfloat16"

    def event(self) -> tuple[str, dict]:
        """The job event's message and data."""
        precision = {"float32": "fp32", "bfloat16": "bf16"}[self.dtype]
        message = (f"Precision: {precision} ({self.dtype_why}); quantisation: {self.quantization} "
                   f"({self.quantization_why}); gradient checkpointing: "
                   f"{'on' if self.gradient_checkpointing else 'off'} ({self.gradient_checkpointing_why}); "
                   f"max sequence length {self.max_seq_len} ({self.max_seq_len_why})")
        data = {"device": self.device, "dtype": self.dtype, "dtype_why": self.dtype_why,
                "quantization": self.quantization, "quantization_why": self.quantization_why,
                "gradient_checkpointing": self.gradient_checkpointing,
                "gradient_checkpointing_why": self.gradient_checkpointing_why,
                "max_seq_len": self.max_seq_len, "max_seq_len_why": self.max_seq_len_why,
                "context_length": self.context_length, "estimated_peak_bytes": self.estimated_peak_bytes,
                "memory_budget_bytes": self.budget_bytes}
        return message, data


def plan_memory(model: ModelShape, device: Device, requested: MemoryRequest) -> MemoryPlan:
    """Resolve dtype, quantisation, checkpointing and max_seq_len by the rule in the module docstring.

    Raises InvalidRequestError: param "quantization" (code quantization_unsupported) for nf4 on a
    device without CUDA or an unknown value; param "max_seq_len" (code invalid_max_seq_len) for a
    requested limit below 1 or above the model's context.
    """
    quant_asked = _checked_quantization(requested, device)
    dtype, dtype_why = (("bfloat16", f"CUDA GPU {device.name} supports bf16") if device.bf16 else
                        ("float32", "CPU" if device.kind == "cpu" else f"{device.name} has no bf16"))
    max_seq_len, seq_why = _max_seq_len(model, device, requested, dtype, quant_asked)
    longest = min(requested.longest_example or max_seq_len, max_seq_len)
    tokens = requested.batch_size * requested.rows_per_example * longest
    budget = _budget(device, device.free_bytes)
    ckpt_asked = requested.gradient_checkpointing

    def peak(quant: str, ckpt: bool) -> int:
        return estimate_bytes(model, tokens, dtype=dtype, quantization=quant, checkpointing=ckpt,
                              lora_r=requested.lora_r)

    if quant_asked == "auto":
        unquantised = peak("none", True if ckpt_asked is None else ckpt_asked)
        quant = "nf4" if device.kind == "cuda" and unquantised > budget else "none"
        if device.kind == "cpu":
            quant_why = "auto: CPU"
        else:
            fits = "estimated fits" if quant == "none" else "estimated unquantised >"
            quant_why = f"auto: {_gb(unquantised)} {fits} {_gb(budget)} free"
    else:
        quant, quant_why = quant_asked, f"requested by {requested.quantization_from}"
    if ckpt_asked is not None:
        ckpt, ckpt_why = ckpt_asked, "requested"
    else:
        without = peak(quant, False)
        ckpt = without > budget
        ckpt_why = f"estimated peak {_gb(without)} {'>' if ckpt else '<='} {_gb(budget)} budget without it"
    return MemoryPlan(device=device.kind, dtype=dtype, dtype_why=dtype_why, quantization=quant,
                      quantization_why=quant_why, gradient_checkpointing=ckpt, gradient_checkpointing_why=ckpt_why,
                      max_seq_len=max_seq_len, max_seq_len_why=seq_why, context_length=model.context,
                      estimated_peak_bytes=peak(quant, ckpt), budget_bytes=budget)


def estimate_bytes(model: ModelShape, tokens: int, *, dtype: str, quantization: str, checkpointing: bool,
                   lora_r: int = 8) -> int:
    """Estimated peak memory of one training step over `tokens` tokens (see the module docstring)."""
    weight_bytes = 2 if dtype == "bfloat16" else 4
    if quantization == "nf4":
        rest = model.params - model.quantizable_params
        weights = model.quantizable_params * NF4_BYTES_PER_PARAM + rest * weight_bytes
    else:
        weights = model.params * weight_bytes
    lora = lora_r * model.lora_params_per_rank * LORA_BYTES_PER_PARAM
    e = 2 if dtype == "bfloat16" else 4
    per_layer = tokens * (ACT_HIDDEN * model.hidden + ACT_MLP * model.intermediate) * e
    activations = (model.layers * tokens * model.hidden * e + per_layer) if checkpointing else model.layers * per_layer
    logits = tokens * model.vocab * 4 * LOGITS_COPIES
    return int(weights + lora + activations + logits + RUNTIME_BYTES)


def _checked_quantization(requested: MemoryRequest, device: Device) -> str:
    q = requested.quantization
    if q not in QUANTIZATIONS:
        raise InvalidRequestError(f"quantization must be one of {', '.join(QUANTIZATIONS)}, got {q!r} "
                                  f"(from {requested.quantization_from})", param="quantization",
                                  code="quantization_unsupported")
    if q == "nf4" and device.kind != "cuda":
        raise InvalidRequestError(f"nf4 quantisation (QLoRA) was requested by {requested.quantization_from}, but "
                                  "this worker has no CUDA GPU: bitsandbytes' 4-bit kernels need one. Use "
                                  "'none' or 'auto' on CPU", param="quantization", code="quantization_unsupported")
    return q


def _max_seq_len(model: ModelShape, device: Device, requested: MemoryRequest, dtype: str,
                 quant_asked: str) -> tuple[int, str]:
    context = model.context
    asked = requested.max_seq_len
    if asked is not None:
        if isinstance(asked, bool) or not isinstance(asked, int) or asked < 1:
            raise InvalidRequestError(f"max_seq_len must be a positive integer, got {asked!r}", param="max_seq_len",
                                      code="invalid_max_seq_len")
        if context is not None and asked > context:
            raise InvalidRequestError(f"max_seq_len {asked} is longer than the model's context of {context} tokens",
                                      param="max_seq_len", code="invalid_max_seq_len")
        return asked, f"requested (model context {context})" if context else "requested"
    cap = memory_cap(model, device, requested, dtype, quant_asked)
    if context is not None and context <= cap:
        return context, f"model context {context}"
    if context is None:
        return cap, "memory estimate; the model's config states no context length"
    return cap, f"memory estimate for batches of {requested.batch_size}; model context {context}"


def memory_cap(model: ModelShape, device: Device, requested: MemoryRequest, dtype: str, quant_asked: str) -> int:
    """The longest sequence (a multiple of SEQ_LEN_STEP, at least MIN_SEQ_LEN) whose step fits the
    device's total memory budget with the cheapest settings allowed (checkpointing on unless refused,
    nf4 on CUDA unless refused). Binary search over the estimate, which grows with the length."""
    quant = "nf4" if device.kind == "cuda" and quant_asked in ("auto", "nf4") else "none"
    ckpt = requested.gradient_checkpointing is not False
    budget = _budget(device, device.total_bytes)
    rows = requested.batch_size * requested.rows_per_example

    def fits(length: int) -> bool:
        return estimate_bytes(model, rows * length, dtype=dtype, quantization=quant, checkpointing=ckpt,
                              lora_r=requested.lora_r) <= budget

    if model.context is not None and fits(model.context):
        return model.context
    lo, hi = 0, (model.context or 1 << 20) // SEQ_LEN_STEP + 1  # in steps of SEQ_LEN_STEP: lo fits, hi does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid * SEQ_LEN_STEP) else (lo, mid)
    return max(MIN_SEQ_LEN, lo * SEQ_LEN_STEP)


def _budget(device: Device, available: int) -> int:
    if device.kind == "cuda":
        return int(available * CUDA_MEMORY_SHARE)
    # CPU: a share of the RAM, not of what is free this second: the same machine gives the same plan
    return int(device.total_bytes * CPU_MEMORY_SHARE)


def _gb(n: int) -> str:
    return f"{n / GIB:.1f} GB"


# ---------------------------------------------------------------- examples against the limit


@dataclass(frozen=True)
class ExampleLength:
    """How long one example is in training, counted with the same tokenization training uses."""

    line: int  # 1-based line in its file
    tokens: int  # SFT: the conversation; DPO: prompt + the longer answer; RFT: prompt + completion budget
    detail: str = ""  # how the count is made up, e.g. "prompt 836 + completion budget 64"


def over_limit(lengths: list[ExampleLength], max_seq_len: int) -> list:
    """One data.LineProblem (code example_too_long) per example longer than max_seq_len, in file order."""
    from modelmill.ml.types import LineProblem

    return [LineProblem(x.line, "", "example_too_long",
                        f"{x.tokens} tokens{f' ({x.detail})' if x.detail else ''}, over the limit of {max_seq_len}")
            for x in lengths if x.tokens > max_seq_len]
