"""bench/results/arith_pairs.py: the objective DPO story's pairs. Every preferred answer is right, every
non-preferred one is wrong and of the kind it says, held-out answers never occur in training (not even with the other sign), and the
lines are valid OpenAI DPO lines. reasoning-gym only, no model: about a second."""

from __future__ import annotations

import json

import pytest

from modelmill.ml import data
from tests.bench.helpers import results_module


@pytest.fixture(scope="module")
def arith_pairs():
    with results_module("arith_pairs") as module:
        yield module


def test_mistakes_are_the_named_kinds(arith_pairs):
    assert arith_pairs.mistakes("5 - -4", 9) == {"sign": -9, "double_negative": 1, "off_by_one": 10}
    assert arith_pairs.mistakes("-8 + -5", -13)["double_negative"] == -3
    only = arith_pairs.mistakes("3 * 9", 27)  # no double negative to misread
    assert set(only) == {"sign", "off_by_one"} and abs(only["off_by_one"] - 27) == 1
    assert "sign" not in arith_pairs.mistakes("4 - 4", 0)  # -0 is 0: not a wrong answer


def test_pairs_are_right_against_wrong_and_split_by_answer(arith_pairs, tmp_path):
    train, held = arith_pairs.build(200, 50, seed=1234)
    assert len(train) == 200 and len(held) == 50
    assert not {abs(int(p["answer"])) for p in train} & {abs(int(p["answer"])) for p in held}
    assert len({p["question"] for p in train + held}) == 250
    for p in train + held:
        expression = p["question"].removeprefix("Calculate ").removesuffix(".")
        right = eval(expression.replace("/", "//"), {"__builtins__": {}})  # noqa: S307 - the generator's digits and operators
        assert str(right) == p["answer"] == p["preferred_output"][0]["content"]
        wrong = int(p["non_preferred_output"][0]["content"])
        assert wrong != right and arith_pairs.mistakes(expression, right)[p["kind"]] == wrong
        assert p["input"]["messages"][0]["content"].endswith(arith_pairs.INSTRUCTION)
    assert {p["kind"] for p in train} == set(arith_pairs.KINDS)
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(arith_pairs.strip(p)) + "\n" for p in train))
    assert len(data.read_examples(path, "dpo", min_examples=1)) == 200  # the server's own validation
