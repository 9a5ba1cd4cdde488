"""The second RFT story (issue 18): the greatest common divisor of two numbers, from reasoning-gym's
`gcd` (Apache-2.0), where the answer has to be worked out, not recalled: the training and
validation sets share no answer (validation takes whole answers: every third one in numeric order),
so a model rewarded for "6" in training never saw a validation question whose GCD is 6.

Why this task: probed greedily on SmolLM2-135M-Instruct with ModelMill's reasoning instruction
(2026-12-04, 32 questions each, up to 96 tokens, the reply's last number scored by the task's own
score_answer), gcd of two numbers up to 30 scored 0.28, inside the issue's 0.2-0.6 band. The other
tasks probed were outside it: leg_counting 0.02, simple_equations 0.02, chain_sum (3 one-digit
terms) 0.09, letter_counting 0.15, lcm 0.19, products (one-digit) 0.62, spell_backward,
number_sorting and count_bits 0.00.

The job is the arithmetic example's (examples/rft_arithmetic/run.py's `run`, its hyperparameters but
reasoning_effort "medium", its grader's rule under the name "gcd": the text after "Answer:", else the
reply's last number, scored with reasoning-gym's score_answer), on 60 training prompts: 30 GRPO steps.
Metric: the job's own before/after eval, greedy, on every validation line (it prompts the bare
question); beside it, the same lines prompted as training prompts them (ModelMill's reasoning
instruction as the system message) for the base, final and best-checkpoint models. The issue asks for the before/after
with no target; the story's is "above base".
"""

from __future__ import annotations

import json
import random
from collections import Counter
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from common import Context, load_example, machine, result, row, today
from rft_story import before_after

from modelmill.ml.rft.config import COMPLETION_TOKENS
from modelmill.ml.rft.rewards import REASONING_INSTRUCTION, split_answer

CONFIG = {"min_numbers": 2, "max_numbers": 2, "min_value": 1, "max_value": 30}
PROBE = {"gcd (2 numbers <= 30)": 0.28, "lcm (2 numbers <= 12)": 0.19, "letter_counting": 0.15,
         "chain_sum (3 one-digit terms)": 0.09, "leg_counting (1-2 animals)": 0.02, "simple_equations": 0.02,
         "products (2 one-digit)": 0.62, "spell_backward": 0.0, "number_sorting (3)": 0.0, "count_bits": 0.0}
# reasoning_effort "medium" (128 tokens): the first run, at "low" (64), taught the model to work through
# Euclid's algorithm in prose that the budget cut off (BENCHMARKS.md, rft_gcd's earlier run).
HYPERPARAMETERS = {"n_epochs": 1, "batch_size": 2, "learning_rate_multiplier": 4.0, "reasoning_effort": "medium",
                   "compute_multiplier": 2.0, "eval_interval": 10, "eval_samples": 2}


@dataclass(frozen=True)
class GCDStory:
    model: str = "SmolLM2-135M-Instruct"
    train_lines: int = 60
    valid_lines: int = 40
    per_answer: int = 8  # validation lines per answer, at most (training: twice as many)
    seed: int = 11
    hyperparameters: dict | None = None  # None: HYPERPARAMETERS


FULL = GCDStory()
QUICK = GCDStory(model="modelmill-tiny", train_lines=10, valid_lines=4, hyperparameters={
    "n_epochs": 1, "batch_size": 2, "learning_rate_multiplier": 1.0, "reasoning_effort": "low",
    "compute_multiplier": 0.5, "eval_interval": 2, "eval_samples": 1})


def build(cfg: GCDStory) -> tuple[list[dict], list[dict]]:
    """(training lines, validation lines), RFT lines whose answers the two sets never share."""
    import reasoning_gym

    pool, seen = [], set()
    for entry in reasoning_gym.create_dataset("gcd", size=2000, seed=cfg.seed, **CONFIG):
        if entry["question"] not in seen:
            seen.add(entry["question"])
            pool.append(entry)
    # Answers in numeric order; validation takes every third one from the second (2, 5, 8, ...) until it has
    # its lines, so both sets mix small and large GCDs, odd and even. Each answer brings at most
    # per_answer validation lines and 2 x per_answer training lines, so that no one GCD (1 is the most
    # common) dominates a set.
    answers = sorted({e["answer"] for e in pool}, key=int)
    valid, valid_answers = [], set()
    for a in answers[1::3]:
        if len(valid) >= cfg.valid_lines:
            break
        valid_answers.add(a)
        valid += [e for e in pool if e["answer"] == a][:cfg.per_answer]
    valid = valid[:cfg.valid_lines]
    train, per = [], Counter()
    for e in random.Random(cfg.seed + 1).sample(pool, len(pool)):
        if e["answer"] not in valid_answers and per[e["answer"]] < 2 * cfg.per_answer:
            per[e["answer"]] += 1
            train.append(e)
    line = lambda e: {"messages": [{"role": "user", "content": e["question"]}], "answer": e["answer"],  # noqa: E731
                      "numbers": e["metadata"]["numbers"]}
    return [line(e) for e in train[:cfg.train_lines]], [line(e) for e in valid]


