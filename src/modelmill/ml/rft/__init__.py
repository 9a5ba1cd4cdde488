"""Reinforcement fine-tuning (RFT) with LoRA: TRL's GRPOTrainer + PEFT, rewards from ml.graders.

The story of one run (`train_rft`):
1. Read the reinforcement file through ml.data ("reinforcement" lines -> PromptExample). Without a
   validation file, hold out HOLDOUT_SHARE of the training prompts (chosen by the seed) as the
   validation set; the split is written to output_dir/data/ so a resumed run uses the same one.
2. Render each prompt with our chat template plus the reasoning instruction (rewards.py
   explains the reasoning format and what the grader sees).
3. Build a GRPOTrainer with a fresh LoRA adapter (or the `init_adapter` of an earlier fine-tune).
   Each step samples `num_generations` completions for each of `batch_size` prompts in one batched
   generate() call (rollouts.rollout_backend_args picks the backend), grades them with ONE
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
   (ml/trainer_common.py, trainer_hooks.py, checkpoints.py). The final adapter (output_dir/adapter) is the LAST policy; the info event
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
(the GRPO paper's), temperature 0.7 (1.0 for agentic rollouts; config.AUTO_TEMPERATURE has the measurement;
job metadata "modelmill.rft_temperature" sets it), one GRPO iteration per generation (on-policy), TRL's "dapo"
token-level loss, advantages scaled by the group's reward std.

Metrics (reporter.on_step each step): train_reward_mean, train_reward_std, train_grader_error_rate,
train_grader_error_rate_<flag> (for each OpenAI metadata.errors flag seen so far in the run),
completion_tokens_mean, kl, train_loss; valid_reward_mean on evaluation steps.
Failures: errors.GraderFailedError (code "grader_error") when the grader fails on more than
`max_grader_error_share` of a step's samples; the message quotes one failing sample.

The package, one file per part:
    config.py     RFTConfig (run_config.RunConfig + GRPO's fields), the constants and the "auto" rule
    train.py      train_rft: data and holdout split, the GRPOTrainer, the trainer <-> reporter hooks
    rewards.py    the reasoning format, completion -> grader sample, the TRL reward function, the safety rail
    rollouts.py   the rollout backend (TRL's generate or colocated vLLM) and sample_completions for evaluations
    multiturn.py  agentic RFT's rollout loop (tool calls, tool results as masked tokens); why TRL's rollout_func
    agentic.py    agentic RFT in train_rft: TRL's rollout_func, multi-turn evaluations, the tool safety rail

Agentic RFT (docs/agentic_rft.md): with config.environment, each rollout is multi-turn: the model calls the
environment's tools (ml/environments.py), reads their results and goes on; the loss covers only its own
tokens and the grader sees the whole trajectory (rewards.trajectory_sample). Metrics add
rollout_turns_mean, tool_calls_mean, tool_error_rate, tool_latency_mean, tool_failed_rollout_rate; the job
fails (errors.ToolFailedError, code "tool_error") when tools themselves fail in more than
max_tool_failure_share of one step's rollouts.
"""

from __future__ import annotations

from modelmill.ml.rft.config import (AUTO_EVAL_SAMPLES, AUTO_EVALS_PER_RUN, AUTO_PROMPT_PASSES, BASE_GROUP_SIZE,
                                     BASE_LEARNING_RATE, COMPLETION_TOKENS, DEFAULT_EFFORT, GROUP_SIZE_LIMITS,
                                     MAX_AUTO_BATCH_SIZE, MAX_AUTO_EPOCHS, RFTConfig, group_size,
                                     resolve_rft_hyperparameters)
from modelmill.ml.rft.rewards import (ERROR_FLAGS, REASONING_INSTRUCTION, GraderReward, check_error_share,
                                      completion_sample, split_answer, step_stats, with_instruction)
from modelmill.ml.rft.rollouts import EVAL_BATCH_ROWS, ROLLOUT_BACKENDS, rollout_backend_args, sample_completions
from modelmill.ml.rft.train import (CHECKPOINT_SCORE_FILE, HOLDOUT_SHARE, MAX_HOLDOUT, METRIC_NAMES, epoch_seeded,
                                    example_lengths, holdout_split, render_prompt, train_rft)

__all__ = [
    "AUTO_EVAL_SAMPLES", "AUTO_EVALS_PER_RUN", "AUTO_PROMPT_PASSES", "BASE_GROUP_SIZE", "BASE_LEARNING_RATE",
    "CHECKPOINT_SCORE_FILE", "COMPLETION_TOKENS", "DEFAULT_EFFORT", "ERROR_FLAGS", "EVAL_BATCH_ROWS",
    "GROUP_SIZE_LIMITS", "HOLDOUT_SHARE", "MAX_AUTO_BATCH_SIZE", "MAX_AUTO_EPOCHS", "MAX_HOLDOUT", "METRIC_NAMES",
    "REASONING_INSTRUCTION", "ROLLOUT_BACKENDS", "GraderReward", "RFTConfig", "check_error_share",
    "completion_sample", "epoch_seeded", "example_lengths", "group_size", "holdout_split", "render_prompt",
    "resolve_rft_hyperparameters", "rollout_backend_args", "sample_completions", "split_answer", "step_stats",
    "train_rft", "with_instruction",
]
