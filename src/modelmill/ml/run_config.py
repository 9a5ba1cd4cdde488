"""What every LoRA training run has, whatever the method: `RunConfig` (paths, seed, schedule, LoRA,
precision and memory, checkpoints, final-model choice) and the shared "auto" rule for the OpenAI
hyperparameters every method takes (`resolve_run_hyperparameters`).

Each method's config (sft.SFTConfig, dpo.DPOConfig, rft.RFTConfig) is a RunConfig subclass that adds
only its own fields (SFT: padding_free; DPO: beta; RFT: the grader and GRPO's knobs), and
ml/trainer_common.py, which runs every method's trainer, takes a RunConfig.

Why subclasses and not a `run: RunConfig` field inside each method's config: the worker builds every
method's config from one flat set of keyword arguments (service/jobs/methods.py), and the trainers, the
worker, the benches and the tests read `config.seed` or copy a config with
`dataclasses.replace(config, output_dir=...)` in about 60 places. Containment would turn each of those
into `config.run.seed` / `replace(config, run=replace(config.run, ...))` and make every reader know
which fields are shared; with inheritance the fields are declared once and each config stays one flat,
frozen value.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from modelmill.errors import InvalidRequestError

# The "auto" rule's constants (see resolve_run_hyperparameters).
TARGET_EPOCHS = 3
MIN_TARGET_EXAMPLES = 100
MAX_TARGET_EXAMPLES = 25_000
MAX_AUTO_EPOCHS = 10
EXAMPLES_PER_BATCH_ROW = 10
MAX_AUTO_BATCH_SIZE = 4
# Accepted ranges for explicit values (OpenAI's limits).
LIMITS = {"n_epochs": (1, 50), "batch_size": (1, 256), "learning_rate_multiplier": (1e-6, 10.0)}


@dataclass(frozen=True)
class RunConfig:
    """The fields every training method's config shares. Build the method's config (a subclass) once,
    in the worker or a notebook, and pass it to the method's train function."""

    base_dir: Path  # base model HF dir, from models.ensure_base
    train_path: Path  # training JSONL in the method's format (ml.data validates it)
    # Validation JSONL; None = no valid_* / full_valid_* metrics (RFT: hold out some training prompts instead)
    valid_path: Path | None
    output_dir: Path  # where checkpoints/ and adapter/ go (the job's directory); created if missing
    n_epochs: int  # passes over the training set (resolved, not "auto")
    batch_size: int  # examples (DPO: pairs, RFT: prompts) per optimizer step (resolved, not "auto")
    learning_rate_multiplier: float  # LR = the method's BASE_LEARNING_RATE * this
    # Seeds LoRA init, data order, dropout and sampling (RFT: the holdout split too); same seed + data = same run
    seed: int = 0
    # Continue training this LoRA adapter (an ft: model); None = a fresh LoRA. For DPO and RFT it is also
    # the reference model (None: the base model).
    init_adapter: Path | None = None
    # Tokens per example (DPO: prompt + the longer answer; RFT: prompt + completion budget);
    # None = ml/memory.plan_memory's limit (model context, capped by the memory estimate).
    max_seq_len: int | None = None
    # An example over max_seq_len: False = DataValidationError naming it; True = cut it (RFT: skip it), warn event
    truncation: bool = False
    quantization: str = "auto"  # "auto" | "none" | "nf4" (QLoRA, CUDA only): see ml/memory.py
    quantization_from: str = "the config"  # who asked for `quantization`, named in the plan's event and errors
    gradient_checkpointing: bool | None = None  # activation checkpointing; None = from the memory estimate
    image_hosts: tuple[str, ...] = ()  # hosts http(s) training images are fetched from (ml/vision.py); () = data: only
    lora_r: int = 8  # LoRA rank (ignored with init_adapter, which brings its own)
    lora_alpha: int = 16  # LoRA scaling numerator (effective scale alpha / r)
    lora_dropout: float = 0.0  # dropout on the LoRA path; 0 = none
    # Newest checkpoints kept in output_dir/checkpoints (plus the best-evaluated one when it may be
    # returned); older ones deleted
    keep_checkpoints: int = 3
    warmup_ratio: float = 0.0  # fraction of the steps with linear LR warm-up; then linear decay to 0
    # Stop once the method's selection metric (SFT/DPO full_valid_loss, RFT valid_reward_mean) has not
    # improved for this many evaluations in a row; None = train every epoch.
    early_stopping_patience: int | None = None
    final_model: str = "last"  # the adapter returned: "last" step (OpenAI's rule) or "best" by that metric
    # CPU threads torch may use during the run (restored afterwards); None = leave torch's setting.
    # 1 is several times faster whenever other processes share the cores (OpenMP threads stall).
    torch_threads: int | None = None


