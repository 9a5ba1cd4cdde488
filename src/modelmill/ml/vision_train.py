"""SFT (and DPO prompts) with images, on a vision-language base (ml/vision.py says how images
become tokens and tensors).

Each example is tokenized as text is (chat_format.tokenize_conversation: labels on assistant turns
only), with each image part rendered as the family's placeholder; vision.expand then puts the
processor's image tokens in place, all with label -100, so an image token is never a target. The
dataset keeps each row's encoded images (bytes) and `ImageCollator` runs the model's own image
processor per batch, as TRL's DataCollatorForVisionLanguageModeling does.

Why not TRL's vision path (a "messages" + "images" dataset with the processor as processing_class):
it masks by the template's {% generation %} markers or trains on the whole completion, while ModelMill
masks by diffing renderings (chat_format) so any template works, and it would re-tokenize the
conversation through the `datasets` schema, which pads tool schemas with None (see sft.py).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from modelmill.errors import TrainingError
from modelmill.ml import chat_format, data, trainer_common, vision
from modelmill.ml.types import ChatExample


@dataclass(frozen=True)
class VisionExample:
    """One conversation with its images, as the trainer sees it."""

    input_ids: list[int]  # image tokens expanded, at most max_seq_len of them
    labels: list[int]  # input_ids on assistant target tokens, -100 elsewhere (always on image tokens)
    images: list[bytes]  # the encoded images whose tokens are all within input_ids, in order
    details: list[str]  # each kept image's OpenAI detail ("auto" | "low" | "high"; vision.detail_kwargs)
    truncated: bool  # the full rendering was longer than max_seq_len and was cut


def policy_of(config) -> vision.ImagePolicy:
    return vision.ImagePolicy(hosts=tuple(getattr(config, "image_hosts", ()) or ()))


def tokenize_example(processor, tokenizer, example: ChatExample, policy: vision.ImagePolicy,
                     max_seq_len: int | None) -> VisionExample:
    """Render, mask and expand one example; a cut (max_seq_len) never splits an image: an image
    whose tokens do not all fit is dropped with everything after it. Raises TrainingError naming
    the line when the template cannot render it or an image cannot be loaded."""
    from jinja2 import TemplateError

    family_placeholder = processor.image_token
    messages, refs = vision.with_placeholders(example.messages, family_placeholder)
    try:
        raw = [vision.image_bytes(ref.url, policy) for ref in refs]
        images = [vision.with_detail(vision.decode_image(r), ref.detail) for r, ref in zip(raw, refs, strict=True)]
        ids, mask = chat_format.tokenize_conversation(tokenizer, messages, example.tools)
        ids, mask, spans = vision.expand(processor, ids, images, mask)
    except vision.ImageError as e:
        raise TrainingError(f"line {example.line}: {e.message}") from e
    except (TemplateError, ValueError, TypeError, KeyError) as e:
        raise TrainingError(f"line {example.line}: the model's chat template cannot render this conversation: "
                            f"{e}") from e
    labels = [tok if keep else -100 for tok, keep in zip(ids, mask, strict=True)]
    cut = len(ids) if max_seq_len is None else max_seq_len
    kept = [b for b, (start, end) in zip(raw, spans, strict=True) if end <= cut]
    if len(kept) < len(spans):  # cut before the first image that does not fit whole
        cut = min(cut, spans[len(kept)][0])
    return VisionExample(ids[:cut], labels[:cut], kept, [ref.detail for ref in refs[:len(kept)]],
                         truncated=len(ids) > cut)


def example_lengths(path: Path, tokenizer, config) -> list:
    """Each example's tokens with its images expanded (uncut): trainer_common.plan_run's input."""
    from modelmill.ml import memory

    processor, policy = vision.load_processor(config.base_dir), policy_of(config)
    return [memory.ExampleLength(ex.line, len(tokenize_example(processor, tokenizer, ex, policy, None).input_ids))
            for ex in data.read_examples(Path(path), "supervised", min_examples=1, images=policy)]


def load_dataset(path: Path, label: str, tokenizer, config, reporter):
    """Like sft._load_dataset, with image_bytes + image_details columns for ImageCollator."""
    from datasets import Dataset

    processor, policy = vision.load_processor(config.base_dir), policy_of(config)
    examples = data.read_examples(Path(path), "supervised", min_examples=1, images=policy)
    rows = [tokenize_example(processor, tokenizer, ex, policy, config.max_seq_len) for ex in examples]
    kept = trainer_common.trainable_rows(rows, label, config.max_seq_len, reporter)
    n_images = sum(len(r.images) for r in kept)
    reporter.on_event("info", f"{label.capitalize()} data: {n_images} images in {len(kept)} examples",
                      {"file": label, "images": n_images})
    return Dataset.from_dict({"input_ids": [r.input_ids for r in kept], "labels": [r.labels for r in kept],
                              "image_bytes": [r.images for r in kept], "image_details": [r.details for r in kept]})


class ImageCollator:
    """Right-pads input_ids / labels (-100) into a batch and adds the image processor's tensors."""

    def __init__(self, processor, pad_id: int):
        self.processor = processor
        self.pad_id = pad_id

    def __call__(self, rows: list[dict]) -> dict:
        import torch
        from PIL import Image

        width = max(len(r["input_ids"]) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for b, r in enumerate(rows):
            n = len(r["input_ids"])
            input_ids[b, :n] = torch.tensor(r["input_ids"])
            labels[b, :n] = torch.tensor(r["labels"])
            attention_mask[b, :n] = 1
        images_B = [[vision.with_detail(Image.open(io.BytesIO(raw)).convert("RGB"), detail)
                     for raw, detail in zip(r["image_bytes"], r["image_details"], strict=True)] for r in rows]
        return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask,
                **vision.pixel_inputs(self.processor, images_B)}


