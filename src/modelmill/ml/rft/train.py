"""RFT training: train_rft (the story is in ml/rft/__init__.py), its data (holdout split, rendered prompts),
the GRPOTrainer and the trainer <-> reporter hooks (base-model check, validation reward, checkpoint ranking)."""

from __future__ import annotations

import json
import os
import random
import warnings
from dataclasses import replace
from pathlib import Path

from modelmill.errors import DataValidationError, InvalidRequestError, TrainingError
from modelmill.ml import chat_families, chat_format, data, environments, graders, memory, run_config
from modelmill.ml import trainer_common as common
from modelmill.ml.checkpoints import checkpoints, publish_checkpoint, step_of
from modelmill.ml.report import Reporter
from modelmill.ml.rft.agentic import AgenticRollouts, sample_trajectories
from modelmill.ml.rft.config import BASE_LEARNING_RATE, RFTConfig
from modelmill.ml.rft.rewards import (ERROR_FLAGS, GraderReward, check_error_share, completion_sample,
                                      trajectory_sample, with_instruction)
from modelmill.ml.rft.rollouts import EVAL_BATCH_ROWS, rollout_backend_args, sample_completions
from modelmill.ml.trainer_hooks import ReporterHooks, epoch_complete
from modelmill.ml.types import PromptExample, TrainResult

HOLDOUT_SHARE = 0.1  # without a validation file: this share of the training prompts (at least 1, at most 50)
MAX_HOLDOUT = 50
CHECKPOINT_SCORE_FILE = "rft_valid_reward.json"  # in a checkpoint dir: its valid_reward_mean, for ranking

# The metrics reporter.on_step sends, in this order.
METRIC_NAMES = ("train_loss", "train_reward_mean", "train_reward_std", "valid_reward_mean", "kl",
                "completion_tokens_mean", "train_grader_error_rate",
                *(f"train_grader_error_rate_{flag}" for flag in ERROR_FLAGS),
                # agentic RFT only (multiturn.rollout_stats)
                "rollout_turns_mean", "tool_calls_mean", "tool_error_rate", "tool_latency_mean",
                "tool_failed_rollout_rate")


