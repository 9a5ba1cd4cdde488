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


def test_no_casual_training_template_shares_three_words_in_a_row_with_a_test_template(intent_data):
    """Stricter than the skeleton for the casual half (the one written in the test set's register): no
    run of three words (slots removed) appears in both a casual training template and a test template,
    so no casual training message carries a test message's wording. (The polite half shares only runs
    of function words such as "how do i" and "of my account", which the skeleton check allows.)"""
    def trigrams(template):
        words = intent_data.skeleton(template).split()
        return {tuple(words[i:i + 3]) for i in range(len(words) - 2)}

    test_grams = {g: t for ts in intent_data.TEST_TEMPLATES.values() for t in ts for g in trigrams(t)}
    shared = [(t, test_grams[g]) for ts in intent_data.CASUAL_TEMPLATES.values() for t in ts
              for g in trigrams(t) if g in test_grams]
    assert shared == []
    # Both halves are trained on by default; casual=False keeps the polite half only (the older data).
    for intent in intent_data.INTENTS:
        assert set(intent_data.TRAIN_TEMPLATES[intent]) == (set(intent_data.POLITE_TEMPLATES[intent])
                                                            | set(intent_data.CASUAL_TEMPLATES[intent]))
    polite_only, _ = intent_data.build(12, None, 7, casual=False)
    both, _ = intent_data.build(12, None, 7)
    assert {line["messages"][1]["content"] for line in polite_only} != {line["messages"][1]["content"] for line in both}


def test_misspelled_training_messages_never_use_the_test_sets_own_misspellings(intent_data):
    """typo_share misspells that share of the training messages (one edit in one word of the request),
    keeps the count, and never produces a word only the test set uses ("balanse", "lsot", "lone")."""
    clean, test = intent_data.build(12, None, 7)
    misspelled: set[str] = set()
    typo, _ = intent_data.build(12, None, 7, typo_share=1 / 3, misspelled=misspelled)
    assert len(typo) == len(clean) and [p["template"] for p in _] == [p["template"] for p in test]
    trained = {line["messages"][1]["content"] for line in typo}
    assert misspelled <= trained and not misspelled & {line["messages"][1]["content"] for line in clean}
    assert len(typo) / 5 < len(misspelled) < len(typo) / 2  # about a third
    assert {"balanse", "lsot", "lone", "acount", "adress"} <= intent_data.TEST_ONLY_WORDS
    trained_words = {w.lower() for line in typo for w in intent_data._WORD.findall(line["messages"][1]["content"])}
    assert not trained_words & intent_data.TEST_ONLY_WORDS
    # The edit refuses a test word and draws again: "lost" swapped would be "lsot".
    import random
    rng = random.Random(0)
    assert all("lsot" not in intent_data.misspell("lost", rng) for _ in range(200))
    assert intent_data.misspell("hi", rng) == "hi"  # no word of four letters: unchanged
