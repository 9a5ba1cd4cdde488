"""Reinforcement fine-tuning (RFT) with LoRA: TRL's GRPOTrainer + PEFT, rewards from ml.graders.

The story of one run (`train_rft`):
1. Read the reinforcement file through ml.data ("reinforcement" lines -> PromptExample). Without a
   validation file, hold out HOLDOUT_SHARE of the training prompts (chosen by the seed) as the
   validation set; the split is written to output_dir/data/ so a resumed run uses the same one.
2. Render each prompt with our chat template plus the reasoning instruction (ml/rft_grading.py
   explains the reasoning format and what the grader sees).
3. Build a GRPOTrainer with a fresh LoRA adapter (or the `init_adapter` of an earlier fine-tune).
   Each step samples `num_generations` completions for each of `batch_size` prompts in one batched
   generate() call (sampling.rollout_backend_args picks the backend), grades them with ONE
   graders.grade_batch call, and takes a GRPO step: group-normalised advantages, clipped policy
   ratio, plus beta * KL to the reference. With PEFT the reference is the policy with its adapter
   disabled (the base model), or TRL's frozen copy of the starting adapter with init_adapter; no
   second model copy is loaded.
4. Before the first step (not again on resume): grade one sample of the starting policy (the base
   model; with init_adapter, that adapter) for each of the first `base_check_prompts` validation
   prompts (info event "Base model reward ...", data {"base_reward", "samples"}); a warn event (data
   {"constant_reward", "samples"}) when every sample got the same reward; GraderFailedError when the
   grader failed on more than `base_max_error_share` of them.
5. Every `eval_interval` steps and at each epoch end: sample `eval_samples` completions for each
   validation prompt (the first `max_valid_items`) with the current policy, grade them:
   valid_reward_mean. Each evaluation also writes a checkpoint, so checkpoints are ranked by
   validation reward; the best one is never pruned. Grader errors here only count as reward 0.
6. Resume, pause, cancel, atomic checkpoints and the final adapter exactly as SFT/DPO
   (ml/trainer_common.py). The final adapter (output_dir/adapter) is the LAST policy; the info event
   {"best_checkpoint_step", "valid_reward_mean"} names the best-validated checkpoint, sent whenever
   the best changes and once more when the run succeeds.

Hyperparameters (OpenAI's names; `resolve_rft_hyperparameters` resolves "auto", its docstring has
the rule for each). How each one maps onto GRPO:

    OpenAI hyperparameter     GRPO / this module                                      auto
    batch_size                prompts per optimizer step (TRL's per-device batch       1 if n < 20, else 2
                              counts completions: batch_size * num_generations)
    n_epochs                  passes over the training prompts                         ceil(24 / n), 1..3
    learning_rate_multiplier  LoRA learning rate = BASE_LEARNING_RATE (5e-5) * this   1.0
    compute_multiplier        num_generations (group size) = round(4 * this),          1.0 -> 4
                              clamped to 2..32; rollouts per step = batch_size * that
    reasoning_effort          max_completion_length: low 64, medium 128, high 256      "default" -> low
                              completion tokens (reasoning + final answer)
    eval_interval             optimizer steps between validation evaluations           about 5 per run
                              (and checkpoints)
    eval_samples              completions sampled per validation prompt per eval       2

Steps per epoch are n // batch_size (TRL drops a last partial batch of prompts, a different one each
epoch since prompts are shuffled). Fixed choices (RFTConfig fields, documented there): KL beta 0.04
(the GRPO paper's), temperature 1.0, one GRPO iteration per generation (on-policy), TRL's "dapo"
token-level loss, advantages scaled by the group's reward std.

Metrics (reporter.on_step each step): train_reward_mean, train_reward_std, train_grader_error_rate,
train_grader_error_rate_<flag> (for each OpenAI metadata.errors flag seen so far in the run),
completion_tokens_mean, kl, train_loss; valid_reward_mean on evaluation steps.
Failures: errors.GraderFailedError (code "grader_error") when the grader fails on more than
`max_grader_error_share` of a step's samples; the message quotes one failing sample.
"""

from __future__ import annotations

