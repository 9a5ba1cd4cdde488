"""Agentic RFT inside train_rft: the TRL rollout function of training steps (`AgenticRollouts`), the
multi-turn rollouts of evaluations and the base-model check (`sample_trajectories`), and the tool
safety rail (`check_tool_failures`). ml/rft/multiturn.py has the rollout loop and says why TRL's
`rollout_func` hook is used rather than its own tool support; ml/environments.py has the tools."""

from __future__ import annotations

import json
from collections.abc import Callable

from modelmill.errors import ToolFailedError
from modelmill.ml import chat_families, environments
from modelmill.ml import ml_imports
from modelmill.ml.rft.multiturn import RolloutSetup, Trajectory, rollout_stats, run_rollouts, start
from modelmill.ml.rft.rollouts import EVAL_BATCH_ROWS

with ml_imports():
    import torch

QUOTE_CHARS = 200


def rollout_setup(config, tokenizer, eos_ids) -> RolloutSetup:
    """The RolloutSetup of an RFTConfig with an environment: python tools run in the python graders'
    sandbox configuration (config.grader_context.sandbox), HTTP tools against config.tool_hosts."""
    context = config.grader_context
    return RolloutSetup(tokenizer=tokenizer, family=chat_families.family_of(tokenizer), env=config.environment,
                        eos_ids=tuple(eos_ids), sandbox=context.sandbox if context is not None else None,
                        tool_hosts=tuple(config.tool_hosts))


def trajectories_for(rows: list[dict], tokenizer, env: dict) -> list[Trajectory]:
    """A fresh trajectory per dataset row (train.py's columns): the rendered prompt, the line's
    messages and the environment's starting state for that line."""
    out = []
    for row in rows:
        line = json.loads(row["item_json"])
        out.append(start(tokenizer, row["prompt"], line["messages"], environments.initial_state(env, line)))
        # TRL repeats a prompt num_generations times in a row: one group (own MCP servers) per run of rows
        same = len(out) > 1 and rows[len(out) - 2]["prompt"] == row["prompt"] \
            and rows[len(out) - 2]["item_json"] == row["item_json"]
        out[-1].group = out[-2].group if same else len(out) - 1
    return out


def check_tool_failures(trajs: list[Trajectory], limit: float, where: str) -> None:
    """Raise ToolFailedError when more than `limit` of the rollouts had a tool itself fail (a timeout,
    crash, exception or HTTP error; the model's own mistakes, environments.MODEL_ERRORS, are its to
    learn from); the message quotes the first failed tool message."""
    failed = [t for t in trajs if t.tool_failures]
    if not trajs or len(failed) / len(trajs) <= limit:
        return
    quote = next((m["content"] for m in failed[0].messages if m.get("role") == "tool"
                  and str(m.get("content", "")).startswith("Error:")), "")
    raise ToolFailedError(f"tool calls failed in {len(failed)} of {len(trajs)} rollouts {where} (more than "
                          f"{limit:.0%}); e.g. {quote[:QUOTE_CHARS]!r}")


class AgenticRollouts:
    """TRL's rollout_func for agentic RFT: takes the step's rows (set on the trainer by train.py's
    _GRPOTrainer, since TRL passes a rollout function only the prompts) to the end of their rollouts
    with the trainer's own generation, then returns TRL's fields plus `env_mask` (the loss mask) and
    `trajectory` (what the reward function grades)."""

    def __init__(self, config, tokenizer, reward):
        self.config, self.tokenizer, self.reward = config, tokenizer, reward

    def __call__(self, prompts: list[str], trainer) -> dict:
        rows = trainer.rollout_inputs
        if [r["prompt"] for r in rows] != list(prompts):
            raise RuntimeError("agentic RFT: the rollout rows do not match TRL's prompts")
        trajs = trajectories_for(rows, self.tokenizer, self.config.environment)

        def generate(ids: list[list[int]]):
            return trainer._generate_single_turn(ids, None, {}, 1)  # noqa: SLF001 - TRL's own per-turn generation

        run_rollouts(trajs, generate, rollout_setup(self.config, self.tokenizer, trainer.eos_token_ids))
        check_tool_failures(trajs, self.config.max_tool_failure_share, f"at step {trainer.state.global_step + 1}")
        self.reward.rollout_stats = rollout_stats(trajs)
        logprobs = None if any(t.logprobs is None for t in trajs) else [t.logprobs for t in trajs]
        return {"prompt_ids": [t.prompt_ids for t in trajs], "completion_ids": [t.completion_ids for t in trajs],
                "logprobs": logprobs, "env_mask": [t.env_mask for t in trajs],
                "trajectory": [t.summary() for t in trajs]}


def sample_trajectories(model, tokenizer, rows: list[dict], config, *, eos_ids: list[int], seed: int,
                        before_batch: Callable[[], None] | None = None) -> list[Trajectory]:
    """One multi-turn rollout per row with the live (training) model, for evaluations and the base
    check: EVAL_BATCH_ROWS rows per generate() call, under a private RNG seeded with `seed` (the
    training run's RNG stream is left as it was), the model back in train mode afterwards.
    before_batch is called before every generate() call but the first (it raises to stop)."""
    from transformers import GenerationConfig

    gen = GenerationConfig(max_new_tokens=config.completion_budget, do_sample=True,
                           temperature=config.sampling_temperature, top_p=1.0, top_k=0, eos_token_id=eos_ids,
                           pad_token_id=tokenizer.pad_token_id)
    device = next(model.parameters()).device
    calls = [0]

    def generate(ids_list: list[list[int]]):
        out: list[list[int]] = []
        for first in range(0, len(ids_list), EVAL_BATCH_ROWS):
            if calls[0] and before_batch is not None:
                before_batch()
            calls[0] += 1
            out += _generate_rows(model, ids_list[first:first + EVAL_BATCH_ROWS], gen, tokenizer.pad_token_id,
                                  set(eos_ids), device)
        return out, None

    trajs = trajectories_for(rows, tokenizer, config.environment)
    model.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            run_rollouts(trajs, generate, rollout_setup(config, tokenizer, eos_ids))
    finally:
        model.train()
    return trajs


def _generate_rows(model, ids: list[list[int]], gen, pad_id: int, eos: set[int], device) -> list[list[int]]:
    """Left-padded generate() over token id lists; each row's new tokens up to and including its first EOS."""
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for r, x in enumerate(ids):
        input_ids[r, width - len(x):], mask[r, width - len(x):] = torch.tensor(x), 1
    out = model.generate(input_ids=input_ids.to(device), attention_mask=mask.to(device), generation_config=gen)
    rows = []
    for row in out[:, width:].tolist():
        cut = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
        rows.append(row[:cut])
    return rows
