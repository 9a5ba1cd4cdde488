"""RFT story: arithmetic. examples/rft_arithmetic, run by that example's own code (run.py's `run`):
reasoning-gym `basic_arithmetic` at its easiest setting (2 one-digit terms), 120 training / 40
validation lines sharing no answer, a python grader that scores the reply's final answer with
reasoning-gym's own `score_answer` (the text after "Answer:" when the reply has that line, else its
last number), GRPO through the server with a validation file, so the job runs its own before/after eval.

Metric: the validation reward of that before/after eval (greedy, every validation line, the job's
grader): base vs the fine-tuned model. Target >= 0.45 (issue 18; the base is about 0.23).

Side by side in the same run (`compare_rule_before`): the same job with the rollout temperature of
the rule before 2026-12-04 (1.0, job metadata modelmill.rft_temperature), against "auto" (0.7,
ml/rft/config.py AUTO_TEMPERATURE, chosen because at 1.0 the base model's samples scored 0.071 and
only 14 of 40 validation groups had any reward spread for GRPO to learn from; at 0.7, 0.209 and 29).

History (2026-11-21): the example's first grader scored the whole reply with score_answer, which
gives a right answer inside prose len(answer)/len(reply). SmolLM2-135M-Instruct opens every reply
with "To calculate ..." and works through the sum in prose, so that reward measured reply length,
not arithmetic: base 0.004, and after GRPO 0.075 although the last number of the reply was right in
20 of 40 validation replies (8 of 40 before). Prompts tried with that grader (PROMPT_PROBE, base
model, greedy, first 20 of every 2nd validation line) did not lift the base near 0.22. The final-answer
grader scores what the task asks: is the result right.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from common import EXAMPLES, Context, load_example, machine, result, row, today

ARITH = EXAMPLES / "rft_arithmetic"
PROMPT_PROBE = {  # prompt -> base validation reward with the FIRST grader (whole reply; see the docstring)
    "the example's (the question alone)": 0.004, "+ ModelMill's Answer: instruction": 0.006,
    "reasoning-gym 'default' system prompt, <answer> tags": 0.0, "reasoning-gym 'direct', <answer> tags": 0.0,
    "+ 'Reply with only the final number.'": 0.050, "2 worked examples + 'Answer with the number only.'": 0.15,
}


@dataclass(frozen=True)
class RFTStory:
    model: str = "SmolLM2-135M-Instruct"
    hyperparameters: dict | None = None  # None: the example's own (examples/rft_arithmetic/run.py)
    train_lines: int | None = None  # None: all of the example's training lines
    valid_lines: int | None = None  # None: all of its validation lines
    target: float = 0.45
    criterion: str = "basic_arithmetic"  # the grader's name in the before/after table
    compare_rule_before: bool = True  # also train the job with the rollout temperature before 2026-12-04


FULL = RFTStory()
QUICK = RFTStory(model="modelmill-tiny", train_lines=10, valid_lines=4, hyperparameters={
    "n_epochs": 1, "batch_size": 2, "learning_rate_multiplier": 1.0, "reasoning_effort": "low",
    "compute_multiplier": 0.5, "eval_interval": 2, "eval_samples": 1})


def _subset(cfg: RFTStory, tmp: Path) -> Path:
    if cfg.train_lines is None and cfg.valid_lines is None:
        return ARITH
    for name, n in (("train.jsonl", cfg.train_lines), ("valid.jsonl", cfg.valid_lines)):
        lines = (ARITH / name).read_text().splitlines(keepends=True)
        (tmp / name).write_text("".join(lines[:n]))
    return tmp


RULE_BEFORE = {"modelmill.rft_temperature": "1.0"}  # rollouts at temperature 1.0, "auto" until 2026-12-04


def run(ctx: Context, cfg: RFTStory | None = None) -> dict:
    cfg = cfg or (QUICK if ctx.quick else FULL)
    example = load_example("rft_arithmetic")
    with tempfile.TemporaryDirectory() as tmp:
        data = _subset(cfg, Path(tmp))
        t0 = time.monotonic()
        r = example.run(ctx.client, cfg.model, cfg.hyperparameters, data)
        wall = time.monotonic() - t0
        example.report(r)
        before = None
        if cfg.compare_rule_before:
            print("\nThe same job with the rule before 2026-12-04 (rollout temperature 1.0):", flush=True)
            before = example.run(ctx.client, cfg.model, cfg.hyperparameters, data, metadata=RULE_BEFORE)
            example.report(before)
    job = r["job"]
    b, f, base, final = before_after(r, cfg.criterion)
    hp = job.method.reinforcement.hyperparameters
    rows = [row(f"validation reward, greedy ({base['total']} lines, the job's before/after eval)", b, f,
                f">= {cfg.target}", f >= cfg.target),
            row("exact answers (reward 1)", base["passed"], final["passed"], None, None)]
    if r["valid"]:
        best = max(v for _, v in r["valid"])
        rows.append(row("valid_reward_mean, sampled at temperature 0.7 (best eval step)", r["base"]["base_reward"],
                        best, None, None))
    if before:
        bb, bf, bbase, bfinal = before_after(before, cfg.criterion)
        rows += [row("the same job with the rule before 2026-12-04 (rollout temperature 1.0), side by side in "
                     "this run: validation reward, greedy", bb, bf, "reported", None),
                 row("  its exact answers (reward 1)", bbase["passed"], bfinal["passed"], None, None)]
    notes = [
        f"Training: the example's job, {hp.n_epochs} epoch(s) of {_lines(ARITH / 'train.jsonl', cfg.train_lines)} "
        f"prompts, batch {hp.batch_size}, group {round(4 * hp.compute_multiplier)}, LR multiplier "
        f"{hp.learning_rate_multiplier}, reasoning_effort {hp.reasoning_effort}, rollout temperature 0.7 (\"auto\"); "
        f"valid_reward_mean by step: {_steps(r)}; job {r['wall_s'] / 60:.1f} min.",
        "The grader scores the reply's final answer with reasoning-gym's score_answer: the text after \"Answer:\" when the reply has that line, else the reply's last number; 1 when it is the answer, len(answer)/len(final answer) when it only contains it (\"-45\" for 45: 2/3), else 0 (examples/rft_arithmetic/grader.py). The example's first grader scored the whole reply, so a right answer inside prose got len(answer)/len(reply): base 0.004 -> 0.075 after GRPO in its one run (2026-11-21), while the last number was right in 8/40 -> 20/40 replies (rft_story.py's docstring).",
    ]
    if before:
        notes.append(f"Side by side, the same data, seed and hyperparameters with rollouts at temperature 1.0 (job "
                     f"metadata {RULE_BEFORE}): greedy validation reward {bb:.3f} -> {bf:.3f}; its valid_reward_mean "
                     f"(sampled at 1.0, so not comparable with the row above) by step: {_steps(before)}; job "
                     f"{before['wall_s'] / 60:.1f} min. The wall time above is the \"auto\" job's story alone.")
    details = {"rows": rows, "notes": notes, "date": today(), "machine": machine(), "job_id": job.id,
               "fine_tuned_model": job.fine_tuned_model, "comparison": r["comparison"], "valid_reward_mean": r["valid"],
               "base_reward_sampled": r["base"], "best_checkpoint": r["best"], "train_first10": r["train_first"],
               "train_last10": r["train_last"], "hyperparameters": hp.to_dict(), "prompt_probe": PROMPT_PROBE,
               "rule_before": before and {"job_id": before["job"].id, "comparison": before["comparison"],
                                          "valid_reward_mean": before["valid"], "best_checkpoint": before["best"],
                                          "wall_s": before["wall_s"]}}
    return result("rft", cfg.model, rows[0]["metric"], b, f, rows[0]["target"], rows[0]["met"], wall, details)


def before_after(r: dict, criterion: str) -> tuple[float, float, dict, dict]:
    job = r["job"]
    table = {x["label"]: x for x in (r["comparison"] or {}).get("rows", [])}
    base, final = table.get("base"), table.get("final")
    if base is None or final is None:
        raise RuntimeError(f"job {job.id} recorded no before/after eval: {r['comparison']}")
    return base["scores"][criterion], final["scores"][criterion], base, final


def _steps(r: dict) -> str:
    return ", ".join(f"{s}: {v:.3f}" for s, v in r["valid"]) or "none"


def _lines(path: Path, limit: int | None) -> int:
    n = sum(1 for line in path.read_text().splitlines() if line.strip())
    return min(n, limit) if limit else n