def resolve_run_hyperparameters(requested: dict | None, n_train_examples: int) -> dict:
    """Resolve "auto" (or missing) n_epochs, batch_size and learning_rate_multiplier; explicit values
    are checked and kept. SFT uses this rule as is; DPO and RFT add their own keys (and RFT its own
    n_epochs / batch_size "auto").

    The "auto" rule, for n = number of training examples:
    - n_epochs: 3, raised so that n * n_epochs reaches at least 100 example-passes
      (capped at 10 epochs, a CPU budget), lowered so it stays under 25,000 (at least 1).
      This is OpenAI's published default rule with a lower epoch cap.
    - batch_size: the largest power of two <= n / 10, between 1 and 4. Small datasets get
      small batches (more optimizer steps). The cap is CPU memory: one step of 4 x 1024
      tokens on SmolLM2-135M in fp32 peaks at about 14.5 GB (measured); 8 x 1024 would not
      fit a 24 GB machine.
    - learning_rate_multiplier: 1.0, i.e. the method's BASE_LEARNING_RATE (SFT: 2e-4).

    Returns {"n_epochs": int, "batch_size": int, "learning_rate_multiplier": float}.
    Raises InvalidRequestError (param "hyperparameters.<key>") for a value of the wrong type or out of range.
    """
    n = max(1, int(n_train_examples))
    auto = {"n_epochs": _auto_epochs(n), "batch_size": _auto_batch_size(n), "learning_rate_multiplier": 1.0}
    resolved = {}
    for key, default in auto.items():
        value = requested.get(key, "auto") if requested else "auto"
        resolved[key] = default if value in ("auto", None) else checked_hyperparameter(key, value)
    return resolved


def _auto_epochs(n: int) -> int:
    if n * TARGET_EPOCHS < MIN_TARGET_EXAMPLES:
        return min(MAX_AUTO_EPOCHS, math.ceil(MIN_TARGET_EXAMPLES / n))
    if n * TARGET_EPOCHS > MAX_TARGET_EXAMPLES:
        return max(1, MAX_TARGET_EXAMPLES // n)
    return TARGET_EPOCHS


def _auto_batch_size(n: int) -> int:
    rows = max(1, n // EXAMPLES_PER_BATCH_ROW)
    return min(MAX_AUTO_BATCH_SIZE, 2 ** (rows.bit_length() - 1))


def checked_hyperparameter(key: str, value) -> int | float:
    """An explicit n_epochs / batch_size / learning_rate_multiplier, type- and range-checked (LIMITS)."""
    lo, hi = LIMITS[key]
    is_int = key != "learning_rate_multiplier"
    ok_type = isinstance(value, int) if is_int else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or not (lo <= value <= hi) or not math.isfinite(value):
        kind = "an integer" if is_int else "a number"
        raise InvalidRequestError(f"{key} must be 'auto' or {kind} between {lo:g} and {hi:g}, got {value!r}",
                                  param=f"hyperparameters.{key}")
    return int(value) if is_int else float(value)


# ---------------------------------------------------------------- a RunConfig as TRL / PEFT arguments


def cuda_bf16() -> bool:
    """Train in bf16 mixed precision (fp32 weights, bf16 autocast) only on a CUDA GPU that supports it.
    On CPU stay in fp32: bf16 autocast there is ~20x slower (docs: OFFLINE.md)."""
    import torch

    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def trainer_args(config: RunConfig, base_learning_rate: float) -> dict:
    """The TRL config arguments SFT and DPO share: our schedule, fp32, and no saving or logging
    of TRL's own (the reporter callback decides when to evaluate and checkpoint)."""
    return dict(
        output_dir=str(Path(config.output_dir) / ".staging"),
        # Over N ranks (ml/distributed.py) each takes batch_size / N examples, so an optimizer step is
        # still batch_size examples and the run takes the same steps as in one process.
        num_train_epochs=config.n_epochs, per_device_train_batch_size=per_rank(config.batch_size),
        per_device_eval_batch_size=per_rank(config.batch_size),
        learning_rate=base_learning_rate * config.learning_rate_multiplier,
        lr_scheduler_type="linear", warmup_steps=config.warmup_ratio,  # a float < 1 is a ratio
        seed=config.seed, data_seed=config.seed, max_length=config.max_seq_len,
        bf16=cuda_bf16(), fp16=False,  # CPU: fp32 (bf16 autocast is ~20x slower there); CUDA: bf16 autocast
        # From the memory plan (ml/memory.py): off unless the estimate says the longest step needs it.
        activation_checkpointing=bool(config.gradient_checkpointing),
        logging_steps=1, save_strategy="no", eval_strategy="no",  # the callback decides when
        include_num_input_tokens_seen="non_padding", report_to="none", disable_tqdm=True,
        dataloader_num_workers=0, dataloader_pin_memory=False,
        ddp_find_unused_parameters=False,  # over ranks (DDP): every LoRA weight gets a gradient each step
        **fsdp_args())


def fsdp_args() -> dict:
    """Shard the model over the ranks (FSDP through accelerate) when ml/distributed.py planned it: the
    model does not fit one device. LoRA needs use_orig_params (frozen and trainable weights share flat
    parameters); the wrap policy is PEFT's (finish_trainer_setup), which wraps the LoRA layers apart."""
    from modelmill.ml.distributed import FSDP_ENV

    # Not a setting: the flag distributed._rank_main sets in each rank process it starts (the plan is made
    # in the parent, which reads Settings; TRL builds its arguments in the rank).
    if os.environ.get(FSDP_ENV) != "1":
        return {}
    return dict(fsdp="full_shard auto_wrap", fsdp_config={"use_orig_params": True})


def per_rank(batch_size: int) -> int:
    """Examples per rank when a run is split over distributed.world_size() ranks (it divides evenly:
    distributed.plan_processes chooses the rank count so)."""
    from modelmill.ml.distributed import world_size

    return max(1, batch_size // world_size())


def lora_config(config: RunConfig):
    """A fresh LoRA adapter on every linear layer, or None when continuing an existing adapter."""
    from peft import LoraConfig

    if config.init_adapter:
        return None
    return LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules="all-linear", bias="none", task_type="CAUSAL_LM")
