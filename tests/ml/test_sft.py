"""SFT on modelmill-tiny: masks, metrics, checkpoints, pause/resume, cancel, continuation."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from modelmill.errors import InvalidRequestError
from modelmill.ml import models, sft
from modelmill.ml.types import ChatExample
from tests.ml.reporters import ListReporter


def _line(question: str, answer: str) -> str:
    return json.dumps({"messages": [{"role": "user", "content": question},
                                    {"role": "assistant", "content": answer}]})


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A home with modelmill-tiny, a 4-example train file (one over-long) and a 3-example valid file."""
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MODELMILL_HOME", str(home))
        base = models.ensure_base(home, "modelmill-tiny")
    train = home / "train.jsonl"
    lines = [_line(f"What is {i} + {i}?", f"{i} + {i} = {2 * i}.") for i in range(3)]
    lines.append(_line("Say a lot.", "word " * 100))  # longer than max_seq_len: truncated (allowed), still trainable
    train.write_text("\n".join(lines) + "\n")
    valid = home / "valid.jsonl"
    valid.write_text("\n".join(_line(f"What is {i} + 1?", f"{i + 1}.") for i in range(3)) + "\n")
    config = sft.SFTConfig(base_dir=base, train_path=train, valid_path=valid, output_dir=home / "ref",
                           n_epochs=2, batch_size=2, learning_rate_multiplier=1.0, max_seq_len=48, truncation=True,
                           eval_every_steps=1,
                           # tiny ops gain nothing from threads, and OpenMP threads stall when
                           # other processes share the CPU (each op up to 100x slower)
                           torch_threads=1)
    return config


@pytest.fixture(scope="module")
def reference(setup):
    """One uninterrupted 4-step run (2 epochs x 2 steps) that several tests compare against."""
    reporter = ListReporter()
    threads = torch.get_num_threads()
    result = sft.train_sft(setup, reporter)
    assert torch.get_num_threads() == threads  # restored after the run
    return reporter, result


def _tokenizer(config):
    return models.load_model(config.base_dir)[1]


def _target_text(tokenizer, row: sft.TokenizedExample) -> str:
    return tokenizer.decode([t for t in row.labels if t != -100])


# ---------------------------------------------------------------- hyperparameters


@pytest.mark.parametrize("n, epochs, batch, lr", [(1, 10, 1, 3.0), (10, 10, 1, 3.0), (20, 5, 2, 3.0), (50, 3, 4, 3.0),
                                                   (499, 3, 4, 3.0), (500, 3, 4, 1.0), (100_000, 1, 4, 1.0)])
def test_auto_rule(n, epochs, batch, lr):
    # Under 500 examples "auto" trains at 3x the base LoRA rate (the intent story's evidence); 1x above.
    assert sft.resolve_sft_hyperparameters({}, n) == {"n_epochs": epochs, "batch_size": batch,
                                                      "learning_rate_multiplier": lr}
    assert sft.resolve_sft_hyperparameters({"learning_rate_multiplier": "auto"}, n)["learning_rate_multiplier"] == lr
    assert sft.resolve_sft_hyperparameters({"learning_rate_multiplier": 0.5}, n)["learning_rate_multiplier"] == 0.5


def test_explicit_values_are_kept_and_checked():
    got = sft.resolve_sft_hyperparameters({"n_epochs": 2, "batch_size": "auto", "learning_rate_multiplier": 0.5}, 50)
    assert got == {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 0.5}
    for bad in ({"n_epochs": 0}, {"n_epochs": 1.5}, {"batch_size": True}, {"learning_rate_multiplier": -1},
                {"learning_rate_multiplier": "fast"}):
        with pytest.raises(InvalidRequestError):
            sft.resolve_sft_hyperparameters(bad, 50)


# ---------------------------------------------------------------- masks


def test_only_assistant_tokens_are_labelled(setup):
    tok = _tokenizer(setup)
    ex = ChatExample(messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                               {"role": "assistant", "content": "Hello there"}])
    row = sft.tokenize_example(tok, ex, max_seq_len=1024)
    assert _target_text(tok, row) == "Hello there<|im_end|>"
    n_target = len(tok("Hello there<|im_end|>", add_special_tokens=False)["input_ids"])
    assert sum(t != -100 for t in row.labels) == n_target
    assert all(label in (-100, tid) for label, tid in zip(row.labels, row.input_ids))
    assert row.labels[: len(row.labels) - n_target - 1] == [-100] * (len(row.labels) - n_target - 1)


