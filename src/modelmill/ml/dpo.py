"""Direct preference optimisation (DPO) with LoRA: TRL's DPOTrainer + PEFT, reporting through a Reporter.

The story of one run (`train_dpo`):
1. Read the preference file through ml.data ("preference" lines -> PreferencePair) and render
   each pair as three strings (see `render_pair`): the prompt with the model's chat template and
   a generation prompt, and each answer as the template renders an assistant turn (content or
   tool calls, in the model's format) closed by its end-of-turn token. TRL tokenizes prompt+answer itself.
2. Build a DPOTrainer with a fresh LoRA adapter, or the `init_adapter` of an earlier fine-tune
   loaded trainable, and ref_model=None (see "The reference model").
3. Resume, train, report, checkpoint, pause and cancel exactly as SFT does
   (ml/trainer_common.py and trainer_hooks.py hold that machinery; ml/checkpoints.py the output directory layout).
4. Save the trained adapter alone to output_dir/adapter: one PEFT adapter dir for the base
   model, loaded by the sampler like any SFT adapter.

The reference model. DPO's loss compares the policy's log-probs with a frozen reference's.
No second copy of the model is ever loaded (TRL does this when ref_model is None and the
policy is a PeftModel):
- fresh LoRA: the reference is the base model, i.e. the policy with its adapter disabled.
- init_adapter (continuing an ft: model, usually an SFT one): the reference is that starting
  model, as in OpenAI's and TRL's practice (SFT, then DPO against the SFT model). TRL adds a
  frozen copy of the starting adapter named "ref" (a LoRA's worth of memory, not a model's)
  and computes reference log-probs with it active; training keeps updating the same adapter,
  so the result is still one adapter over the base model. Only that adapter is saved.

Metrics (reporter.on_step), OpenAI's names where they exist: train_loss, valid_loss,
full_valid_loss (epoch end), plus <prefix>_reward_margin (mean beta * (policy-minus-reference
log-ratio of chosen - that of rejected)), <prefix>_reward_accuracy (share of pairs with a
positive margin), <prefix>_chosen_logps and <prefix>_rejected_logps (mean summed log-prob of
each answer under the policy), for prefix train / valid / full_valid.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from modelmill.errors import InvalidRequestError, TrainingError
from modelmill.ml import chat_format, data, memory, run_config, vision, vision_train
from modelmill.ml import trainer_common as common
from modelmill.ml.report import Reporter
from modelmill.ml.run_config import RunConfig, resolve_run_hyperparameters
from modelmill.ml.trainer_hooks import ReporterHooks
from modelmill.ml.types import PreferencePair, TrainResult

# LoRA learning rate at learning_rate_multiplier=1.0: half of SFT's, since DPO moves a model
# that already answers well and a large step collapses both answers' log-probs together.
BASE_LEARNING_RATE = 1e-4
AUTO_BETA = 0.1  # the DPO paper's and TRL's default strength of the pull towards the reference
# "auto" weight of the SFT term on the preferred answer (DPOConfig.sft_weight; job metadata
# modelmill.dpo_sft_weight). Measured on the dpo_arith story's data and seeds (BENCHMARKS.md, "Learning
# results"), weights 0, 0.3 and 1 side by side: DPO's loss alone let the preferred answers' own likelihood
# fall with the rejected ones' (chained SFT -> DPO task accuracy 0.40 -> 0.12); 0.3 kept and raised it
# (0.42) and, from the base model, kept held-out preference accuracy at 0.71 (1.0: 0.45 chained, 0.68).
AUTO_SFT_WEIGHT = 0.3
BETA_LIMITS = (1e-3, 2.0)  # OpenAI's accepted range for beta
# TRL's logged metric -> our metric suffix (the prefix is train_ / valid_ / full_valid_).
TRL_METRICS = {"rewards/margins": "reward_margin", "rewards/accuracies": "reward_accuracy",
               "logps/chosen": "chosen_logps", "logps/rejected": "rejected_logps"}
METRIC_NAMES = tuple(f"{prefix}_{name}" for prefix in ("train", "valid", "full_valid")
                     for name in ("loss", *TRL_METRICS.values()))


def resolve_dpo_hyperparameters(requested: dict, n_train_examples: int) -> dict:
    """Resolve "auto" (or missing) DPO hyperparameters; explicit values are checked and kept.

    The "auto" rule: n_epochs, batch_size and learning_rate_multiplier follow SFT's rule
    (run_config.resolve_run_hyperparameters: about 100 example-passes at least, 3 epochs typically;
    batch the largest power of two <= n/10 capped at 4; multiplier 1.0, here meaning a LoRA
    learning rate of BASE_LEARNING_RATE = 1e-4). beta: 0.1.

    Returns {"n_epochs", "batch_size", "learning_rate_multiplier", "beta"}.
    Raises InvalidRequestError (param "hyperparameters.<key>") for a bad explicit value.
    """
    requested = requested or {}
    resolved = resolve_run_hyperparameters({k: v for k, v in requested.items() if k != "beta"}, n_train_examples)
    beta = requested.get("beta", "auto")
    if beta in ("auto", None):
        resolved["beta"] = AUTO_BETA
        return resolved
    lo, hi = BETA_LIMITS
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not (lo <= beta <= hi):
        raise InvalidRequestError(f"beta must be 'auto' or a number between {lo:g} and {hi:g}, got {beta!r}",
                                  param="hyperparameters.beta")
    resolved["beta"] = float(beta)
    return resolved


@dataclass(frozen=True, kw_only=True)
class DPOConfig(RunConfig):
    """One DPO run: the shared RunConfig fields (paths, seed, schedule, LoRA, precision...; train_path holds
    preference lines, data.methods.validate_preference_line; batch_size counts pairs; init_adapter is also the
    reference) plus DPO's own. Build it once (the worker or a notebook) and pass it to train_dpo."""

    eval_every_steps: int = 5  # valid_* on one validation batch every N steps; 0 = only at epoch ends
    beta: float = AUTO_BETA  # DPO temperature: higher keeps the policy closer to the reference
    # Weight of a supervised term (the preferred answer's mean per-token negative log-likelihood) added to
    # DPO's loss: TRL's loss_type ["sigmoid", "sft"], the RPO paper's alpha. 0 = DPO's loss alone.
    sft_weight: float = AUTO_SFT_WEIGHT

    def plan_run(self, tokenizer):
        """(this config with max_seq_len, quantization and gradient_checkpointing resolved, its
        memory.MemoryPlan); raises DataValidationError naming over-long examples: trainer_common.plan_run."""
        return common.plan_run(self, tokenizer, example_lengths, rows_per_example=2)


