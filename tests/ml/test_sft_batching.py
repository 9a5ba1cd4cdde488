"""SFT batching on modelmill-tiny: padding-free batches keep our assistant-only labels, give the padded
loss, count every real token, and "auto" picks padding-free only when it computes less."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from modelmill.ml import models, sft
from tests.ml.reporters import ListReporter


def _line(question: str, answer: str) -> str:
    return json.dumps({"messages": [{"role": "system", "content": "Answer."}, {"role": "user", "content": question},
                                    {"role": "assistant", "content": answer}]})


@pytest.fixture(scope="module")
def config(tiny_model_dir, tmp_path_factory):
    """Mixed lengths (1 to 30 words): the case padding-free is for."""
    tmp = tmp_path_factory.mktemp("batching")
    words = [2, 14, 3, 30, 4, 20, 1, 25]
    train = tmp / "train.jsonl"
    train.write_text("\n".join(_line(f"Repeat {n} words.", " ".join(f"w{i}" for i in range(n))) for n in words) + "\n")
    return sft.SFTConfig(base_dir=tiny_model_dir, train_path=train, valid_path=None, output_dir=tmp / "out",
                         n_epochs=1, batch_size=4, learning_rate_multiplier=1.0, max_seq_len=128, torch_threads=1)


def _trainer(config, **changes):
    config = replace(config, **changes)
    reporter = ListReporter()
    model, tokenizer = models.load_model(config.base_dir, trainable=True)
    train_ds = sft._load_dataset(config.train_path, "training", tokenizer, config, reporter)
    callback = sft.common.reporter_callback(sft._SFTHooks, reporter, config, has_valid=False)
    return sft._build_trainer(config, model, tokenizer, train_ds, train_ds, callback), train_ds, reporter


def test_auto_picks_padding_free_for_mixed_lengths_and_padded_for_long_equal_ones():
    smollm2_context = 3891.0  # attention_context() of SmolLM2-135M (see the next test for tiny's)
    mixed = [40, 60, 45, 900, 50, 70, 130, 55, 300, 48]
    assert sft.padding_free_cost_ratio(mixed, 4, smollm2_context) < 0.8
    # 4 x 420 tokens (the smart-home demo): padding-free was measured 1.31x slower; the estimate agrees
    assert sft.padding_free_cost_ratio([420] * 12, 4, smollm2_context) == pytest.approx(1.29, abs=0.02)
    config = sft.SFTConfig(base_dir=None, train_path=None, valid_path=None, output_dir=None, n_epochs=1,
                           batch_size=4, learning_rate_multiplier=1.0)
    assert sft.use_padding_free(config, mixed, smollm2_context)
    assert not sft.use_padding_free(config, [420] * 12, smollm2_context)
    assert not sft.use_padding_free(replace(config, batch_size=1), mixed, smollm2_context)  # nothing to pad
    assert sft.use_padding_free(replace(config, padding_free=True), [420] * 12, smollm2_context)  # forced


def test_attention_context_counts_linear_work_per_attention_work(tiny_model_dir):
    model = models.load_model(tiny_model_dir)[0]
    # tiny: 2 layers of hidden 64 (q, k, v, o, MLP) + a 49,152 x 64 LM head; 4 heads of 16
    linear = 2 * (64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 128) + 49152 * 64
    assert sft.attention_context(model) == pytest.approx(linear / (2 * 2 * 4 * 16))


def test_padding_free_batches_keep_assistant_only_labels(config):
    trainer, train_ds, reporter = _trainer(config, padding_free=True)
    assert ("info", "Batching: padding-free batches of 4 examples (set by the config)", None) in reporter.events
    features = [train_ds[i] for i in range(4)]
    batch = trainer.data_collator(features)
    assert "attention_mask" not in batch and batch["input_ids"].shape == (1, sum(len(f["input_ids"]) for f in features))
    # Our labels, end to end: -100 on system, user and the assistant header; each example's first token
    # (which the collator also masks, as it must not be predicted from the previous example) is never a target.
    assert batch["labels"][0].tolist() == [label for f in features for label in f["labels"]]
    starts = (batch["position_ids"][0] == 0).nonzero().flatten().tolist()
    assert starts == [0, *torch.tensor([len(f["input_ids"]) for f in features]).cumsum(0)[:-1].tolist()]


def test_padding_free_loss_equals_padded_loss(config):
    """Same model, same four examples: the flattened batch's loss (train and eval paths) is the padded one,
    so attention never crosses from one example into the next."""
    trainer, train_ds, _ = _trainer(config, padding_free=True)
    features = [train_ds[i] for i in range(4)]
    flat = trainer.data_collator(features)
    padded = DataCollatorForLanguageModeling(pad_token_id=trainer.processing_class.pad_token_id)(features)
    assert (padded["labels"] != -100).sum() == (flat["labels"] != -100).sum()
    trainer.model.eval()
    with torch.no_grad():
        loss_flat = trainer.compute_loss(trainer.model, dict(flat))
        loss_padded = trainer.compute_loss(trainer.model, dict(padded))
    assert float(loss_flat) == pytest.approx(float(loss_padded), rel=1e-5)
    eval_flat = trainer.evaluate(train_ds)["eval_loss"]
    trainer.data_collator = DataCollatorForLanguageModeling(pad_token_id=trainer.processing_class.pad_token_id)
    assert eval_flat == pytest.approx(trainer.evaluate(train_ds)["eval_loss"], rel=1e-5)


def test_padding_free_run_counts_every_real_token(config, tmp_path):
    """trained_tokens counts <|im_end|> too, although it is also the pad token."""
    reporter = ListReporter()
    result = sft.train_sft(replace(config, output_dir=tmp_path / "run", padding_free=None), reporter)
    assert any(e[1].startswith("Batching: padding-free batches of 4 examples (auto: padding-free estimated at 0.")
               for e in reporter.events)
    tokenizer = models.load_model(config.base_dir)[1]
    train_ds = sft._load_dataset(config.train_path, "training", tokenizer, config, ListReporter())
    assert result.status == "succeeded" and result.trained_tokens == sum(len(ids) for ids in train_ds["input_ids"])
    padded = sft.train_sft(replace(config, output_dir=tmp_path / "padded", padding_free=False), ListReporter())
    assert padded.trained_tokens == result.trained_tokens
