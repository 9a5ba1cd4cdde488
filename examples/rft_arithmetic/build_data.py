"""Build the RFT arithmetic example's data from reasoning-gym's `basic_arithmetic` (Apache-2.0).

    python examples/rft_arithmetic/build_data.py        # writes train.jsonl and valid.jsonl here

Each line is an RFT line: the question as the user message, and the oracle answer as an extra
field (`answer`), which the grader reads as {{item.answer}} / item["answer"]. The training and
validation sets share no answer, so the model cannot do well on validation by memorising
answers it was rewarded for (the RFT announcement's demo splits the same way).

The grader (grader.py) scores the reply's final answer with reasoning-gym's own `score_answer`,
copied into a python grader because the sandbox offers only a fixed list of packages;
`check_grader()` below proves on every generated line that the copy scores extracted answers
exactly as reasoning-gym does, and that a reply is scored by its last number.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
N_TRAIN, N_VALID = 120, 40
SEED = 1234
PER_ANSWER = 3  # validation lines per answer
# The easiest setting of basic_arithmetic (reasoning-gym's default is 2-6 terms of up to 4 digits):
# SmolLM2-135M-Instruct scores ~0.005 even here (see README.md), so anything harder leaves GRPO no signal.
CONFIG = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}


def build(n_train: int = N_TRAIN, n_valid: int = N_VALID, seed: int = SEED) -> tuple[list[dict], list[dict]]:
    import reasoning_gym

    pool, seen = [], set()
    for entry in reasoning_gym.create_dataset("basic_arithmetic", size=10 * (n_train + n_valid), seed=seed, **CONFIG):
        if entry["question"] not in seen:  # the easiest setting repeats questions
            seen.add(entry["question"])
            pool.append(entry)
    answers = sorted({entry["answer"] for entry in pool})
    random.Random(seed).shuffle(answers)
    # Validation takes whole answers (at most PER_ANSWER lines of each, for variety) until it has
    # n_valid lines; training takes only lines whose answer validation never uses.
    valid, valid_answers = [], set()
    for a in answers:
        if len(valid) >= n_valid:
            break
        valid_answers.add(a)
        valid += [e for e in pool if e["answer"] == a][:PER_ANSWER]
    valid = valid[:n_valid]
    train = [e for e in pool if e["answer"] not in valid_answers]
    random.Random(seed + 1).shuffle(train)
    train = train[:n_train]
    return [line(e) for e in train], [line(e) for e in valid]


def line(entry: dict) -> dict:
    meta = entry["metadata"]
    return {"messages": [{"role": "user", "content": entry["question"]}], "answer": entry["answer"],
            "expression": meta["expression"], "num_terms": meta["num_terms"], "num_digits": meta["num_digits"]}


def check_grader(lines: list[dict]) -> None:
    """The python grader's score_answer is reasoning-gym's, on right, wrong and partial answers, and
    the grader scores a reply by its final answer (the whole reply when it is bare, else its last number)."""
    import reasoning_gym

    from grader import GRADER_SOURCE  # this folder's grader.py (the script's folder is on sys.path)

    scope: dict = {}
    exec(GRADER_SOURCE, scope)  # noqa: S102 - our own grader source, compared with the library's
    ds = reasoning_gym.create_dataset("basic_arithmetic", size=1, seed=0)
    for item in lines:
        answer = item["answer"]
        for guess in (answer, "0", f"It is {answer}.", "", answer + "0"):
            ours = scope["score_answer"](guess, answer)
            theirs = ds.score_answer(guess, {"answer": answer})
            assert abs(ours - theirs) < 1e-12, (guess, answer, ours, theirs)
        wrong = str(int(answer) + 1)
        for reply, expected in ((answer, 1.0), (f"{item['expression']} = {answer}", 1.0),
                                (f"It is {answer}.", 1.0), (f"{answer}, no: {wrong}", 0.0), ("", 0.0),
                                (f"{item['expression']} = {wrong}", 0.0)):
            assert scope["grade"]({"output_text": reply}, item) == expected, (reply, answer)


def main() -> None:
    train, valid = build()
    assert not {t["answer"] for t in train} & {v["answer"] for v in valid}
    check_grader(train + valid)
    for name, rows in (("train.jsonl", train), ("valid.jsonl", valid)):
        (HERE / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {len(train)} training and {len(valid)} validation lines; no shared answers; grader checked")


if __name__ == "__main__":
    main()