def render_pair(tokenizer, pair: PreferencePair) -> dict[str, str]:
    """{"prompt", "chosen", "rejected"} strings for TRL.

    The prompt is the input rendered with the model's chat template and its generation prompt,
    exactly what sampling feeds the model. Each answer is the text the template adds for that
    assistant message after the prompt (chat_format.assistant_turn), so content and tool calls come
    out in the model's own format, ending with its end-of-turn token (<|im_end|> for ChatML, the
    tokenizer's EOS, so TRL adds none).
    """
    prompt = chat_format.render(tokenizer, pair.input_messages, pair.tools, add_generation_prompt=True)
    out = {"prompt": prompt}
    for key, answer in (("chosen", pair.chosen), ("rejected", pair.rejected)):
        try:
            _, out[key], _ = chat_format.assistant_turn(tokenizer, pair.input_messages, answer, pair.tools)
        except ValueError as e:
            raise TrainingError(f"line {pair.line}: cannot split the {key} answer from the prompt: {e}") from e
    return out


def train_dpo(config: DPOConfig, reporter: Reporter) -> TrainResult:
    """Train a LoRA adapter with DPO on config.train_path; see the module docstring for the story.

    Returns TrainResult with status "succeeded" (adapter at output_dir/adapter), "cancelled"
    or "paused" (a later call with the same config resumes from the pause checkpoint).
    Raises DataValidationError for an invalid file, TrainingError when training fails.
    """
    reference = "the starting adapter" if config.init_adapter else "the base model"
    return common.train(config, reporter, load_dataset=_load_dataset, hooks_cls=_DPOHooks,
                        build_trainer=_build_trainer, example_lengths=example_lengths, rows_per_example=2,
                        describe=lambda ds: f"Training on {len(ds)} preference pairs for {config.n_epochs} "
                                            f"epoch(s), batch size {config.batch_size}, beta {config.beta:g}; "
                                            f"loss: {_loss_name(config)}; reference: {reference}")


def _loss_name(config: DPOConfig) -> str:
    if not config.sft_weight:
        return "DPO"
    return f"DPO + {config.sft_weight:g} x the preferred answer's NLL (modelmill.dpo_sft_weight)"


def pair_tokens(tokenizer, row: dict[str, str]) -> int:
    """Tokens of prompt + the longer answer as TRL's DPOTrainer builds the sequence it trains on
    (it tokenizes prompt + answer as one text, then splits at the prompt)."""
    return max(len(tokenizer(text=row["prompt"] + row[k])["input_ids"]) for k in ("chosen", "rejected"))