def train_rft(config: RFTConfig, reporter: Reporter) -> TrainResult:
    """Train a LoRA adapter with GRPO on config.train_path, rewarded by config.grader; see the
    package docstring (ml/rft/__init__.py) for the story.

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
        if config.environment and environments.STATE_FIELD in e.item:  # a line's own starting state
            try:
                environments.check_state(e.item[environments.STATE_FIELD], environments.STATE_FIELD)
            except InvalidRequestError as err:
                raise DataValidationError(f"line {e.line}: {err.message}", param=environments.STATE_FIELD) from None
        prompt = len(tokenizer(render_prompt(tokenizer, e, config.reasoning_instruction, _tools(config)),
                               add_special_tokens=False)["input_ids"])
        out.append(memory.ExampleLength(e.line, prompt + config.rollout_budget,
                                        f"prompt {prompt} + completion budget {config.rollout_budget}"))
    return out



def _describe(config: RFTConfig, train_ds) -> str:
    env = config.environment
    agentic = (f"; agentic: up to {env['max_turns']} turns and {env['max_rollout_tokens']} tokens per rollout, "
               f"tools {', '.join(t['name'] for t in env['tools'])}") if env else ""
    return (f"Training on {len(train_ds)} prompts for {config.n_epochs} epoch(s): {config.batch_size} prompt(s) x "
            f"{config.num_generations} generations per step, up to {config.completion_budget} completion tokens "
            f"{'per turn ' if env else ''}(reasoning_effort {config.reasoning_effort}), "
            f"temperature {config.sampling_temperature:g}, KL beta {config.kl_beta:g}; "
            f"validation reward every {config.eval_interval} steps, {config.eval_samples} sample(s) per prompt"
            + agentic)


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


def render_prompt(tokenizer, example: PromptExample, instruction: str | None, tools: list[dict] | None = None) -> str:
    """The prompt text the policy continues: the model's chat template over the messages (plus the
    reasoning instruction) and tools, ending with the generation prompt (for ChatML "<|im_start|>assistant\\n").
    tools: the agentic environment's tools, listed instead of the line's own (docs/agentic_rft.md)."""
    return chat_format.render(tokenizer, with_instruction(example.messages, instruction), tools or example.tools,
                              add_generation_prompt=True)


def _tools(config: RFTConfig) -> list[dict] | None:
    return environments.template_tools(config.environment) if config.environment else None


def _load_dataset(path: Path, label: str, tokenizer, config: RFTConfig, reporter: Reporter):
    """A datasets.Dataset of prompt (rendered text), item_json (the grader's item, the whole line,
    as JSON: `datasets` would otherwise unify every row's dict schema, adding None-valued keys),
    has_tools and question (the last user message's text). Prompts that leave no room for the
    completion budget within max_seq_len only get here with config.truncation (plan_run refuses
    them otherwise); a prompt cannot be cut without changing the question, so they are skipped
    (one warn event)."""
    from datasets import Dataset

    examples = data.read_examples(Path(path), "reinforcement", min_examples=1)
    limit = config.max_seq_len - config.rollout_budget
    rows, dropped = [], 0
    for e in examples:
        prompt = render_prompt(tokenizer, e, config.reasoning_instruction, _tools(config))
        if len(tokenizer(prompt, add_special_tokens=False)["input_ids"]) > limit:
            dropped += 1
            continue
        # The grader's item is the whole line, messages included, as on OpenAI ({{item.messages}}).
        rows.append({"prompt": prompt, "item_json": json.dumps(e.line_dict, ensure_ascii=False),
                     "has_tools": bool(e.tools or config.environment),
                     "question": chat_format.content_text(e.messages[-1].get("content"))})
    if dropped:
        reporter.on_event("warn", f"{dropped} of {len(examples)} {label} prompts are longer than {limit} tokens "
                                  f"(max_seq_len {config.max_seq_len} minus the {config.rollout_budget}-token "
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
    args = run_config.trainer_args(config, BASE_LEARNING_RATE)
    args.pop("max_length")  # GRPO bounds prompts in _load_dataset and completions by max_completion_length
    args.update(per_device_train_batch_size=completions_per_step, per_device_eval_batch_size=completions_per_step,
                include_num_input_tokens_seen="no")  # GRPO counts prompt + completion tokens itself
    trl_args = GRPOConfig(**args, num_generations=n_gen, generation_batch_size=completions_per_step,
                          max_completion_length=config.completion_budget, beta=config.kl_beta,
                          temperature=config.sampling_temperature, top_p=1.0, top_k=0, num_iterations=1,
                          loss_type="dapo", scale_rewards="group", shuffle_dataset=True, log_completions=False,
                          **rollout_backend_args(config.rollout_backend))
    reward = GraderReward(config.grader, config.grader_context, max_error_share=config.max_grader_error_share,
                          require_marker=config.require_answer_marker, parse=chat_families.family_of(tokenizer).parse)
    tokenizer.padding_side = "left"  # TRL left-pads prompts for generation
    class _GRPOTrainer(GRPOTrainer):
        def _get_train_sampler(self, dataset=None):
            return epoch_seeded(super()._get_train_sampler(dataset), self.args.seed)

        def _generate_and_score_completions(self, inputs):
            self.rollout_inputs = inputs  # TRL hands a rollout_func only the prompts; agentic rollouts need the rows
            return super()._generate_and_score_completions(inputs)

    rollout_func = AgenticRollouts(config, tokenizer, reward) if config.environment else None
    with warnings.catch_warnings():  # TRL calls rollout_func experimental; ml/rft/multiturn.py says why we use it
        warnings.filterwarnings("ignore", message=".*rollout_func.*")
        trainer = _GRPOTrainer(model=model, reward_funcs=[reward], args=trl_args, train_dataset=train_ds,
                               processing_class=tokenizer, peft_config=run_config.lora_config(config),
                               callbacks=[callback], rollout_func=rollout_func)
    callback.reward, callback.tokenizer = reward, tokenizer
    callback.valid_ds = valid_ds
    callback.check_ds = valid_ds if valid_ds is not None else train_ds
    return common.finish_trainer_setup(trainer, callback)


# ---------------------------------------------------------------- the trainer <-> reporter bridge


class _RFTHooks(ReporterHooks):
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
            control.should_save = self.stop == "pause" and not epoch_complete(state)
        elif self.has_valid and state.global_step % self.config.eval_interval == 0 \
                and not epoch_complete(state):  # at an epoch end, on_epoch_end evaluates
            metrics = self._interruptible_evaluate(state, control)
            if metrics is not None:
                self._add(state, metrics)
                control.should_save = True  # a checkpoint ranked by this reward

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.stop == "cancel" or not epoch_complete(state):
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
        path = publish_checkpoint(out, step, self.config.keep_checkpoints,
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
            control.should_save = stop.action == "pause" and not epoch_complete(state)
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
            results, samples, _, _ = self._sample_and_grade(ds, self.config.eval_samples,
                                                             seed=self.config.seed + step)
            self.valid_by_step[step] = sum(r.reward for r in results) / max(1, len(results))
            if self.config.environment and samples:  # one rollout to read on the job page, per evaluation
                self.reporter.on_event("info", f"Sampled trajectory at step {step} (reward {results[0].reward:g})",
                                       {"step": step, "reward": float(results[0].reward),
                                        "trajectory": samples[0]["messages"],
                                        "environment_state": samples[0]["environment_state"]})
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
        if self.config.environment:
            trajs = sample_trajectories(self.trainer.model, self.tokenizer, rows, self.config,
                                        eos_ids=self.trainer.eos_token_ids, seed=seed, before_batch=self._check_stop)
            samples = [trajectory_sample(t.summary(), require_marker=self.config.require_answer_marker) for t in trajs]
            return self._grade(samples, rows)
        texts = sample_completions(self.trainer.model, self.tokenizer, [r["prompt"] for r in rows],
                                   max_new_tokens=self.config.completion_budget,
                                   temperature=self.config.sampling_temperature, eos_ids=self.trainer.eos_token_ids,
                                   seed=seed,
                                   before_batch=self._check_stop)
        parse = chat_families.family_of(self.tokenizer).parse
        samples = [completion_sample(t, parse_tools=r["has_tools"], require_marker=self.config.require_answer_marker,
                                     parse=parse)
                   for t, r in zip(texts, rows, strict=True)]
        return self._grade(samples, rows)

    def _grade(self, samples: list[dict], rows: list[dict]):
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
    for path in checkpoints(output_dir):
        score = path / CHECKPOINT_SCORE_FILE
        if score.is_file():
            out.append((step_of(path), float(json.loads(score.read_text())["valid_reward_mean"])))
    return out


def _best_published(output_dir: Path) -> tuple[int, float] | None:
    """(step, valid_reward_mean) of the best complete checkpoint on disk (earliest on ties), or None."""
    best = None
    for step, reward in _published_scores(output_dir):
        if best is None or reward > best[1]:
            best = (step, reward)
    return best