def test_weight_zero_turns_are_masked(setup):
    tok = _tokenizer(setup)
    ex = ChatExample(messages=[{"role": "user", "content": "Hi"},
                               {"role": "assistant", "content": "bad answer", "weight": 0},
                               {"role": "user", "content": "Again"},
                               {"role": "assistant", "content": "good answer", "weight": 1}])
    row = sft.tokenize_example(tok, ex, max_seq_len=1024)
    assert "bad answer" in tok.decode(row.input_ids)
    assert _target_text(tok, row) == "good answer<|im_end|>"


def test_tools_are_rendered_and_tool_calls_trained(setup):
    tok = _tokenizer(setup)
    tools = [{"type": "function", "function": {"name": "add", "parameters": {
        "type": "object", "properties": {"a": {"type": "integer"}}}}}]
    call = {"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1}'}}
    ex = ChatExample(messages=[{"role": "user", "content": "add 1"},
                               {"role": "assistant", "content": None, "tool_calls": [call]},
                               {"role": "tool", "tool_call_id": "c1", "content": "1"},
                               {"role": "assistant", "content": "It is 1."}], tools=tools)
    row = sft.tokenize_example(tok, ex, max_seq_len=1024)
    assert '<tools>\n{"name": "add"' in tok.decode(row.input_ids)
    assert _target_text(tok, row) == ('<tool_call>\n{"name": "add", "arguments": {"a": 1}}\n</tool_call><|im_end|>'
                                      "It is 1.<|im_end|>")


def test_trainer_keeps_our_labels(setup):
    """TRL must train on our labels as given (it rebuilds labels only when they are missing)."""
    reporter = ListReporter()
    tok = _tokenizer(setup)
    model = models.load_model(setup.base_dir, trainable=True)[0]
    train_ds = sft._load_dataset(setup.train_path, "training", tok, setup, reporter)
    trainer = sft._build_trainer(replace(setup, output_dir=setup.output_dir.parent / "labels"), model, tok,
                                 train_ds, None, sft.common.reporter_callback(sft._SFTHooks, reporter, setup,
                                                                               has_valid=False))
    assert trainer.train_dataset["labels"] == train_ds["labels"]
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(train_ds))])
    assert (batch["labels"] == -100).any() and (batch["labels"] != -100).any()


# ---------------------------------------------------------------- training runs


def test_run_reports_metrics_checkpoints_and_adapter(setup, reference):
    reporter, result = reference
    assert result.status == "succeeded" and result.steps == 4 and result.trained_tokens > 0
    assert [s[:2] for s in reporter.steps] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    for step, _, metrics in reporter.steps:
        assert {"train_loss", "train_mean_token_accuracy", "valid_loss", "valid_mean_token_accuracy"} <= set(metrics)
        assert ("full_valid_loss" in metrics) == (step % 2 == 0)  # epoch ends
    warns = [e for e in reporter.events if e[0] == "warn"]
    assert len(warns) == 1 and warns[0][2]["truncated_examples"] == 1
    assert [(c[0], c[1].name) for c in reporter.checkpoints] == [(2, "step-2"), (4, "step-4")]
    out = setup.output_dir
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-2", "step-4"]
    ckpt = out / "checkpoints" / "step-4"
    assert {"adapter_model.safetensors", "adapter_config.json", "optimizer.pt", "trainer_state.json"} <= {
        p.name for p in ckpt.iterdir()}
    assert result.adapter_dir == out / "adapter"
    final = load_file(out / "adapter" / "adapter_model.safetensors")
    at_ckpt = load_file(ckpt / "adapter_model.safetensors")
    assert final.keys() == at_ckpt.keys() and all(torch.equal(final[k], at_ckpt[k]) for k in final)
    model, _ = models.load_model(setup.base_dir, ckpt)  # a checkpoint is a usable adapter dir
    assert type(model).__name__ == "PeftModelForCausalLM"
    assert not (out / ".staging").exists() and not list(out.glob(".adapter-*"))