def example_lengths(path: Path, tokenizer, config: DPOConfig) -> list[memory.ExampleLength]:
    """Each pair's tokens (pair_tokens): trainer_common.plan_run's input."""
    if vision.is_vision_dir(config.base_dir):  # images expanded to their tokens (ml/vision_train.py)
        processor, items = vision_train.preference_examples(path, config)
        return [memory.ExampleLength(p.line, pair_tokens(tokenizer, render_pair(tokenizer, p))
                                     + vision_train.image_token_count(processor, images), "prompt + the longer answer")
                for p, images in items]
    return [memory.ExampleLength(p.line, pair_tokens(tokenizer, render_pair(tokenizer, p)),
                                 "prompt + the longer answer")
            for p in data.read_examples(Path(path), "preference", min_examples=1)]



def _load_dataset(path: Path, label: str, tokenizer, config: DPOConfig, reporter: Reporter):
    """Render a preference JSONL into a datasets.Dataset of prompt / chosen / rejected strings.

    Pairs longer than max_seq_len only get here with config.truncation (plan_run refuses them
    otherwise): TRL cuts the end of the sequence, and drops a pair whose prompt alone fills
    max_seq_len; they are counted in one warn event.
    """
    from datasets import Dataset

    images = None
    if vision.is_vision_dir(config.base_dir):  # prompts with images: TRL's vision path (ml/vision_train.py)
        processor, items = vision_train.preference_examples(path, config)
        pairs, images = [p for p, _ in items], [imgs for _, imgs in items]
        extra = [vision_train.image_token_count(processor, imgs) for imgs in images]
    else:  # min_examples=1: the service enforces its own minimum at validation time.
        pairs = data.read_examples(Path(path), "preference", min_examples=1)
        extra = [0] * len(pairs)
    rows = [render_pair(tokenizer, p) for p in pairs]
    too_long = sum(pair_tokens(tokenizer, r) + x > config.max_seq_len for r, x in zip(rows, extra))
    if too_long:
        reporter.on_event("warn", f"{too_long} of {len(rows)} {label} pairs are longer than {config.max_seq_len} "
                                  f"tokens and were truncated",
                          {"file": label, "truncated_examples": too_long, "max_seq_len": config.max_seq_len})
    columns = {k: [r[k] for r in rows] for k in ("prompt", "chosen", "rejected")}
    if images is not None:  # each image's OpenAI detail rides beside it (vision_train.preference_collator)
        columns.update(images=images, image_details=[[vision.detail_of(img) for img in imgs] for imgs in images])
    return Dataset.from_dict(columns)


def _build_trainer(config: DPOConfig, model, tokenizer, train_ds, valid_ds, callback):
    """TRL DPOTrainer over the rendered pairs; the trainer saves into output_dir/.staging.
    ref_model=None: TRL uses the policy with its adapter disabled as the reference."""
    from trl import DPOConfig as TRLDPOConfig
    from trl import DPOTrainer

    is_vlm = vision.is_vision_dir(config.base_dir)
    loss = {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, config.sft_weight]} if config.sft_weight else {}
    args = TRLDPOConfig(**run_config.trainer_args(config, BASE_LEARNING_RATE), beta=config.beta,
                        truncation_mode="keep_start", **loss, **({"remove_unused_columns": False} if is_vlm else {}))
    # A VLM trains through TRL's vision path, with each image expanded at its own detail
    # (vision_train.preference_collator; remove_unused_columns=False keeps the image_details column).
    processing_class = vision.load_processor(config.base_dir) if is_vlm else tokenizer
    trainer = DPOTrainer(model=model, ref_model=None, args=args, train_dataset=train_ds,
                         eval_dataset=common.eval_datasets(config, valid_ds), processing_class=processing_class,
                         peft_config=run_config.lora_config(config), callbacks=[callback],
                         data_collator=vision_train.preference_collator(processing_class) if is_vlm else None)
    return common.finish_trainer_setup(trainer, callback)


class _DPOHooks(ReporterHooks):
    """DPO's metrics: loss, reward margin/accuracy and answer log-probs (train, valid batch, full valid)."""

    METRIC_NAMES = METRIC_NAMES
    config: DPOConfig

    def train_metrics(self, logs: dict) -> dict[str, float]:
        out = {"train_loss": logs["loss"]}
        out.update({f"train_{ours}": logs[trl] for trl, ours in TRL_METRICS.items() if trl in logs})
        return out

    def eval_metrics(self, name: str, metrics: dict) -> dict[str, float]:
        # TRL names its own metrics eval_* whatever the prefix (DPOTrainer.log); the loss follows the prefix.
        out = {f"{name}_loss": metrics[f"{name}_loss"]}
        out.update({f"{name}_{ours}": metrics[f"eval_{trl}"] for trl, ours in TRL_METRICS.items()
                    if f"eval_{trl}" in metrics})
        return out
