"""bench/results/intent_data.py: the intent story's held-out phrasings are sentence shapes training
never uses (not training templates with other slot values), and the generated sets are what the
story says they are. Pure Python, no model: milliseconds."""

from __future__ import annotations

import pytest

from tests.bench.helpers import results_module


@pytest.fixture(scope="module")
def intent_data():
    with results_module("intent_data") as module:
        yield module


def test_no_test_template_is_a_training_template(intent_data):
    train_shapes = {intent_data.skeleton(t) for ts in intent_data.TRAIN_TEMPLATES.values() for t in ts}
    reused = [t for ts in intent_data.TEST_TEMPLATES.values() for t in ts if intent_data.skeleton(t) in train_shapes]
    assert reused == []
    # The skeleton ignores slots, case and punctuation: a copied template with new slot values is caught.
    copied = intent_data.TRAIN_TEMPLATES["transfer_money"][0].replace("{person}", "{account}").upper() + "!!"
    assert intent_data.skeleton(copied) in train_shapes


def test_generated_sets_are_disjoint_and_cover_every_intent(intent_data):
    train, test = intent_data.build(train_per_intent=12, test_per_intent=None, seed=7)
    assert len(intent_data.INTENTS) >= 10
    assert set(intent_data.TRAIN_TEMPLATES) == set(intent_data.TEST_TEMPLATES) == set(intent_data.INTENTS)
    labels = [line["messages"][-1]["content"] for line in train]
    assert {i: labels.count(i) for i in intent_data.INTENTS} == {i: 12 for i in intent_data.INTENTS}
    assert len(test) == sum(len(ts) for ts in intent_data.TEST_TEMPLATES.values())
    train_messages = {line["messages"][1]["content"].lower() for line in train}
    assert not [p["message"] for p in test if p["message"].lower() in train_messages]
    # Test slot values are their own: no slot value is in both lists.
    for slot, values in intent_data.TEST_SLOTS.items():
        assert not set(values) & set(intent_data.TRAIN_SLOTS[slot]), slot
    assert intent_data.build(12, None, 7) == (train, test)  # same seed, same data