def test_keeps_last_three_checkpoints(setup):
    reporter = ListReporter()
    config = replace(setup, valid_path=None, output_dir=setup.output_dir.parent / "keep", n_epochs=4, batch_size=4)
    result = sft.train_sft(config, reporter)
    assert result.steps == 4 and [c[0] for c in reporter.checkpoints] == [1, 2, 3, 4]
    assert sorted(p.name for p in (config.output_dir / "checkpoints").iterdir()) == ["step-2", "step-3", "step-4"]


@pytest.mark.parametrize("pause_after", [1, 2])  # mid-epoch, and exactly at an epoch's end
def test_pause_then_resume_matches_uninterrupted_run(setup, reference, pause_after):
    config = replace(setup, output_dir=setup.output_dir.parent / f"paused-{pause_after}")
    paused = ListReporter("pause", stop_on_poll=pause_after)
    result = sft.train_sft(config, paused)
    assert (result.status, result.steps, result.adapter_dir) == ("paused", pause_after, None)
    assert [c[0] for c in paused.checkpoints] == [pause_after]
    assert (config.output_dir / "checkpoints" / f"step-{pause_after}").is_dir()
    assert [s[0] for s in paused.steps] == list(range(1, pause_after + 1))
    resumed = ListReporter()
    result = sft.train_sft(config, resumed)
    assert result.status == "succeeded" and result.steps == 4
    assert any(f"Resuming from checkpoint at step {pause_after}" in e[1] for e in resumed.events)
    assert [s[0] for s in resumed.steps] == list(range(pause_after + 1, 5))
    ref_reporter, ref_result = reference
    ref_metrics = {step: metrics for step, _, metrics in ref_reporter.steps}
    for step, _, metrics in paused.steps + resumed.steps:
        assert metrics.keys() == ref_metrics[step].keys()
        assert metrics["train_loss"] == pytest.approx(ref_metrics[step]["train_loss"], abs=1e-4)
    assert result.trained_tokens == ref_result.trained_tokens


def test_cancel_stops_without_adapter(setup):
    config = replace(setup, output_dir=setup.output_dir.parent / "cancelled")
    reporter = ListReporter("cancel", stop_on_poll=1)
    result = sft.train_sft(config, reporter)
    assert (result.status, result.steps, result.adapter_dir) == ("cancelled", 1, None)
    assert reporter.checkpoints == [] and not (config.output_dir / "adapter").exists()


def test_init_adapter_continues_training(setup, reference):
    start = setup.output_dir / "adapter"
    config = replace(setup, valid_path=None, output_dir=setup.output_dir.parent / "continued", init_adapter=start,
                     n_epochs=1, learning_rate_multiplier=1e-6)
    result = sft.train_sft(config, ListReporter())
    assert result.status == "succeeded"
    before = load_file(start / "adapter_model.safetensors")
    after = load_file(result.adapter_dir / "adapter_model.safetensors")
    assert before.keys() == after.keys()
    lora_b = [k for k in before if "lora_B" in k]
    assert lora_b and any(before[k].abs().sum() > 0 for k in lora_b)  # a fresh LoRA would start with B == 0
    assert all(torch.allclose(before[k], after[k], atol=1e-4) for k in before)  # tiny LR: barely moved


def test_half_written_checkpoints_are_ignored(setup):
    config = replace(setup, valid_path=None, output_dir=setup.output_dir.parent / "crashed", n_epochs=1)
    junk = config.output_dir / ".staging" / "checkpoint-7"
    junk.mkdir(parents=True)
    (junk / "adapter_model.safetensors").write_bytes(b"half")
    partial = config.output_dir / "checkpoints" / "step-9"
    partial.mkdir(parents=True)
    (partial / "adapter_config.json").write_text("{}")  # no weights, no trainer_state.json
    reporter = ListReporter()
    result = sft.train_sft(config, reporter)
    assert result.status == "succeeded" and reporter.steps[0][0] == 1
    assert not any("Resuming" in e[1] for e in reporter.events)
    assert not junk.exists() and not partial.exists()
