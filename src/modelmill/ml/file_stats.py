"""A training file's statistics, as the dashboard's file report shows them (service/dashboard/file_report.py):
its data format guessed from its first object, and how many tokens each valid line trains on,
rendered with the model's chat template as training renders it.

    tokenizer = file_stats.load_tokenizer(home, "modelmill-tiny")
    lengths, sampled = file_stats.token_lengths(path, tokenizer)
    file_stats.length_stats(lengths, max_seq_len=2048)   # count, percentiles, histogram, over the limit

A vision base (ml/vision.py) also counts images: token_lengths(..., images=ImageCounter(processor, policy))
adds each line's image tokens to its length, and ImageCounter.stats() gives the totals.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

MAX_TOKENIZED = 20_000  # examples tokenized per file; a bigger file's statistics are over its first ones
HISTOGRAM_BINS = 20


def load_tokenizer(home: Path, base: str):
    """Base model `base`'s tokenizer as saved with the model (materialised under `home` if needed)."""
    from modelmill.ml import import_ml_stack, models

    import_ml_stack()  # not alongside the in-process worker's warm-up (see modelmill.ml)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(models.ensure_base(home, base))


def detect_method(path: Path) -> str:
    """Guess a file's format from its first JSON object: DPO lines have input + preferred_output;
    RFT items have messages that do not end with an assistant turn (the model writes that one)."""
    from modelmill.ml import data
    from modelmill.ml.jsonl import JsonlReader

    with open(path, "rb") as f:
        for _line, obj, _problem in JsonlReader(f):
            if obj is None:
                continue
            if "input" in obj or "preferred_output" in obj:
                return "preference"
            messages = obj.get("messages")
            last = messages[-1] if isinstance(messages, list) and messages else None
            ends_with_answer = isinstance(last, dict) and last.get("role") == "assistant"
            if not ends_with_answer and "reinforcement" in data.LINE_VALIDATORS:
                return "reinforcement"
            return "supervised"
    return "supervised"


def conversation(obj: dict) -> tuple[list[dict], list[dict] | None] | None:
    """The messages (and tools) one line trains on: a chat line's messages, an RFT item's prompt,
    or a DPO pair's prompt plus its longer answer."""
    if isinstance(obj.get("messages"), list):
        return obj["messages"], obj.get("tools")
    inp = obj.get("input")
    if isinstance(inp, dict) and isinstance(inp.get("messages"), list):
        answers = [a for a in (obj.get("preferred_output"), obj.get("non_preferred_output")) if isinstance(a, list)]
        longest = max(answers, key=lambda a: len(json.dumps(a)), default=[])
        return inp["messages"] + longest, inp.get("tools")
    return None


def token_lengths(path: Path, tokenizer, *, skip_lines: set[int] = frozenset(),
                  limit: int = MAX_TOKENIZED, images: ImageCounter | None = None) -> tuple[list[int], bool]:
    """Tokens per valid line, rendered with the tokenizer's chat template as training renders it.
    Returns (lengths, sampled) where sampled means the file had more than `limit` lines to count.
    `images` (a vision base): each line's image tokens are counted too, and tallied in `images`."""
    from modelmill.ml import chat_format
    from modelmill.ml.jsonl import JsonlReader

    lengths: list[int] = []
    with open(path, "rb") as f:
        for line, obj, problem in JsonlReader(f):
            if problem is not None or obj is None or line in skip_lines:
                continue
            if len(lengths) >= limit:
                return lengths, True
            conv = conversation(obj)
            if conv is None:
                continue
            try:
                rendered = tokenizer.apply_chat_template(
                    chat_format.normalize_messages(conv[0]), tools=chat_format.normalize_tools(conv[1]),
                    tokenize=True, return_dict=True)
            except Exception:  # noqa: BLE001 - a line the template cannot render is simply not counted
                continue
            lengths.append(len(rendered["input_ids"]) + (images.add(conv[0]) if images is not None else 0))
    return lengths, False


class ImageCounter:
    """Images and the tokens they take, over a file's lines (a vision base's processor, ml/vision.py)."""

    def __init__(self, processor, policy):
        self.processor, self.policy = processor, policy
        self.images = self.image_tokens = self.examples_with_images = 0

    def add(self, messages: list[dict]) -> int:
        """Count one line's images; returns their tokens (an image that cannot be loaded counts 0)."""
        from modelmill.ml import vision

        _, urls = vision.with_placeholders(messages, self.processor.image_token)
        tokens = 0
        for url in urls:
            try:
                tokens += vision.count_image_tokens(self.processor, [vision.load_image(url, self.policy)])
            except vision.ImageError:
                continue
            self.images += 1
        self.examples_with_images += bool(urls)
        self.image_tokens += tokens
        return tokens

    def stats(self) -> dict:
        return {"images": self.images, "image_tokens": self.image_tokens,
                "examples_with_images": self.examples_with_images}


def length_stats(lengths: list[int], *, max_seq_len: int, sampled: bool = False,
                 bins: int = HISTOGRAM_BINS) -> dict | None:
    """count, total, min, mean, p50/p90/p95 (nearest rank), max, over max_seq_len, and a histogram
    of equal-width bins from min to max (at most `bins`): [{"lo", "hi", "count"}], lo inclusive,
    hi exclusive."""
    if not lengths:
        return None
    ordered = sorted(lengths)
    n = len(ordered)

    def pct(p: float) -> int:
        return ordered[max(0, math.ceil(p / 100 * n) - 1)]

    low, top = ordered[0], ordered[-1]
    bins = max(1, min(bins, top - low + 1))
    width = math.ceil((top - low + 1) / bins)
    counts = [0] * bins
    for x in ordered:
        counts[min((x - low) // width, bins - 1)] += 1
    histogram = [{"lo": low + i * width, "hi": low + (i + 1) * width, "count": c} for i, c in enumerate(counts)]
    return {"count": n, "total": sum(ordered), "min": ordered[0], "mean": sum(ordered) / n, "p50": pct(50),
            "p90": pct(90), "p95": pct(95), "max": top, "max_seq_len": max_seq_len,
            "over_max_seq_len": sum(x > max_seq_len for x in ordered), "sampled": sampled,
            "histogram": histogram}
