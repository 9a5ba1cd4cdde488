"""text_similarity: how close the rendered `input` is to the rendered `reference`, in [0, 1].

Every metric OpenAI lists, each from the library the field uses (OpenAI's python-grader image
ships the same ones: rapidfuzz, nltk, rouge-score):
- fuzzy_match: rapidfuzz fuzz.WRatio with default_process (lower-case, strip punctuation) / 100,
  the fuzzy score OpenAI's own graders guide uses in its python-grader example.
- bleu: sacrebleu sentence BLEU (13a tokenizer, exp smoothing, effective order) / 100.
- gleu: nltk sentence_gleu (Google BLEU, n = 1..4).
- meteor: nltk meteor_score with WordNet 3.0 synonyms (see resources.py for the offline data).
- cosine: cosine similarity of all-MiniLM-L6-v2 sentence embeddings (OpenAI uses its
  text-embedding-3-large; ModelMill runs offline), clipped to [0, 1].
- rouge_1 .. rouge_5, rouge_l: rouge-score F-measure, no stemming.
nltk metrics get tokens from a plain regex (words, numbers, single punctuation marks) because
NLTK's word_tokenize needs the punkt model, which NLTK downloads.

`pass_threshold`, when given, sets passed = score >= pass_threshold. The reward is the score.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from typing import Callable, Literal

import numpy as np

from . import checks, resources
from .engine import GradeResult, GraderContext, apply_threshold, error_result, template_error_result
from .registry import register
from .templating import InvalidVariable, render

log = logging.getLogger(__name__)
_TOKEN = re.compile(r"\w+(?:'\w+)*|[^\w\s]")
_rouge_scorers: dict = {}
_rouge_lock = threading.Lock()


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(text)


def fuzzy_match(text: str, reference: str) -> float:
    from rapidfuzz import fuzz, utils

    return fuzz.WRatio(text, reference, processor=utils.default_process) / 100.0


def bleu(text: str, reference: str) -> float:
    import sacrebleu

    return sacrebleu.sentence_bleu(text, [reference]).score / 100.0


def gleu(text: str, reference: str) -> float:
    from nltk.translate.gleu_score import sentence_gleu

    return float(sentence_gleu([tokens(reference)], tokens(text)))


def meteor(text: str, reference: str) -> float:
    from nltk.translate.meteor_score import meteor_score

    wordnet = resources.default_wordnet()
    with resources.wordnet_lock:
        return float(meteor_score([tokens(reference)], tokens(text), wordnet=wordnet))


def _rouge(kind: str) -> Callable[[str, str], float]:
    def score(text: str, reference: str) -> float:
        from rouge_score import rouge_scorer

        with _rouge_lock:
            scorer = _rouge_scorers.get(kind)
            if scorer is None:
                scorer = _rouge_scorers[kind] = rouge_scorer.RougeScorer([kind], use_stemmer=False)
        return float(scorer.score(reference, text)[kind].fmeasure)

    return score


# metric -> fn(input, reference) -> score. cosine is batched separately (one embedding pass).
METRICS: dict[str, Callable[[str, str], float]] = {
    "fuzzy_match": fuzzy_match, "bleu": bleu, "gleu": gleu, "meteor": meteor,
    **{f"rouge_{n}": _rouge(f"rouge{n}") for n in range(1, 6)}, "rouge_l": _rouge("rougeL"),
}
ALL_METRICS = ("cosine", *METRICS)


def cosine_scores(pairs: list[tuple[str, str]], embedder) -> list[float]:
    """Cosine similarity per (input, reference) pair, with one embedding call for the batch."""
    texts = [t for pair in pairs for t in pair]
    vectors_2N_D = np.asarray(embedder(texts), dtype=np.float64)
    a_N_D, b_N_D = vectors_2N_D[0::2], vectors_2N_D[1::2]
    norms_N = np.linalg.norm(a_N_D, axis=1) * np.linalg.norm(b_N_D, axis=1)
    dots_N = (a_N_D * b_N_D).sum(axis=1)
    return [float(d / n) if n > 0 else 0.0 for d, n in zip(dots_N, norms_N)]


def score_pairs(metric: str, pairs: list[tuple[str, str]], context: GraderContext) -> list[float | None]:
    """Raw scores for (input, reference) pairs; None where the metric failed on that pair. Empty
    text scores 1.0 against empty, else 0.0 (the libraries disagree on empty input; most divide
    by zero)."""
    scores: list[float | None] = [None] * len(pairs)
    todo = []
    for i, (text, ref) in enumerate(pairs):
        if not text.strip() or not ref.strip():
            scores[i] = 1.0 if text.strip() == ref.strip() else 0.0
        else:
            todo.append(i)
    if metric == "cosine" and todo:
        embedder = context.embedder or resources.default_embedder()
        for i, value in zip(todo, cosine_scores([pairs[i] for i in todo], embedder)):
            scores[i] = value
    else:
        for i in todo:
            try:
                scores[i] = METRICS[metric](*pairs[i])
            except Exception:  # noqa: BLE001 - reported as this sample's other_error
                log.exception("text_similarity %s failed on a sample", metric)
    return scores


def grade_batch(spec: dict, samples: list[dict], items: list[dict], context: GraderContext) -> list[GradeResult]:
    started = time.perf_counter()
    metric = spec["evaluation_metric"]
    results: list[GradeResult | None] = [None] * len(samples)
    pairs, where = [], []
    for i, (sample, item) in enumerate(zip(samples, items)):
        try:
            pairs.append((render(spec["input"], sample, item), render(spec["reference"], sample, item)))
            where.append(i)
        except InvalidVariable as e:
            results[i] = template_error_result(spec, e)
    for i, raw in zip(where, score_pairs(metric, pairs, context)):
        if raw is None:
            results[i] = error_result(spec, "other_error")
            continue
        value = min(max(raw, 0.0), 1.0)  # cosine can dip below 0; rewards live in [0, 1]
        results[i] = apply_threshold(GradeResult(reward=value, scores={metric: raw}), spec)
    elapsed = time.perf_counter() - started
    for r in results:
        r.execution_time = elapsed
    return results


Metric = Literal["cosine", "fuzzy_match", "bleu", "gleu", "meteor", "rouge_1", "rouge_2", "rouge_3", "rouge_4",
                 "rouge_5", "rouge_l"]
assert set(Metric.__args__) == set(ALL_METRICS)  # the wire model names every metric we compute


class TextSimilarityGrader(checks.GraderWire):
    """OpenAI's GraderTextSimilarity, plus the pass_threshold of its eval variant."""

    type: Literal["text_similarity"]
    input: str
    reference: str
    evaluation_metric: Metric
    pass_threshold: float | None = None


def validate(spec: dict, path: str) -> None:
    checks.string(spec, "input", path, template=True)
    checks.string(spec, "reference", path, template=True)
    checks.enum(spec, "evaluation_metric", path, ALL_METRICS)
    checks.number(spec, "pass_threshold", path)


register("text_similarity", grade_batch, validate=validate, model=TextSimilarityGrader)