def trainer_overrides(config, tokenizer) -> dict:
    """The SFTTrainer arguments a vision run changes: padded batches (padding-free would merge rows
    whose images the model must keep apart), our collator, and our columns kept as they are."""
    processor = vision.load_processor(config.base_dir)
    return {"args": dict(padding_free=False, remove_unused_columns=False,
                         dataset_kwargs={"skip_prepare_dataset": True}),
            "data_collator": ImageCollator(processor, tokenizer.pad_token_id)}


# ---------------------------------------------------------------- DPO: prompts with images


def preference_examples(path: Path, config) -> tuple[object, list[tuple[object, list]]]:
    """(processor, [(pair with its image parts as placeholders, its PIL images, each with its detail)])
    for a VLM's DPO run. TRL's DPOTrainer takes the prompt text with placeholders plus an "images"
    column (and ours, "image_details": see preference_collator); its loss falls on the answers only, so
    image tokens are never targets."""
    import dataclasses

    processor, policy = vision.load_processor(config.base_dir), policy_of(config)
    out = []
    for pair in data.read_examples(Path(path), "preference", min_examples=1, images=policy):
        messages, refs = vision.with_placeholders(pair.input_messages, processor.image_token)
        try:
            images = [vision.load_image(ref, policy) for ref in refs]
        except vision.ImageError as e:
            raise TrainingError(f"line {pair.line}: {e.message}") from e
        out.append((dataclasses.replace(pair, input_messages=messages), images))
    return processor, out


def image_token_count(processor, images: list) -> int:
    """Tokens the images add beyond their one-token placeholders."""
    return sum(len(vision.image_token_ids(processor, img)) - 1 for img in images)


def preference_collator(processor):
    """TRL's vision preference collator, with each image expanded and processed at its own detail (the
    dataset's "image_details" column; a datasets Image column keeps no PIL info). TRL calls the processor
    once per batch with one set of image settings, so _DetailProcessor stands in for it: the same
    placeholder expansion and pixel tensors as SFT and chat (vision.expand, vision.pixel_inputs)."""
    from trl.trainer.dpo_trainer import DataCollatorForVisionPreference

    class _Collator(DataCollatorForVisionPreference):
        def torch_call(self, examples: list[dict]) -> dict:
            for ex in examples:
                ex["images"] = [vision.with_detail(img, detail)
                                for img, detail in zip(ex["images"], ex.pop("image_details"), strict=True)]
            return super().torch_call(examples)

    return _Collator(processor=_DetailProcessor(processor))


class _DetailProcessor:
    """The processor as DataCollatorForVisionPreference calls it: prompts with images are left-padded
    and expanded per image (its detail); answer texts go to the processor's tokenizer as they are."""

    def __init__(self, processor):
        self.processor = processor
        self.tokenizer = processor.tokenizer

    def __call__(self, images=None, text=None, padding_side: str = "right", **kwargs):
        import torch
        from transformers import BatchFeature

        if images is None:
            return self.processor(text=text, padding_side=padding_side, **kwargs)
        rows = [vision.expand(self.processor, self.tokenizer(t, add_special_tokens=False)["input_ids"], imgs)[0]
                for t, imgs in zip(text, images, strict=True)]
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            span = slice(width - len(r), width) if padding_side == "left" else slice(0, len(r))
            input_ids[i, span] = torch.tensor(r, dtype=torch.long)
            attention_mask[i, span] = 1
        return BatchFeature({"input_ids": input_ids, "attention_mask": attention_mask,
                             **vision.pixel_inputs(self.processor, images)})
