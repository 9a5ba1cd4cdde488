"""RFT story: arithmetic. examples/rft_arithmetic, run by that example's own code (run.py's `run`):
reasoning-gym `basic_arithmetic` at its easiest setting (2 one-digit terms), 120 training / 40
validation lines sharing no answer, a python grader that scores the reply's final answer with
reasoning-gym's own `score_answer` (the text after "Answer:" when the reply has that line, else its
last number), GRPO through the server with a validation file, so the job runs its own before/after eval.

Metric: the validation reward of that before/after eval (greedy, every validation line, the job's
grader): base vs the fine-tuned model. Target >= 0.35 (the issue expected about 0.22 at the start).

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
    target: float = 0.35
    criterion: str = "basic_arithmetic"  # the grader's name in the before/after table


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


def run(ctx: Context, cfg: RFTStory | None = None) -> dict:
    cfg = cfg or (QUICK if ctx.quick else FULL)
    example = load_example("rft_arithmetic")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.monotonic()
        r = example.run(ctx.client, cfg.model, cfg.hyperparameters, _subset(cfg, Path(tmp)))
        wall = time.monotonic() - t0
    example.report(r)
    job = r["job"]
    table = {x["label"]: x for x in (r["comparison"] or {}).get("rows", [])}
    base, final = table.get("base"), table.get("final")
    if base is None or final is None:
        raise RuntimeError(f"job {job.id} recorded no before/after eval: {r['comparison']}")
    b, f = base["scores"][cfg.criterion], final["scores"][cfg.criterion]
    hp = job.method.reinforcement.hyperparameters
    rows = [row(f"validation reward, greedy ({base['total']} lines, the job's before/after eval)", b, f,
                f">= {cfg.target}", f >= cfg.target),
            row("exact answers (reward 1)", base["passed"], final["passed"], None, None)]
    if r["valid"]:
        best = max(v for _, v in r["valid"])
        rows.append(row("valid_reward_mean, sampled (best eval step)", r["base"]["base_reward"], best, None, None))
    notes = [
        f"Training: the example's job, {hp.n_epochs} epoch(s) of {_lines(ARITH / 'train.jsonl', cfg.train_lines)} "
        f"prompts, batch {hp.batch_size}, group {round(4 * hp.compute_multiplier)}, LR multiplier "
        f"{hp.learning_rate_multiplier}, reasoning_effort {hp.reasoning_effort}; "
        f"valid_reward_mean by step: {', '.join(f'{s}: {v:.3f}' for s, v in r['valid'])}.",
        "The grader scores the reply's final answer with reasoning-gym's score_answer: the text after \"Answer:\" when the reply has that line, else the reply's last number; 1 when it is the answer, len(answer)/len(final answer) when it only contains it (\"-45\" for 45: 2/3), else 0 (examples/rft_arithmetic/grader.py). The example's first grader scored the whole reply, so a right answer inside prose got len(answer)/len(reply): base 0.004 -> 0.075 after GRPO in its one run (2026-11-21), while the last number was right in 8/40 -> 20/40 replies (rft_story.py's docstring).",
    ]
    details = {"rows": rows, "notes": notes, "date": today(), "machine": machine(), "job_id": job.id,
               "fine_tuned_model": job.fine_tuned_model, "comparison": r["comparison"], "valid_reward_mean": r["valid"],
               "base_reward_sampled": r["base"], "best_checkpoint": r["best"], "train_first10": r["train_first"],
               "train_last10": r["train_last"], "hyperparameters": hp.to_dict(), "prompt_probe": PROMPT_PROBE}
    return result("rft", cfg.model, rows[0]["metric"], b, f, rows[0]["target"], rows[0]["met"], wall, details)


def _lines(path: Path, limit: int | None) -> int:
    n = sum(1 for line in path.read_text().splitlines() if line.strip())
    return min(n, limit) if limit else n