import json
import math
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from modelmill.errors import InvalidRequestError, TrainingError
from modelmill.ml import chat_families, chat_format, data, graders, memory, sampling, sft
from modelmill.ml import trainer_common as common
from modelmill.ml.report import Reporter
from modelmill.ml.rft_grading import (ERROR_FLAGS, REASONING_INSTRUCTION, GraderReward, check_error_share,
                                      completion_sample, with_instruction)
from modelmill.ml.types import PromptExample, TrainResult

BASE_LEARNING_RATE = 5e-5  # LoRA learning rate at learning_rate_multiplier=1.0
AUTO_PROMPT_PASSES = 24  # "auto" n_epochs: at least this many prompt-passes (a CPU budget)
MAX_AUTO_EPOCHS = 3
MAX_AUTO_BATCH_SIZE = 2  # "auto" batch_size cap (prompts per step): rollouts are the CPU cost
BASE_GROUP_SIZE = 4  # num_generations at compute_multiplier 1.0
GROUP_SIZE_LIMITS = (2, 32)  # GRPO needs 2 to compare; 32 bounds one step's rollouts
COMPLETION_TOKENS = {"low": 64, "medium": 128, "high": 256}  # reasoning_effort -> max_completion_length
# What "default" resolves to. OpenAI's default is "medium"; on CPU a step's rollouts cost about 10 s at
# 64 tokens and 20 s at 128 (SmolLM2-135M, 1 prompt x 4 generations, 2 cores), so "low" keeps an
# "auto" run on a small file (about 27 steps) to about 5 minutes.
DEFAULT_EFFORT = "low"
AUTO_EVALS_PER_RUN = 5  # "auto" eval_interval: about this many evaluations over the run
AUTO_EVAL_SAMPLES = 2
HOLDOUT_SHARE = 0.1  # without a validation file: this share of the training prompts (at least 1, at most 50)
MAX_HOLDOUT = 50
EVAL_BATCH_ROWS = 16  # completions generated per generate() call when evaluating (bounds the KV cache)
CHECKPOINT_SCORE_FILE = "rft_valid_reward.json"  # in a checkpoint dir: its valid_reward_mean, for ranking

# The metrics reporter.on_step sends, in this order.
METRIC_NAMES = ("train_loss", "train_reward_mean", "train_reward_std", "valid_reward_mean", "kl",
                "completion_tokens_mean", "train_grader_error_rate",
                *(f"train_grader_error_rate_{flag}" for flag in ERROR_FLAGS))