def run(ctx: Context, cfg: GCDStory | None = None) -> dict:
    cfg = cfg or (QUICK if ctx.quick else FULL)
    example = load_example("rft_arithmetic")
    grader_module = load_example("rft_arithmetic", "grader.py")
    grader = {"type": "python", "name": "gcd", "source": grader_module.GRADER_SOURCE}
    train, valid = build(cfg)
    assert not {x["answer"] for x in train} & {x["answer"] for x in valid}
    with tempfile.TemporaryDirectory() as tmp:
        for name, lines in (("train.jsonl", train), ("valid.jsonl", valid)):
            (Path(tmp) / name).write_text("".join(json.dumps(x) + "\n" for x in lines))
        t0 = time.monotonic()
        r = example.run(ctx.client, cfg.model, cfg.hyperparameters or HYPERPARAMETERS, Path(tmp), grader=grader,
                        suffix="gcd")
        wall = time.monotonic() - t0
    example.report(r)
    job = r["job"]
    b, f, base, final = before_after(r, "gcd")
    hp = job.method.reinforcement.hyperparameters
    rows = [row(f"held-out reward, greedy ({base['total']} validation lines whose answers training never has; "
                "the job's before/after eval)", b, f, "> base", f > b),
            row("exact answers (reward 1)", base["passed"], final["passed"], None, None)]
    if r["valid"]:
        rows.append(row("valid_reward_mean, sampled at temperature 0.7 (best eval step)", r["base"]["base_reward"],
                        max(v for _, v in r["valid"]), None, None))
    # The job's eval prompts the bare question; training prompted it with the reasoning instruction.
    budget = COMPLETION_TOKENS[hp.reasoning_effort]
    models = {"base": cfg.model, "final": job.fine_tuned_model}
    if r["best"]:
        models["best"] = f"{job.fine_tuned_model}:ckpt-step-{r['best']['best_checkpoint_step']}"
    as_trained = {k: _score_as_trained(ctx.client, m, valid, grader_module.GRADER_SOURCE, budget)
                  for k, m in models.items()}
    rows.append(row(f"the same lines prompted as trained (the reasoning instruction as system message; greedy, "
                    f"{budget} tokens; chat completions)", as_trained["base"]["reward"], as_trained["final"]["reward"],
                    "> base", as_trained["final"]["reward"] > as_trained["base"]["reward"]))
    if "best" in as_trained:
        rows.append(row(f"  the best checkpoint (step {r['best']['best_checkpoint_step']}), prompted as trained",
                        as_trained["base"]["reward"], as_trained["best"]["reward"], None, None))
    notes = [
        f"Data: reasoning-gym gcd, two numbers from {CONFIG['min_value']} to {CONFIG['max_value']}, seed {cfg.seed}: "
        f"{len(train)} training prompts, {len(valid)} validation prompts; validation answers "
        f"{sorted({x['answer'] for x in valid}, key=int)}, none of them a training answer.",
        f"Training: {hp.n_epochs} epoch(s), batch {hp.batch_size}, group {round(4 * hp.compute_multiplier)}, LR "
        f"multiplier {hp.learning_rate_multiplier}, reasoning_effort {hp.reasoning_effort}, rollout temperature 0.7 "
        f"(\"auto\"); valid_reward_mean by step: {', '.join(f'{s}: {v:.3f}' for s, v in r['valid']) or 'none'}; "
        f"job {r['wall_s'] / 60:.1f} min.",
        f"Base in the issue's 0.2-0.6 band: {'yes' if 0.2 <= b <= 0.6 else 'no'} ({b:.3f}). Chosen by a greedy probe "
        f"of reasoning-gym tasks (rft_gcd_story.py's docstring).",
    ]
    details = {"rows": rows, "notes": notes, "date": today(), "machine": machine(), "job_id": job.id,
               "fine_tuned_model": job.fine_tuned_model, "comparison": r["comparison"], "valid_reward_mean": r["valid"],
               "base_reward_sampled": r["base"], "best_checkpoint": r["best"], "hyperparameters": hp.to_dict(),
               "probe": PROBE, "as_trained": as_trained}
    return result("rft_gcd", cfg.model, rows[0]["metric"], b, f, rows[0]["target"], rows[0]["met"], wall, details)


def _score_as_trained(client, model: str, lines: list[dict], grader_source: str, max_tokens: int) -> dict:
    """Greedy replies through chat completions to each line prompted as RFT training prompts it (the
    reasoning instruction as the system message), graded as the job grades a sample: the text after
    "Answer:" when the reply has one, else the whole reply, through the grader's own `grade`."""
    ns: dict = {}
    exec(grader_source, ns)  # the grader's python source: this story's own, as the sandbox runs it
    scores, answers = [], []
    for x in lines:
        reply = client.chat.completions.create(
            model=model, temperature=0, max_tokens=max_tokens,
            messages=[{"role": "system", "content": REASONING_INSTRUCTION}, *x["messages"]])
        text = reply.choices[0].message.content or ""
        answer, _, marked = split_answer(text)
        sample = answer if marked else text
        scores.append(ns["grade"]({"output_text": sample}, x))
        answers.append(ns["final_answer"](sample))
    return {"model": model, "reward": sum(scores) / len(scores), "exact": sum(v == 1 for v in scores),
            "answers": answers}
