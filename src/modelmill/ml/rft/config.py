"""RFT's configuration: its hyperparameter constants, the "auto" rule for its OpenAI hyperparameters
(`resolve_rft_hyperparameters`) and `RFTConfig`, the shared run_config.RunConfig plus GRPO's own fields.
The package docstring (ml/rft/__init__.py) maps each hyperparameter onto GRPO."""

from __future__ import annotations

import math
from dataclasses import dataclass

from modelmill.errors import InvalidRequestError
from modelmill.ml import graders
from modelmill.ml import trainer_common as common
from modelmill.ml.rft.rewards import REASONING_INSTRUCTION
from modelmill.ml.run_config import RunConfig, resolve_run_hyperparameters

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
# Sampling temperature of one-turn rollouts and sampled evaluations, when the job does not set one
# (job metadata "modelmill.rft_temperature"). Measured 2026-12-04 on the arithmetic example's 40 validation
# prompts, SmolLM2-135M-Instruct, 8 samples of up to 64 tokens each: at 1.0 the samples' mean reward was
# 0.071 and 14 of 40 groups had any reward spread (GRPO learns nothing from a group whose samples all
# score alike); at 0.7, 0.209 and 29 of 40 (greedy: 0.233). BENCHMARKS.md, "rft", has the training runs.
AUTO_TEMPERATURE = 0.7
# Agentic rollouts keep 1.0, the temperature their story was measured at (docs/agentic_rft.md).
AGENTIC_TEMPERATURE = 1.0
AUTO_EVALS_PER_RUN = 5  # "auto" eval_interval: about this many evaluations over the run
AUTO_EVAL_SAMPLES = 2


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

    out = resolve_run_hyperparameters(  # explicit values checked with the shared (OpenAI's) limits
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


@dataclass(frozen=True, kw_only=True)
class RFTConfig(RunConfig):
    """One RFT run: the shared RunConfig fields plus GRPO's. In RFT train_path holds reinforcement lines
    (data.methods.validate_reinforcement_line); valid_path None = hold out HOLDOUT_SHARE of the training prompts
    (output_dir/data/ keeps the split); batch_size counts prompts, each sampled num_generations times;
    init_adapter is also the KL reference; truncation skips a prompt that leaves no room for the completion
    budget. Build it once (the worker or a notebook) and pass it to train_rft."""

    grader: dict  # the reward: an OpenAI grader object, already validated (graders.validate_grader)
    grader_context: graders.GraderContext | None = None  # judge / sandbox / embedder; None = defaults
    reasoning_effort: str = DEFAULT_EFFORT  # "low" | "medium" | "high": the completion token budget
    compute_multiplier: float = 1.0  # group size = round(4 * this), 2..32 (group_size)
    eval_interval: int = 5  # valid_reward_mean (and a checkpoint) every N steps, plus at epoch ends
    eval_samples: int = AUTO_EVAL_SAMPLES  # completions per validation prompt per evaluation
    kl_beta: float = 0.04  # weight of the KL(policy || reference) penalty; 0 would drop the reference pass
    temperature: float | None = None  # of rollouts and sampled evaluations; None = sampling_temperature's rule
    max_completion_tokens: int | None = None  # override of the reasoning_effort budget; None = COMPLETION_TOKENS
    reasoning_instruction: str | None = REASONING_INSTRUCTION  # system instruction added to prompts; None = none
    require_answer_marker: bool = False  # True: a completion without "Answer:" is graded as an empty answer
    # Safety rails: fail when the grader errs on more than this share of one step's samples ...
    max_grader_error_share: float = 0.5
    # ... or of the base model's samples before training (the grader is broken, not the model).
    base_max_error_share: float = 0.8
    base_check_prompts: int = 8  # base-model samples graded before training (one per validation prompt); 0 = skip
    max_valid_items: int = 32  # validation prompts used per evaluation (file order); 0 = all
    rollout_backend: str = "transformers"  # rollouts.rollout_backend_args: "transformers" | "vllm" (GPU)
    # Agentic RFT (docs/agentic_rft.md, ml/rft/multiturn.py): the environment whose tools rollouts call, as
    # environments.validate_environment returns it; None = one-turn RFT. completion_budget is then per turn.
    environment: dict | None = None
    tool_hosts: tuple[str, ...] = ()  # hosts HTTP tools may reach (the server's MODELMILL_RFT_TOOL_HOSTS)
    max_tool_failure_share: float = 0.5  # fail when a tool itself failed in more than this share of a step's rollouts

    @property
    def num_generations(self) -> int:
        return group_size(self.compute_multiplier)

    @property
    def sampling_temperature(self) -> float:
        """temperature, or when None AUTO_TEMPERATURE (one-turn) / AGENTIC_TEMPERATURE (with an environment)."""
        if self.temperature is not None:
            return self.temperature
        return AGENTIC_TEMPERATURE if self.environment else AUTO_TEMPERATURE

    @property
    def completion_budget(self) -> int:
        return self.max_completion_tokens or COMPLETION_TOKENS[self.reasoning_effort]

    @property
    def rollout_budget(self) -> int:
        """Tokens after the prompt one rollout may reach: the completion budget, or with an environment
        its max_rollout_tokens (every turn and tool result)."""
        return self.environment["max_rollout_tokens"] if self.environment else self.completion_budget

    def plan_run(self, tokenizer):
        """(this config with max_seq_len, quantization and gradient_checkpointing resolved, its
        memory.MemoryPlan); raises DataValidationError naming over-long examples: trainer_common.plan_run."""
        from modelmill.ml.rft.train import example_lengths  # train imports this module

        return common.plan_run(self, tokenizer, example_lengths, rows_per_example=self.num_generations)