def resolve_rft_hyperparameters(requested: dict, n_train_examples: int) -> dict:
    """Resolve "auto" (or missing) RFT hyperparameters; explicit values are checked and kept.

    The "auto" rule, for n training prompts (see the module docstring for what each one does):
    - n_epochs: ceil(24 / n) between 1 and 3, so a small file still gets tens of steps.
    - batch_size: the largest power of two <= n / 10, between 1 and 2 (prompts per step; each
      brings num_generations rollouts, the dominant CPU cost).
    - learning_rate_multiplier: 1.0 (a LoRA learning rate of 5e-5).
    - reasoning_effort: "default" -> "low" (64 completion tokens; a CPU budget, see DEFAULT_EFFORT).
    - compute_multiplier: 1.0 (4 generations per prompt).
    - eval_interval: ceil(total steps / 5), at least 1, where total steps = n_epochs * (n // batch_size).
    - eval_samples: 2.

    Returns {"n_epochs", "batch_size", "learning_rate_multiplier", "reasoning_effort",
    "compute_multiplier", "eval_interval", "eval_samples"}. Raises InvalidRequestError
    (param "hyperparameters.<key>") for a bad explicit value; ranges are OpenAI's
    (FineTuneReinforcementHyperparameters), learning_rate_multiplier as for SFT.
    """
    requested = requested or {}
    n = max(1, int(n_train_examples))

    def asked(key: str):
        value = requested.get(key, "auto")
        return None if value in ("auto", None) else value

    out = sft.resolve_sft_hyperparameters(  # explicit values checked with SFT's (OpenAI's) limits
        {k: requested[k] for k in ("n_epochs", "batch_size", "learning_rate_multiplier") if k in requested}, n)
    if asked("n_epochs") is None:
        out["n_epochs"] = min(MAX_AUTO_EPOCHS, max(1, math.ceil(AUTO_PROMPT_PASSES / n)))
    if asked("batch_size") is None:
        out["batch_size"] = min(MAX_AUTO_BATCH_SIZE, 2 ** (max(1, n // 10).bit_length() - 1))
    effort = requested.get("reasoning_effort", "default")
    if effort in ("default", None):
        effort = DEFAULT_EFFORT
    if effort not in COMPLETION_TOKENS:
        raise InvalidRequestError(f"reasoning_effort must be one of 'default', 'low', 'medium', 'high', got {effort!r}",
                                  param="hyperparameters.reasoning_effort")
    out["reasoning_effort"] = effort
    cm = asked("compute_multiplier")
    if cm is not None and (isinstance(cm, bool) or not isinstance(cm, (int, float)) or not 1e-5 < cm <= 10):
        raise InvalidRequestError(f"compute_multiplier must be 'auto' or a number in (0.00001, 10], got {cm!r}",
                                  param="hyperparameters.compute_multiplier")
    out["compute_multiplier"] = 1.0 if cm is None else float(cm)
    for key in ("eval_interval", "eval_samples"):
        value = asked(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise InvalidRequestError(f"{key} must be 'auto' or an integer >= 1, got {value!r}",
                                      param=f"hyperparameters.{key}")
    total_steps = out["n_epochs"] * max(1, n // out["batch_size"])
    out["eval_interval"] = asked("eval_interval") or max(1, math.ceil(total_steps / AUTO_EVALS_PER_RUN))
    out["eval_samples"] = asked("eval_samples") or AUTO_EVAL_SAMPLES
    return out


def group_size(compute_multiplier: float) -> int:
    """num_generations: completions sampled per prompt, compared with each other by GRPO."""
    lo, hi = GROUP_SIZE_LIMITS
    return min(hi, max(lo, round(BASE_GROUP_SIZE * compute_multiplier)))


@dataclass(frozen=True)
class RFTConfig:
    """One RFT run. Build it once (the worker or a notebook) and pass it to train_rft."""

    base_dir: Path  # base model HF dir, from models.ensure_base
    train_path: Path  # training JSONL of reinforcement lines (data.validate_reinforcement_line)
    valid_path: Path | None  # validation JSONL; None = hold out HOLDOUT_SHARE of the training prompts
    output_dir: Path  # where data/, checkpoints/ and adapter/ go (the job's directory); created if missing
    n_epochs: int  # passes over the training prompts (resolved, not "auto")
    batch_size: int  # prompts per optimizer step; each is sampled num_generations times
    learning_rate_multiplier: float  # LR = BASE_LEARNING_RATE * this
    grader: dict  # the reward: an OpenAI grader object, already validated (graders.validate_grader)
    grader_context: graders.GraderContext | None = None  # judge / sandbox / embedder; None = defaults
    reasoning_effort: str = DEFAULT_EFFORT  # "low" | "medium" | "high": the completion token budget
    compute_multiplier: float = 1.0  # group size = round(4 * this), 2..32 (group_size)
    eval_interval: int = 5  # valid_reward_mean (and a checkpoint) every N steps, plus at epoch ends
    eval_samples: int = AUTO_EVAL_SAMPLES  # completions per validation prompt per evaluation
    seed: int = 0  # seeds LoRA init, prompt order, sampling and the holdout split
    # continue training this LoRA adapter (an ft: model); it is also the KL reference. None = fresh LoRA,
    # reference = the base model
    init_adapter: Path | None = None
    # Tokens of prompt + completion budget; None = ml/memory.plan_memory's limit (context, memory estimate).
    max_seq_len: int | None = None
    truncation: bool = False  # over max_seq_len: False = DataValidationError naming it; True = skip it (warn event)
    quantization: str = "auto"  # "auto" | "none" | "nf4" (QLoRA, CUDA only): see ml/memory.py
    quantization_from: str = "the config"  # who asked for `quantization`, named in the plan's event and errors
    gradient_checkpointing: bool | None = None  # activation checkpointing; None = from the memory estimate
    lora_r: int = 8  # LoRA rank (ignored with init_adapter, which brings its own)
    lora_alpha: int = 16  # LoRA scaling numerator (effective scale alpha / r)
    lora_dropout: float = 0.0  # dropout on the LoRA path; 0 = none
    keep_checkpoints: int = 3  # newest checkpoints kept (plus the best-validated one); older ones deleted
    warmup_ratio: float = 0.0  # fraction of the steps with linear LR warm-up; then linear decay to 0
    # Stop once valid_reward_mean has not improved for this many evaluations in a row; None = train every epoch.
    early_stopping_patience: int | None = None
    final_model: str = "last"  # the adapter returned: "last" step (OpenAI's rule) or "best" valid_reward_mean
    torch_threads: int | None = None  # CPU threads torch may use during the run; None = torch's setting
    kl_beta: float = 0.04  # weight of the KL(policy || reference) penalty; 0 would drop the reference pass
    temperature: float = 1.0  # sampling temperature of rollouts and evaluations
    max_completion_tokens: int | None = None  # override of the reasoning_effort budget; None = COMPLETION_TOKENS
    reasoning_instruction: str | None = REASONING_INSTRUCTION  # system instruction added to prompts; None = none
    require_answer_marker: bool = False  # True: a completion without "Answer:" is graded as an empty answer
    # Safety rails: fail when the grader errs on more than this share of one step's samples ...
    max_grader_error_share: float = 0.5
    # ... or of the base model's samples before training (the grader is broken, not the model).
    base_max_error_share: float = 0.8
    base_check_prompts: int = 8  # base-model samples graded before training (one per validation prompt); 0 = skip
    max_valid_items: int = 32  # validation prompts used per evaluation (file order); 0 = all
    rollout_backend: str = "transformers"  # sampling.rollout_backend_args: "transformers" | "vllm" (GPU)

    @property
    def num_generations(self) -> int:
        return group_size(self.compute_multiplier)

    @property
    def completion_budget(self) -> int:
        return self.max_completion_tokens or COMPLETION_TOKENS[self.reasoning_effort]

    def plan_run(self, tokenizer):
        """(this config with max_seq_len, quantization and gradient_checkpointing resolved, its
        memory.MemoryPlan); raises DataValidationError naming over-long examples: trainer_common.plan_run."""
        return common.plan_run(self, tokenizer, example_lengths, rows_per_example=self.num_generations)


def train_rft(config: RFTConfig, reporter: Reporter) -> TrainResult:
    """Train a LoRA adapter with GRPO on config.train_path, rewarded by config.grader; see the
    module docstring for the story.

    Returns TrainResult with status "succeeded" (adapter at output_dir/adapter), "cancelled"
    or "paused" (a later call with the same config resumes from the pause checkpoint).
    Raises DataValidationError for an invalid file, GraderFailedError when the grader fails too
    often, TrainingError when training fails.
    """
    if config.valid_path is None and not config.truncation:  # name over-long lines before the holdout split
        from modelmill.ml import models  # renumbers them

        config.plan_run(models.load_tokenizer(config.base_dir))
    config = _with_validation_split(config, reporter)
    return common.train(config, reporter, load_dataset=_load_dataset, hooks_cls=_RFTHooks,
                        build_trainer=_build_trainer, describe=lambda ds: _describe(config, ds),
                        example_lengths=example_lengths, rows_per_example=config.num_generations)


def example_lengths(path: Path, tokenizer, config: RFTConfig) -> list[memory.ExampleLength]:
    """Each prompt's tokens (render_prompt, with the reasoning instruction) plus the completion budget:
    the longest sequence its rollouts can reach. trainer_common.plan_run's input."""
    out = []
    for e in data.read_examples(Path(path), "reinforcement", min_examples=1):
        prompt = len(tokenizer(render_prompt(tokenizer, e, config.reasoning_instruction),
                               add_special_tokens=False)["input_ids"])
        out.append(memory.ExampleLength(e.line, prompt + config.completion_budget,
                                        f"prompt {prompt} + completion budget {config.completion_budget}"))
    return out



def _describe(config: RFTConfig, train_ds) -> str:
    return (f"Training on {len(train_ds)} prompts for {config.n_epochs} epoch(s): {config.batch_size} prompt(s) x "
            f"{config.num_generations} generations per step, up to {config.completion_budget} completion tokens "
            f"(reasoning_effort {config.reasoning_effort}), KL beta {config.kl_beta:g}; validation reward every "
            f"{config.eval_interval} steps, {config.eval_samples} sample(s) per prompt")


# ---------------------------------------------------------------- data


def holdout_split(n: int, seed: int) -> list[int]:
    """Indices (sorted) of the n training prompts held out for validation: HOLDOUT_SHARE of them,
    rounded, at least 1 and at most MAX_HOLDOUT, chosen by `seed`; none when n < 2."""
    if n < 2:
        return []
    k = min(MAX_HOLDOUT, n - 1, max(1, round(n * HOLDOUT_SHARE)))
    return sorted(random.Random(seed).sample(range(n), k))


def _with_validation_split(config: RFTConfig, reporter: Reporter) -> RFTConfig:
    """The config itself when it has a validation file; else one whose train/valid files are the
    holdout split, written (atomically, identical on every call) under output_dir/data/."""
    if config.valid_path is not None:
        return config
    examples = data.read_examples(Path(config.train_path), "reinforcement", min_examples=1)
    held = set(holdout_split(len(examples), config.seed))
    if not held:
        return config
    out = Path(config.output_dir) / "data"
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, rows in (("train", [e for i, e in enumerate(examples) if i not in held]),
                       ("valid", [e for i, e in enumerate(examples) if i in held])):
        paths[name] = out / f"{name}.jsonl"
        tmp = out / f".{name}.jsonl.tmp"
        tmp.write_text("".join(json.dumps(_line_of(e), ensure_ascii=False) + "\n" for e in rows), encoding="utf-8")
        os.replace(tmp, paths[name])
    lines = [examples[i].line for i in sorted(held)]
    reporter.on_event("info", f"No validation file: {len(held)} of {len(examples)} training prompts (lines "
                              f"{', '.join(map(str, lines[:10]))}{', ...' if len(lines) > 10 else ''}) were held "
                              f"out as the validation set",
                      {"holdout_examples": len(held), "train_examples": len(examples) - len(held),
                       "holdout_lines": lines})
    return replace(config, train_path=paths["train"], valid_path=paths["valid"])


def _line_of(e: PromptExample) -> dict:
    return e.line_dict


def render_prompt(tokenizer, example: PromptExample, instruction: str | None) -> str:
    """The prompt text the policy continues: the model's chat template over the messages (plus the
    reasoning instruction) and tools, ending with the generation prompt (for ChatML "<|im_start|>assistant\\n")."""
    return chat_format.render(tokenizer, with_instruction(example.messages, instruction), example.tools,
                              add_generation_prompt=True)


def _load_dataset(path: Path, label: str, tokenizer, config: RFTConfig, reporter: Reporter):
    """A datasets.Dataset of prompt (rendered text), item_json (the grader's item, the whole line,
    as JSON: `datasets` would otherwise unify every row's dict schema, adding None-valued keys),
    has_tools and question (the last user message's text). Prompts that leave no room for the
    completion budget within max_seq_len only get here with config.truncation (plan_run refuses
    them otherwise); a prompt cannot be cut without changing the question, so they are skipped
    (one warn event)."""
    from datasets import Dataset

    examples = data.read_examples(Path(path), "reinforcement", min_examples=1)
    limit = config.max_seq_len - config.completion_budget
    rows, dropped = [], 0
    for e in examples:
        prompt = render_prompt(tokenizer, e, config.reasoning_instruction)
        if len(tokenizer(prompt, add_special_tokens=False)["input_ids"]) > limit:
            dropped += 1
            continue
        # The grader's item is the whole line, messages included, as on OpenAI ({{item.messages}}).
        rows.append({"prompt": prompt, "item_json": json.dumps(e.line_dict, ensure_ascii=False),
                     "has_tools": bool(e.tools), "question": chat_format.content_text(e.messages[-1].get("content"))})
    if dropped:
        reporter.on_event("warn", f"{dropped} of {len(examples)} {label} prompts are longer than {limit} tokens "
                                  f"(max_seq_len {config.max_seq_len} minus the {config.completion_budget}-token "
                                  f"completion budget) and were skipped",
                          {"file": label, "skipped_examples": dropped, "max_seq_len": config.max_seq_len})
    if not rows:
        raise TrainingError(f"no {label} prompt fits in max_seq_len={config.max_seq_len} with the completion budget")
    return Dataset.from_dict({k: [r[k] for r in rows] for k in ("prompt", "item_json", "has_tools", "question")})


# ---------------------------------------------------------------- the trainer


def epoch_seeded(sampler, seed: int):
    """Give TRL's RepeatSampler a set_epoch(epoch) that reseeds its generator with seed + epoch.

    RepeatSampler shuffles with one torch.Generator seeded once, so epoch k's prompt order is the
    k-th permutation drawn from it. A job resumed from an epoch-end checkpoint builds a fresh
    sampler, which drew epoch k's order as if it were epoch 0: the resumed run trained on the
    prompts in another order than the uninterrupted run, and its adapter differed (max |diff| 3.2e-4
    in the crash suite, 2026-11-21; SFT and DPO, whose samplers have set_epoch, were bit-identical).
    transformers calls sampler.set_epoch(epoch) before every epoch, on resume too (through
    accelerate's DataLoaderShard), so each epoch's order becomes a function of (seed, epoch)."""
    if getattr(sampler, "shuffle", False):
        sampler.set_epoch = lambda epoch: sampler.generator.manual_seed(seed + epoch)
    return sampler


def _build_trainer(config: RFTConfig, model, tokenizer, train_ds, valid_ds, callback):
    """TRL GRPOTrainer with our grader as its only reward; the trainer saves into output_dir/.staging."""
    from trl import GRPOConfig, GRPOTrainer

    n_gen = config.num_generations
    completions_per_step = config.batch_size * n_gen  # TRL's per-device batch counts completions
    args = common.trainer_args(config, BASE_LEARNING_RATE)
    args.pop("max_length")  # GRPO bounds prompts in _load_dataset and completions by max_completion_length
    args.update(per_device_train_batch_size=completions_per_step, per_device_eval_batch_size=completions_per_step,
                include_num_input_tokens_seen="no")  # GRPO counts prompt + completion tokens itself
    trl_args = GRPOConfig(**args, num_generations=n_gen, generation_batch_size=completions_per_step,
                          max_completion_length=config.completion_budget, beta=config.kl_beta,
                          temperature=config.temperature, top_p=1.0, top_k=0, num_iterations=1,
                          loss_type="dapo", scale_rewards="group", shuffle_dataset=True, log_completions=False,
                          **sampling.rollout_backend_args(config.rollout_backend))
    reward = GraderReward(config.grader, config.grader_context, max_error_share=config.max_grader_error_share,
                          require_marker=config.require_answer_marker, parse=chat_families.family_of(tokenizer).parse)
    tokenizer.padding_side = "left"  # TRL left-pads prompts for generation
    class _GRPOTrainer(GRPOTrainer):
        def _get_train_sampler(self, dataset=None):
            return epoch_seeded(super()._get_train_sampler(dataset), self.args.seed)

    trainer = _GRPOTrainer(model=model, reward_funcs=[reward], args=trl_args, train_dataset=train_ds,
                           processing_class=tokenizer, peft_config=common.lora_config(config), callbacks=[callback])
    callback.reward, callback.tokenizer = reward, tokenizer
    callback.valid_ds = valid_ds
    callback.check_ds = valid_ds if valid_ds is not None else train_ds
    return common.finish_trainer_setup(trainer, callback)


# ---------------------------------------------------------------- the trainer <-> reporter bridge


class _RFTHooks(common.ReporterHooks):
    """RFT's metrics, the base-model check, validation-reward evaluations and checkpoint ranking,
    on top of trainer_common's stop requests and atomic checkpoints. `reward`, `tokenizer`,
    `valid_ds` and `check_ds` are set by _build_trainer."""

    METRIC_NAMES = METRIC_NAMES
    SELECT_BY = ("valid_reward_mean", True)

    def __init__(self, reporter: Reporter, config: RFTConfig, has_valid: bool):
        super().__init__(reporter, config, has_valid)
        self.reward: GraderReward | None = None
        self.tokenizer = self.valid_ds = self.check_ds = None
        self.valid_by_step: dict[int, float] = {}  # global step -> valid_reward_mean
        self.best: tuple[int, float] | None = None  # (step, valid_reward_mean) of the best checkpoint

    def train_metrics(self, logs: dict) -> dict[str, float]:
        out = {"train_loss": logs["loss"]}
        if logs.get("kl") is not None:
            out["kl"] = logs["kl"]
        out.update(self.reward.take_stats())
        return out

    def on_train_begin(self, args, state, control, **kwargs):
        self.best = _best_published(Path(self.config.output_dir))
        if state.global_step == 0 and self.config.base_check_prompts > 0:
            try:
                self._base_check()
            except _StopRequested as stop:  # the first step's on_step_end asks again and stops there
                self.stop = stop.action
                control.should_training_stop = True

    def on_step_end(self, args, state, control, **kwargs):
        self.stop = self.reporter.should_stop()
        if self.stop in ("cancel", "pause"):
            control.should_training_stop = True
            # A pause checkpoint is written now, unless the epoch just ended (on_epoch_end saves then).
            control.should_save = self.stop == "pause" and not common.epoch_complete(state)
        elif self.has_valid and state.global_step % self.config.eval_interval == 0 \
                and not common.epoch_complete(state):  # at an epoch end, on_epoch_end evaluates
            metrics = self._interruptible_evaluate(state, control)
            if metrics is not None:
                self._add(state, metrics)
                control.should_save = True  # a checkpoint ranked by this reward

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.stop == "cancel" or not common.epoch_complete(state):
            return
        if self.has_valid and self.stop is None:
            metrics = self._interruptible_evaluate(state, control)
            if metrics is not None:
                self._add(state, metrics)
            elif self.stop == "cancel":
                return
        self._flush(state)
        control.should_save = True

    def on_save(self, args, state, control, **kwargs):
        self._flush(state)
        if self.reporter.should_stop() == "cancel":  # cancelled or lease lost: see common's on_save
            self.stop = "cancel"
            return
        step, out = state.global_step, Path(self.config.output_dir)
        reward = self.valid_by_step.get(step)
        if reward is not None:  # travels with the checkpoint, so a resumed run still knows the best
            (out / ".staging" / f"checkpoint-{step}" / CHECKPOINT_SCORE_FILE).write_text(
                json.dumps({"step": step, "valid_reward_mean": reward}))
        improved = reward is not None and (self.best is None or reward > self.best[1])
        if improved:
            self.best = (step, reward)
        path = common.publish_checkpoint(out, step, self.config.keep_checkpoints,
                                         protect=(self.best[0],) if self.best else ())
        metrics = dict(self.last_metrics) if reward is None else {**self.last_metrics, "valid_reward_mean": reward}
        self.reporter.on_checkpoint(step, path, metrics)
        if improved:
            self._report_best("Best checkpoint so far")
        if reward is not None:  # ranked now, so the early-stopping count sees this evaluation's verdict
            self.stop_early_if_stalled(state, control)

    def on_train_end(self, args, state, control, **kwargs):
        super().on_train_end(args, state, control, **kwargs)
        if self.stop is None and self.best is not None:
            self._report_best("Training done; best checkpoint")

    def evaluations(self, state) -> list[tuple[int, float]]:
        """Each validation reward so far: the published checkpoints' (they carry it, so a resumed run
        still has them) and this run's."""
        found = dict(_published_scores(Path(self.config.output_dir)))
        found.update(self.valid_by_step)
        return sorted(found.items())

    def best_evaluation(self, state) -> tuple[int, float] | None:
        return self.best  # ranked as checkpoints are published (on_save), earliest on ties

    def _report_best(self, what: str) -> None:
        step, reward = self.best
        self.reporter.on_event("info", f"{what}: step {step} (valid_reward_mean {reward:.4f})",
                               {"best_checkpoint_step": step, "valid_reward_mean": reward})

    def _interruptible_evaluate(self, state, control) -> dict[str, float] | None:
        """_evaluate("valid"), or None when a cancel / pause arrived between two of its batches: the
        training then stops as on_step_end would have (a pause still checkpoints), without the
        evaluation's reward."""
        try:
            return self._evaluate("valid")
        except _StopRequested as stop:
            self.stop = stop.action
            control.should_training_stop = True
            control.should_save = stop.action == "pause" and not common.epoch_complete(state)
            return None

    def _check_stop(self) -> None:
        """Between two batches of an evaluation: raise _StopRequested if the run should stop now."""
        action = self.reporter.should_stop()
        if action in ("cancel", "pause"):
            raise _StopRequested(action)

    def _evaluate(self, name: str) -> dict[str, float]:
        """valid_reward_mean of the current policy: eval_samples completions per validation prompt."""
        step = self.trainer.state.global_step
        if step not in self.valid_by_step:
            limit = self.config.max_valid_items
            ds = self.valid_ds.select(range(min(limit, len(self.valid_ds)))) if limit else self.valid_ds
            results, _, _, _ = self._sample_and_grade(ds, self.config.eval_samples, seed=self.config.seed + step)
            self.valid_by_step[step] = sum(r.reward for r in results) / max(1, len(results))
        return {"valid_reward_mean": self.valid_by_step[step]}

    def _base_check(self) -> None:
        """Grade one sample of the starting policy per check prompt before training; see step 4 of
        the module docstring."""
        ds = self.check_ds.select(range(min(self.config.base_check_prompts, len(self.check_ds))))
        results, samples, items, rows = self._sample_and_grade(ds, 1, seed=self.config.seed)
        check_error_share(results, samples, items, [r["question"] for r in rows], self.config.base_max_error_share,
                          "of the base model before training")
        rewards = [float(r.reward) for r in results]
        mean = sum(rewards) / len(rewards)
        data_ = {"base_reward": mean, "samples": len(rewards)}
        self.reporter.on_event("info", f"Base model reward {mean:.4f} on {len(rewards)} samples "
                                       f"(validation prompts, before training)", data_)
        if len(rewards) > 1 and len(set(rewards)) == 1:
            self.reporter.on_event("warn", f"The grader gave every base-model sample the same reward "
                                           f"{rewards[0]:g} (grader always returns {rewards[0]:g}? check it): "
                                           f"GRPO learns only from reward differences",
                                   {"constant_reward": rewards[0], "samples": len(rewards)})

    def _sample_and_grade(self, ds, n: int, seed: int):
        """(GradeResults, samples, items, rows) of n sampled completions per row of ds, current policy."""
        rows = [ds[i] for i in range(len(ds)) for _ in range(n)]
        texts = sample_completions(self.trainer.model, self.tokenizer, [r["prompt"] for r in rows],
                                   max_new_tokens=self.config.completion_budget,
                                   temperature=self.config.temperature, eos_ids=self.trainer.eos_token_ids, seed=seed,
                                   before_batch=self._check_stop)
        parse = chat_families.family_of(self.tokenizer).parse
        samples = [completion_sample(t, parse_tools=r["has_tools"], require_marker=self.config.require_answer_marker,
                                     parse=parse)
                   for t, r in zip(texts, rows, strict=True)]
        items = [json.loads(r["item_json"]) for r in rows]
        results = []
        for start in range(0, len(samples), EVAL_BATCH_ROWS):  # a cancel is honoured between batches
            if start:
                self._check_stop()
            end = start + EVAL_BATCH_ROWS
            results += graders.grade_batch(self.config.grader, samples[start:end], items[start:end],
                                           context=self.config.grader_context)
        return results, samples, items, rows


class _StopRequested(Exception):
    """The reporter asked to stop ("cancel" or "pause") in the middle of an evaluation."""

    def __init__(self, action: str):
        super().__init__(action)
        self.action = action


def _published_scores(output_dir: Path) -> list[tuple[int, float]]:
    """(step, valid_reward_mean) of each complete checkpoint on disk that carries one, oldest first."""
    out = []
    for path in common.checkpoints(output_dir):
        score = path / CHECKPOINT_SCORE_FILE
        if score.is_file():
            out.append((common.step_of(path), float(json.loads(score.read_text())["valid_reward_mean"])))
    return out


def _best_published(output_dir: Path) -> tuple[int, float] | None:
    """(step, valid_reward_mean) of the best complete checkpoint on disk (earliest on ties), or None."""
    best = None
    for step, reward in _published_scores(output_dir):
        if best is None or reward > best[1]:
            best = (step, reward)
    return best


def sample_completions(model, tokenizer, prompts: list[str], *, max_new_tokens: int, temperature: float,
                       eos_ids: list[int], seed: int, before_batch: Callable[[], None] | None = None) -> list[str]:
    """Sample one completion per prompt text with the live (training) model, EVAL_BATCH_ROWS rows per
    left-padded generate() call, under a private RNG seeded with `seed` (the training run's RNG
    stream is left as it was). The model is put back in train mode afterwards. before_batch is
    called before every generate() call but the first (it raises to stop the sampling: a cancel)."""
    import torch
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
