"""DPO on modelmill-tiny: preference-line validation, metrics, checkpoints, pause/resume,
continuation from an SFT adapter, and no second model copy for the reference."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from modelmill.errors import DataValidationError, InvalidRequestError
from modelmill.ml import data, dpo, models, sft
from modelmill.ml.run_config import resolve_run_hyperparameters
from modelmill.ml.types import PreferencePair
from tests.ml.reporters import ListReporter


def pair(prompt="Tell me a joke.", chosen="Why did the duck cross the road? To quack you up!", rejected="No.",
         **extra) -> dict:
    return {"input": {"messages": [{"role": "user", "content": prompt}]},
            "preferred_output": [{"role": "assistant", "content": chosen}],
            "non_preferred_output": [{"role": "assistant", "content": rejected}], **extra}


def write(path: Path, objs) -> Path:
    path.write_text("\n".join(o if isinstance(o, str) else json.dumps(o) for o in objs) + "\n")
    return path


# ---------------------------------------------------------------- validation


def problems_of(tmp_path, obj) -> list[tuple[int, str, str]]:
    """(line, field, code) of each problem when `obj` is line 2 of an otherwise valid file."""
    path = write(tmp_path / "p.jsonl", [pair(), obj, pair("Another?")])
    report = data.validate_file(path, "dpo", min_examples=1)
    return [(p.line, p.field, p.code) for p in report.problems]


def test_valid_lines_both_spellings_and_tools(tmp_path):
    completion = {"input": {"messages": [{"role": "system", "content": "Be brief."},
                                         {"role": "user", "content": "Weather in Paris?"}],
                            "tools": [{"type": "function", "function": {"name": "get_weather",
                                                                        "parameters": {"type": "object"}}}]},
                  "preferred_completion": [{"role": "assistant", "tool_calls": [
                      {"id": "c1", "type": "function",
                       "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]}],
                  "non_preferred_completion": [{"role": "assistant", "content": "It is sunny."}]}
    path = write(tmp_path / "p.jsonl", [pair(), completion])
    report = data.validate_file(path, "preference", min_examples=1)
    assert report.ok, report.problems
    first, second = report.examples
    assert isinstance(first, PreferencePair) and first.line == 1 and first.tools is None
    assert first.chosen["content"].startswith("Why") and first.rejected == {"role": "assistant", "content": "No."}
    assert second.tools[0]["function"]["name"] == "get_weather" and second.chosen["tool_calls"][0]["id"] == "c1"
    assert data.read_examples(path, "dpo", min_examples=1)[1].input_messages[0]["role"] == "system"


@pytest.mark.parametrize("obj, expected", [
    ({"preferred_output": [{"role": "assistant", "content": "a"}],
      "non_preferred_output": [{"role": "assistant", "content": "b"}]}, (2, "input", "missing_field")),
    ({"input": {}, "preferred_output": [{"role": "assistant", "content": "a"}],
      "non_preferred_output": [{"role": "assistant", "content": "b"}]}, (2, "input.messages", "missing_field")),
    (pair(chosen=""), (2, "preferred_output[0].content", "empty_output")),
    (pair(rejected="   "), (2, "non_preferred_output[0].content", "empty_output")),
    (pair(chosen="Same.", rejected="Same."), (2, "non_preferred_output", "identical_outputs")),
    ({**pair(), "input": {"messages": [{"role": "bot", "content": "hi"}]}},
     (2, "input.messages[0].role", "unknown_role")),
    ({**pair(), "input": {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}},
     (2, "input.messages[1].role", "invalid_last_role")),
    ({**pair(), "preferred_output": [{"role": "user", "content": "a"}]},
     (2, "preferred_output[0].role", "invalid_value")),
    ({**pair(), "preferred_output": []}, (2, "preferred_output", "invalid_value")),
    ({**pair(), "preferred_output": "a joke"}, (2, "preferred_output", "invalid_type")),
    ({k: v for k, v in pair().items() if k != "non_preferred_output"},
     (2, "non_preferred_output", "missing_field")),
    ({**pair(), "preferred_completion": [{"role": "assistant", "content": "c"}]},
     (2, "preferred_completion", "conflicting_fields")),
    ({**pair(), "preferred_output": [{"role": "assistant", "content": "a", "weight": 1}]},
     (2, "preferred_output[0].weight", "weight_not_allowed")),
    ({**pair(), "non_preferred_output": [{"role": "assistant", "content": "b", "wieght": 0}]},
     (2, "non_preferred_output[0].wieght", "unknown_key")),
])
def test_malformed_lines(tmp_path, obj, expected):
    assert expected in problems_of(tmp_path, obj)


def test_invalid_json_line_and_read_examples_raises(tmp_path):
    path = write(tmp_path / "p.jsonl", [pair(), "{not json", pair(chosen="")])
    with pytest.raises(DataValidationError) as ei:
        data.read_examples(path, "dpo", min_examples=1)
    assert [(p.line, p.code) for p in ei.value.problems] == [(2, "invalid_json"), (3, "empty_output")]


def test_resolve_hyperparameters():
    auto = dpo.resolve_dpo_hyperparameters({}, 45)
    # The shared rule, not SFT's: SFT's small-data learning rate (3.0 under 500 examples) is unmeasured for DPO.
    assert auto == {**resolve_run_hyperparameters({}, 45), "beta": 0.1}
    assert auto["learning_rate_multiplier"] == 1.0
    assert sft.resolve_sft_hyperparameters({}, 45)["learning_rate_multiplier"] == sft.SMALL_DATA_LR_MULTIPLIER
    explicit = dpo.resolve_dpo_hyperparameters({"beta": 0.5, "n_epochs": 1, "batch_size": "auto"}, 45)
    assert explicit["beta"] == 0.5 and explicit["n_epochs"] == 1
    for bad in (0, 5.0, "high", True):
        with pytest.raises(InvalidRequestError) as ei:
            dpo.resolve_dpo_hyperparameters({"beta": bad}, 45)
        assert ei.value.param == "hyperparameters.beta"


def test_render_pair_matches_the_chat_template(tiny_tokenizer):
    p = PreferencePair(input_messages=[{"role": "user", "content": "Hi"}], tools=None,
                       chosen={"role": "assistant", "content": "Hello!"},
                       rejected={"role": "assistant", "tool_calls": [
                           {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]})
    r = dpo.render_pair(tiny_tokenizer, p)
    assert r["prompt"].endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert r["chosen"] == "Hello!<|im_end|>"
    assert r["rejected"] == '<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call><|im_end|>'


# ---------------------------------------------------------------- training


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model_dir):
    home = tmp_path_factory.mktemp("dpo")
    train = write(home / "train.jsonl", [pair(f"Joke {i}?", f"A duck walks into bar {i}. Quack!", "No.")
                                         for i in range(4)])
    valid = write(home / "valid.jsonl", [pair(f"Pun {i}?", f"Ducks {i} love puns.", "Meh.") for i in range(3)])
    return dpo.DPOConfig(base_dir=tiny_model_dir, train_path=train, valid_path=valid, output_dir=home / "ref",
                         n_epochs=2, batch_size=2, learning_rate_multiplier=5.0, max_seq_len=64,
                         eval_every_steps=1, torch_threads=1, sft_weight=0.0)  # DPO's loss alone: ln 2 at step 1


@pytest.fixture(scope="module")
def reference_run(setup):
    reporter = ListReporter()
    result = dpo.train_dpo(setup, reporter)
    return result, reporter


def test_run_metrics_checkpoints_adapter(setup, reference_run):
    result, rep = reference_run
    assert result.status == "succeeded" and result.steps == 4 and result.trained_tokens > 0
    assert [s for s, _, _ in rep.steps] == [1, 2, 3, 4] and all(t == 4 for _, t, _ in rep.steps)
    first, last = rep.steps[0][2], rep.steps[-1][2]
    for prefix in ("train", "valid"):
        assert {f"{prefix}_{m}" for m in ("loss", "reward_margin", "reward_accuracy", "chosen_logps",
                                          "rejected_logps")} <= set(last)
    assert "full_valid_reward_margin" in rep.steps[1][2] and "full_valid_loss" in last  # epoch ends
    assert first["train_loss"] == pytest.approx(0.6931, abs=1e-3)  # policy == reference at step 1
    assert last["train_reward_margin"] > 0 and last["train_loss"] < first["train_loss"]
    assert last["full_valid_reward_accuracy"] == 1.0
    assert [s for s, _, _ in rep.checkpoints] == [2, 4]
    assert sorted(p.name for p in (setup.output_dir / "checkpoints").iterdir()) == ["step-2", "step-4"]
    adapter = result.adapter_dir
    assert adapter == setup.output_dir / "adapter" and not (adapter / "ref").exists()
    model, _ = models.load_model(setup.base_dir, adapter)  # what the sampler does
    assert isinstance(model, PeftModel)


def test_reference_is_the_policy_with_adapter_disabled(setup, tiny_tokenizer):
    train_ds = dpo._load_dataset(setup.train_path, "training", tiny_tokenizer, setup, ListReporter())
    model, tok = models.load_model(setup.base_dir, None, trainable=True)
    trainer = dpo._build_trainer(replace(setup, output_dir=setup.output_dir.parent / "noref"), model, tok,
                                 train_ds, None, dpo.common.reporter_callback(dpo._DPOHooks, ListReporter(),
                                                                              setup, has_valid=False))
    assert trainer.ref_model is None and isinstance(trainer.model, PeftModel)
    n_base = sum(p.numel() for n, p in trainer.model.named_parameters() if "lora_" not in n)
    n_all = sum(p.numel() for p in trainer.model.parameters())
    assert n_all - n_base < 0.2 * n_base  # only LoRA weights on top of one copy of the base


def test_pause_then_resume_matches_uninterrupted_run(setup, reference_run):
    out = setup.output_dir.parent / "paused"
    config = replace(setup, output_dir=out)
    rep = ListReporter(action="pause", stop_on_poll=1)
    paused = dpo.train_dpo(config, rep)
    assert paused.status == "paused" and paused.adapter_dir is None and paused.steps == 1
    assert [s for s, _, _ in rep.checkpoints] == [1] and (out / "checkpoints" / "step-1").is_dir()
    rep2 = ListReporter()
    resumed = dpo.train_dpo(config, rep2)
    assert resumed.status == "succeeded" and resumed.steps == 4
    assert any("Resuming from checkpoint at step 1" in m for _, m, _ in rep2.events)
    assert [s for s, _, _ in rep2.steps] == [2, 3, 4]
    ref = load_file(reference_run[0].adapter_dir / "adapter_model.safetensors")
    got = load_file(resumed.adapter_dir / "adapter_model.safetensors")
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], atol=1e-5, rtol=1e-4)


def test_cancel_stops_without_adapter(setup):
    out = setup.output_dir.parent / "cancelled"
    result = dpo.train_dpo(replace(setup, output_dir=out), ListReporter(action="cancel", stop_on_poll=1))
    assert result.status == "cancelled" and result.steps == 1 and not (out / "adapter").exists()


def test_continue_from_sft_adapter_uses_it_as_reference(setup, tmp_path):
    sft_train = tmp_path / "sft.jsonl"
    sft_train.write_text("\n".join(json.dumps({"messages": [{"role": "user", "content": f"Joke {i}?"},
                                                            {"role": "assistant", "content": "Quack!"}]})
                                   for i in range(4)) + "\n")
    sft_result = sft.train_sft(sft.SFTConfig(base_dir=setup.base_dir, train_path=sft_train, valid_path=None,
                                             output_dir=tmp_path / "sft", n_epochs=1, batch_size=2,
                                             learning_rate_multiplier=5.0, max_seq_len=64, torch_threads=1),
                               ListReporter())
    rep = ListReporter()
    result = dpo.train_dpo(replace(setup, output_dir=tmp_path / "dpo", valid_path=None, n_epochs=1,
                                   init_adapter=sft_result.adapter_dir), rep)
    assert result.status == "succeeded"
    # The reference is the SFT model, so the first step's policy == reference: loss ln 2, margin 0.
    assert rep.steps[0][2]["train_loss"] == pytest.approx(0.6931, abs=1e-3)
    assert any("reference: the starting adapter" in m for _, m, _ in rep.events)
    start = load_file(sft_result.adapter_dir / "adapter_model.safetensors")
    end = load_file(result.adapter_dir / "adapter_model.safetensors")
    assert start.keys() == end.keys() and not (result.adapter_dir / "ref").exists()
    assert any(not torch.equal(start[k], end[k]) for k in start)  # the SFT adapter itself was trained on


def test_sft_weight_adds_the_preferred_answers_nll_to_the_loss(setup, tmp_path):
    """sft_weight w adds w x (the preferred answer's mean per-token NLL) to DPO's loss (TRL's loss_type
    ["sigmoid", "sft"]): at step 1 the policy is the reference, so DPO's part is ln 2 and the rest is
    w x NLL, twice as large for w = 2 as for w = 1."""
    first = {}
    for w in (1.0, 2.0):
        rep = ListReporter(action="cancel", stop_on_poll=1)
        dpo.train_dpo(replace(setup, output_dir=tmp_path / f"w{w:g}", sft_weight=w), rep)
        first[w] = rep.steps[0][2]["train_loss"] - math.log(2)
    assert first[1.0] > 0.5  # a random tiny model's NLL per token is several nats
    assert first[2.0] == pytest.approx(2 * first[1.0], rel=1e-3)
