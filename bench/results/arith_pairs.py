"""Preference pairs for the objective DPO story (dpo_math_story.py): reasoning-gym `basic_arithmetic`
(Apache-2.0) at its easiest setting (2 one-digit terms, the RFT example's), each question paired with
its right answer (preferred) against a subtly wrong one (non-preferred).

The wrong answers are the mistakes SmolLM2-135M-Instruct itself makes on these questions (seen in
its greedy replies while building this: "5 - -4" answered 1, "-9 - 6" answered 15, "1 - 4" answered 2):
- the sign of the result dropped or flipped;
- a double negative read as one (x - -y taken as x - y; x + -y as x + y);
- off by one.
Training and held-out pairs share no answer, not even with the other sign: the split is by the
answer's absolute value. (Split by the answer alone, as examples/rft_arithmetic does, a held-out right
answer -9 is a training pair's wrong answer, the sign-flipped 9, so recalling trained answers
scores below chance: measured 2026-12-04, held-out preference accuracy 0.53 -> 0.51 after one epoch
with training reward accuracy at 1.0.) A model cannot pass by recalling a trained answer. Built here, with no model in the loop: the
held-out preference metric is fixed before any training.
"""

from __future__ import annotations

import random
import re

CONFIG = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}
INSTRUCTION = " Reply with only the final number."
KINDS = ("sign", "double_negative", "off_by_one")


def mistakes(expression: str, answer: int) -> dict[str, int]:
    """{kind: a wrong answer} for the kinds of KINDS that apply to this expression (never the answer)."""
    out = {}
    if answer != 0:
        out["sign"] = -answer
    collapsed = re.sub(r"-\s*-\s*(\d)", r"- \1", expression)  # x - -y -> x - y
    collapsed = re.sub(r"\+\s*-\s*(\d)", r"+ \1", collapsed)  # x + -y -> x + y
    if collapsed != expression:
        try:
            value = eval(collapsed.replace("/", "//"), {"__builtins__": {}})  # noqa: S307 - digits and + - * / ( ) only
        except ZeroDivisionError:
            value = None
        if isinstance(value, int) and value != answer:
            out["double_negative"] = value
    out["off_by_one"] = answer + 1 if (sum(map(ord, expression)) % 2) else answer - 1
    return out


def build(n_train: int, n_heldout: int, seed: int = 1234, heldout_share: float = 0.25) -> tuple[list[dict], list[dict]]:
    """(training pairs, held-out pairs) as OpenAI DPO lines plus "answer", "kind" and "question" keys
    the story reads (drop them before uploading: strip()). Held-out answers are those whose absolute
    value is in a random heldout_share of the distinct absolute values; each question appears once; the mistake kind of each pair
    is drawn at random among those that apply."""
    import reasoning_gym

    pool, seen = [], set()
    for entry in reasoning_gym.create_dataset("basic_arithmetic", size=20 * (n_train + n_heldout), seed=seed,
                                              **CONFIG):
        if entry["question"] not in seen:  # the easiest setting repeats questions
            seen.add(entry["question"])
            pool.append(entry)
    rng = random.Random(seed)
    sizes = sorted({abs(int(e["answer"])) for e in pool})
    rng.shuffle(sizes)
    held_sizes = set(sizes[:max(1, round(len(sizes) * heldout_share))])
    held = [e for e in pool if abs(int(e["answer"])) in held_sizes]
    train = [e for e in pool if abs(int(e["answer"])) not in held_sizes]
    rng.shuffle(held)
    rng.shuffle(train)
    if len(train) < n_train or len(held) < n_heldout:
        raise ValueError(f"basic_arithmetic gave {len(train)} training / {len(held)} held-out questions; "
                         f"asked for {n_train} / {n_heldout}")
    return [pair(e, rng) for e in train[:n_train]], [pair(e, rng) for e in held[:n_heldout]]


def pair(entry: dict, rng: random.Random) -> dict:
    answer = int(entry["answer"])
    options = mistakes(entry["metadata"]["expression"], answer)
    kind = rng.choice(sorted(options))
    return {"input": {"messages": [{"role": "user", "content": entry["question"] + INSTRUCTION}]},
            "preferred_output": [{"role": "assistant", "content": str(answer)}],
            "non_preferred_output": [{"role": "assistant", "content": str(options[kind])}],
            "answer": str(answer), "kind": kind, "question": entry["question"]}


def strip(line: dict) -> dict:
    """The OpenAI DPO line alone (the keys a fine-tuning file takes)."""
    return {k: line[k] for k in ("input", "preferred_output", "non_preferred_output")}
