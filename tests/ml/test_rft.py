"""RFT on modelmill-tiny: hyperparameter mapping, the reasoning format, GRPO runs graded by
string_check and python graders, metrics/events, checkpoint ranking, safety rails, pause/resume,
cancel and the validation holdout. Budgets are tiny (12 completion tokens, 2 generations)."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
from safetensors.torch import load_file

from modelmill.errors import GraderFailedError, InvalidRequestError
from modelmill.ml import rft
from modelmill.ml.graders import GraderContext
from modelmill.ml.graders import sandbox as sandbox_mod
from modelmill.ml.graders.sandbox import SandboxConfig
from modelmill.ml.rft.rewards import completion_sample, split_answer, with_instruction
from tests.ml.reporters import ListReporter

# like "" always passes, like "zzqx-never" never does, a missing {{item.answer}} is an invalid_variable_error
CONTAINS = {"type": "string_check", "name": "contains", "input": "{{sample.output_text}}",
            "reference": "{{item.answer}}", "operation": "like"}
UNSAFE = GraderContext(sandbox=SandboxConfig(backend="unsafe-subprocess", wall_seconds=5.0))
BWRAP = SandboxConfig(wall_seconds=5.0, batch_wall_seconds=60.0, uid=2_100_000_000, uid_pool_size=16)


def line(question: str, **item) -> dict:
    return {"messages": [{"role": "user", "content": question}], **item}


def write(path: Path, objs) -> Path:
    path.write_text("".join(json.dumps(o) + "\n" for o in objs))
    return path


def events(rep: ListReporter, key: str) -> list[tuple[str, str, dict]]:
    return [(level, msg, data) for level, msg, data in rep.events if data and key in data]


# ---------------------------------------------------------------- hyperparameters


def test_auto_hyperparameters_small_and_larger_files():
    assert rft.resolve_rft_hyperparameters({}, 10) == {
        "n_epochs": 3, "batch_size": 1, "learning_rate_multiplier": 1.0, "reasoning_effort": "low",
        "compute_multiplier": 1.0, "eval_interval": 6, "eval_samples": 2}  # 30 steps, 5 evaluations
    big = rft.resolve_rft_hyperparameters({"reasoning_effort": "default", "eval_samples": "auto"}, 100)
    assert (big["n_epochs"], big["batch_size"], big["eval_interval"], big["reasoning_effort"]) == (1, 2, 10, "low")


def test_explicit_hyperparameters_are_kept():
    hp = rft.resolve_rft_hyperparameters({"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 0.5,
                                          "reasoning_effort": "low", "compute_multiplier": 2,
                                          "eval_interval": 3, "eval_samples": 5}, 10)
    assert hp == {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 0.5, "reasoning_effort": "low",
                  "compute_multiplier": 2.0, "eval_interval": 3, "eval_samples": 5}


@pytest.mark.parametrize("key, value", [
    ("n_epochs", 0), ("n_epochs", 51), ("batch_size", 257), ("batch_size", 1.5), ("learning_rate_multiplier", 0),
    ("reasoning_effort", "extreme"), ("reasoning_effort", 3), ("compute_multiplier", 0), ("compute_multiplier", 10.5),
    ("compute_multiplier", True), ("compute_multiplier", "lots"), ("eval_interval", 0), ("eval_interval", 2.5),
    ("eval_samples", -1), ("eval_samples", True),
])
def test_bad_hyperparameters_name_the_field(key, value):
    with pytest.raises(InvalidRequestError) as ei:
        rft.resolve_rft_hyperparameters({key: value}, 10)
    assert ei.value.param == f"hyperparameters.{key}"


def test_compute_multiplier_and_reasoning_effort_mapping(tmp_path):
    assert [rft.group_size(cm) for cm in (1e-4, 0.5, 1.0, 2.0, 2.6, 10)] == [2, 2, 4, 8, 10, 32]
    config = rft.RFTConfig(base_dir=tmp_path, train_path=tmp_path, valid_path=None, output_dir=tmp_path, n_epochs=1,
                           batch_size=2, learning_rate_multiplier=1.0, grader=CONTAINS)
    assert [replace(config, reasoning_effort=e).completion_budget for e in ("low", "medium", "high")] == [64, 128, 256]
    assert replace(config, max_completion_tokens=16).completion_budget == 16 and config.num_generations == 4
    assert config.completion_budget == 64  # reasoning_effort "default" resolves to "low"
    # Rollout temperature: the job's, else 0.7 one-turn (the measured "auto") and 1.0 agentic.
    assert (config.sampling_temperature, replace(config, temperature=1.2).sampling_temperature) == (0.7, 1.2)
    assert replace(config, environment={"tools": []}).sampling_temperature == 1.0


def test_rollout_backends():
    assert rft.rollout_backend_args() == {"use_vllm": False}
    with pytest.raises(InvalidRequestError, match="CUDA GPU|vllm package") as ei:
        rft.rollout_backend_args("vllm")  # this machine has no GPU (and no vllm)
    assert ei.value.param == "rollout_backend"
    with pytest.raises(InvalidRequestError, match="unknown rollout backend"):
        rft.rollout_backend_args("tgi")


# ---------------------------------------------------------------- the reasoning format


@pytest.mark.parametrize("text, answer, reasoning, found", [
    ("2 + 2 makes 4.\nAnswer: 4", "4", "2 + 2 makes 4.", True),
    ("Let me think.\n**Answer:** Paris\n", "Paris", "Let me think.", True),
    ("answer: 1\nwait, no.\nFinal answer: {\"a\": 2}", '{"a": 2}', "answer: 1\nwait, no.", True),
    ("Here is your answer: Paris", "Paris", "Here is your", True),
    ("The answer is 4", "The answer is 4", "", False),  # no "answer:" marker: the whole text
    ("", "", "", False),
])
def test_split_answer(text, answer, reasoning, found):
    assert split_answer(text) == (answer, reasoning, found)


def test_completion_sample_hides_reasoning_and_parses_tools():
    s = completion_sample("Sum it.\nAnswer: {\"v\": 4}", parse_tools=False)
    assert s["output_text"] == '{"v": 4}' and s["output_json"] == {"v": 4} and s["output_reasoning"] == "Sum it."
    assert completion_sample("just 4", parse_tools=False, require_marker=True)["output_text"] == ""
    call = completion_sample('Checking.\n<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call>',
                             parse_tools=True)
    assert call["output_tools"][0]["function"] == {"name": "f", "arguments": '{"a": 1}'}
    assert call["output_text"] == "Checking." and call["output_json"] is None


def test_reasoning_instruction_goes_into_the_system_message():
    user = [{"role": "user", "content": "Hi"}]
    assert with_instruction(user, "THINK") == [{"role": "system", "content": "THINK"}, *user]
    dev = [{"role": "developer", "content": [{"type": "text", "text": "Be brief."}]}, *user]
    assert with_instruction(dev, "THINK")[0] == {"role": "developer", "content": "Be brief.\n\nTHINK"}
    assert with_instruction(user, None) == user


def test_holdout_split_is_deterministic_by_seed():
    assert rft.holdout_split(1, 0) == [] and len(rft.holdout_split(10, 0)) == 1
    assert len(rft.holdout_split(100, 0)) == 10 and len(rft.holdout_split(1000, 0)) == rft.MAX_HOLDOUT
    assert rft.holdout_split(40, 3) == rft.holdout_split(40, 3) != rft.holdout_split(40, 4)


# ---------------------------------------------------------------- training


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model_dir):
    home = tmp_path_factory.mktemp("rft")
    train = write(home / "train.jsonl", [line("Say hi.", answer=""), line("Say no.", answer="zzqx-never"),
                                         line("Say yes.")])  # rewards 1, 0 and an invalid_variable_error
    valid = write(home / "valid.jsonl", [line("Say A.", answer=""), line("Say B.", answer="zzqx-never")])
    return rft.RFTConfig(base_dir=tiny_model_dir, train_path=train, valid_path=valid, output_dir=home / "ref",
                         n_epochs=2, batch_size=3, learning_rate_multiplier=10.0, grader=CONTAINS,
                         compute_multiplier=0.5, eval_interval=1, eval_samples=1, max_completion_tokens=12,
                         max_seq_len=256, torch_threads=1, keep_checkpoints=1)


@pytest.fixture(scope="module")
def reference_run(setup):
    """The run, plus the number of rows of every generate() call it made."""
    from transformers.generation.utils import GenerationMixin

    rows, original = [], GenerationMixin.generate

    def counting(self, *args, **kwargs):
        rows.append(int(kwargs["input_ids"].shape[0]))
        return original(self, *args, **kwargs)

    reporter = ListReporter()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(GenerationMixin, "generate", counting)
        result = rft.train_rft(setup, reporter)
    return result, reporter, rows


def test_string_check_run_metrics_events_checkpoints(setup, reference_run):
    result, rep, _ = reference_run
    assert result.status == "succeeded" and result.steps == 2 and result.trained_tokens > 0
    assert [s for s, _, _ in rep.steps] == [1, 2] and all(t == 2 for _, t, _ in rep.steps)
    for _, _, m in rep.steps:
        assert set(m) == {"train_loss", "train_reward_mean", "train_reward_std", "valid_reward_mean", "kl",
                          "completion_tokens_mean", "train_grader_error_rate",
                          "train_grader_error_rate_invalid_variable_error"}
        # 3 prompts x 2 generations: rewards [1, 1, 0, 0, 0, 0], one prompt's pair has no item.answer
        assert m["train_reward_mean"] == pytest.approx(1 / 3)
        assert m["train_reward_std"] == pytest.approx(math.sqrt(2) / 3)
        assert m["train_grader_error_rate"] == pytest.approx(1 / 3)
        assert m["train_grader_error_rate_invalid_variable_error"] == pytest.approx(1 / 3)
        assert m["valid_reward_mean"] == 0.5 and 1 <= m["completion_tokens_mean"] <= 12
        assert m["kl"] == pytest.approx(0.0, abs=1e-6)  # equal rewards within each group: nothing to learn
    [(_, _, base)] = events(rep, "base_reward")
    assert base == {"base_reward": 0.5, "samples": 2} and not [e for e in rep.events if e[0] == "warn"]
    # Both checkpoints score 0.5; the first stays the best and is kept although keep_checkpoints=1.
    assert [(s, m["valid_reward_mean"]) for s, _, m in rep.checkpoints] == [(1, 0.5), (2, 0.5)]
    assert [d for _, _, d in events(rep, "best_checkpoint_step")] == [{"best_checkpoint_step": 1,
                                                                        "valid_reward_mean": 0.5}] * 2
    ckpts = setup.output_dir / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-1", "step-2"]
    assert json.loads((ckpts / "step-1" / rft.CHECKPOINT_SCORE_FILE).read_text())["valid_reward_mean"] == 0.5
    assert (ckpts / "step-1" / "adapter_model.safetensors").is_file()
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()


def test_rollouts_are_one_generate_call_per_step(reference_run):
    # base check (2 validation prompts), then per step: the 3 prompts x 2 generations in ONE call, and
    # the validation evaluation (2 prompts x 1 sample)
    assert reference_run[2] == [2, 6, 2, 6, 2]


needs_bwrap = pytest.mark.skipif(not sandbox_mod.available(BWRAP),
                                 reason=f"bwrap sandbox unavailable: {sandbox_mod.unavailable_reason(BWRAP)}")


@needs_bwrap
def test_python_grader_run_learns_with_holdout(setup, tmp_path):
    # A reward that varies between completions (so GRPO has advantages), reading the item too.
    source = ("def grade(sample, item):\n"
              "    assert 'output_reasoning' in sample and item['kind'] == 'mod'\n"
              "    return sum(map(ord, sample['output_text'])) % 5 / 4\n")
    train = write(tmp_path / "train.jsonl", [line(f"Question {i}?", kind="mod") for i in range(10)])
    config = replace(setup, train_path=train, valid_path=None, output_dir=tmp_path / "out", n_epochs=1,
                     learning_rate_multiplier=40.0, eval_interval=2, eval_samples=2, keep_checkpoints=3,
                     grader={"type": "python", "name": "mod5", "source": source},
                     grader_context=GraderContext(sandbox=BWRAP))
    rep = ListReporter()
    result = rft.train_rft(config, rep)
    assert result.status == "succeeded" and result.steps == 3  # 9 training prompts, 3 per step
    [(_, msg, holdout)] = events(rep, "holdout_examples")
    assert holdout["holdout_examples"] == 1 and holdout["train_examples"] == 9 and "1 of 10" in msg
    assert "were held out as the validation set" in msg
    assert len((tmp_path / "out" / "data" / "valid.jsonl").read_text().splitlines()) == 1
    metrics = [m for _, _, m in rep.steps]
    assert all(m["train_grader_error_rate"] == 0 for m in metrics)
    assert all(m["train_reward_mean"] * 24 == pytest.approx(round(m["train_reward_mean"] * 24)) for m in metrics)
    assert any(m["train_reward_std"] > 0 for m in metrics)
    assert metrics[0]["kl"] == pytest.approx(0.0, abs=1e-6) and metrics[-1]["kl"] > 0  # the policy moved
    assert [("valid_reward_mean" in m) for m in metrics] == [False, True, True]  # step 2 and the epoch end
    weights = load_file(result.adapter_dir / "adapter_model.safetensors")
    assert any(v.abs().sum() > 0 for k, v in weights.items() if "lora_B" in k)  # LoRA B starts at zero


def test_grader_failing_on_base_samples_stops_before_training(setup, tmp_path):
    grader = {"type": "python", "name": "boom", "source": "def grade(sample, item):\n    raise ValueError('boom')\n"}
    rep = ListReporter()
    with pytest.raises(GraderFailedError) as ei:
        rft.train_rft(replace(setup, output_dir=tmp_path / "out", grader=grader, grader_context=UNSAFE), rep)
    msg = str(ei.value)
    assert ei.value.code == "grader_error" and "failed on 2 of 2 samples of the base model" in msg
    assert "e.g. for the prompt 'Say A.' the sample '" in msg  # the first validation prompt
    assert "python_grader_runtime_error" in msg and "ValueError: boom" in msg
    assert rep.steps == [] and not events(rep, "base_reward")


def test_grader_failing_during_a_step_raises_with_a_quoted_sample(setup, tmp_path):
    grader = {**CONTAINS, "reference": "{{item.missing}}"}
    with pytest.raises(GraderFailedError) as ei:
        rft.train_rft(replace(setup, output_dir=tmp_path / "out", grader=grader, base_check_prompts=0),
                      ListReporter())
    msg = str(ei.value)
    assert "failed on 6 of 6 samples at step 1 (more than 50%)" in msg
    assert "e.g. for the prompt 'Say " in msg and "' with item {" in msg and msg.endswith("}: invalid_variable_error")


def test_same_reward_for_every_base_sample_warns(setup, tmp_path):
    valid = write(tmp_path / "valid.jsonl", [line("A?", answer=""), line("B?", answer="")])
    rep = ListReporter(action="cancel", stop_on_poll=1)
    result = rft.train_rft(replace(setup, valid_path=valid, output_dir=tmp_path / "out"), rep)
    assert result.status == "cancelled" and result.steps == 1 and not (tmp_path / "out" / "adapter").exists()
    [(level, msg, data)] = [e for e in rep.events if e[0] == "warn"]
    assert "grader always returns 1" in msg and data == {"constant_reward": 1.0, "samples": 2}
    assert [d for _, _, d in events(rep, "base_reward")] == [{"base_reward": 1.0, "samples": 2}]
    assert rep.checkpoints == [] and not events(rep, "best_checkpoint_step")  # cancel: no checkpoint, no best


def test_grader_item_is_the_whole_line_with_its_messages(setup, tmp_path):
    """OpenAI hands graders the whole training line as `item`, so a cookbook grader templating
    {{item.messages}} sees the prompt (it used to be an invalid_variable_error on every sample)."""
    grader = {"type": "string_check", "name": "sees_prompt", "input": "{{item.messages}}",
              "reference": "{{item.messages[0].content}}", "operation": "like"}
    rep = ListReporter(action="cancel", stop_on_poll=1)
    result = rft.train_rft(replace(setup, output_dir=tmp_path / "out", grader=grader), rep)
    assert result.status == "cancelled"
    assert [d for _, _, d in events(rep, "base_reward")] == [{"base_reward": 1.0, "samples": 2}]


def test_pause_then_resume(setup):
    config = replace(setup, output_dir=setup.output_dir.parent / "paused")
    rep = ListReporter(action="pause", stop_on_poll=1)
    paused = rft.train_rft(config, rep)
    assert paused.status == "paused" and paused.adapter_dir is None and paused.steps == 1
    assert [s for s, _, _ in rep.checkpoints] == [1] and "valid_reward_mean" not in rep.checkpoints[0][2]
    assert not events(rep, "best_checkpoint_step")  # a pause checkpoint is not evaluated
    rep2 = ListReporter()
    resumed = rft.train_rft(config, rep2)
    assert resumed.status == "succeeded" and resumed.steps == 2
    assert any("Resuming from checkpoint at step 1" in m for _, m, _ in rep2.events)
    assert not events(rep2, "base_reward")  # checked once, before the first step
    assert [s for s, _, _ in rep2.steps] == [2] and rep2.steps[0][2]["valid_reward_mean"] == 0.5
    assert [d["best_checkpoint_step"] for _, _, d in events(rep2, "best_checkpoint_step")] == [2, 2]


def test_a_resumed_run_draws_each_epoch_in_the_uninterrupted_order():
    """TRL's RepeatSampler draws epoch k's order from one generator seeded once, so a fresh sampler
    (a run resumed at an epoch end) drew epoch 0's order again; epoch_seeded ties it to (seed, epoch)."""
    from trl.trainer.utils import RepeatSampler

    def sampler():
        return RepeatSampler(list(range(12)), mini_repeat_count=2, batch_size=3, shuffle=True, seed=5)

    def orders(epochs, wrap=True):
        s = rft.epoch_seeded(sampler(), 5) if wrap else sampler()
        out = []
        for epoch in epochs:
            if wrap:
                s.set_epoch(epoch)
            out.append(list(s))
        return out

    uninterrupted = orders(range(4))
    assert len({tuple(o) for o in uninterrupted}) == 4  # a new order every epoch
    assert orders([2, 3]) == uninterrupted[2:]  # resumed before epoch 2: the same orders
    plain = orders(range(4), wrap=False)
    assert orders([2, 3], wrap=False)[0] == plain[0] != plain[2]  # TRL alone: epoch 0's order again


def test_cancel_during_an_evaluation_stops_it_within_one_batch(setup):
    """Issue 17: eval_samples can make one evaluation long; a cancel is honoured between its
    generate() batches (EVAL_BATCH_ROWS rows each), not after the whole evaluation."""
    from transformers.generation.utils import GenerationMixin

    # 2 validation prompts x 20 samples = 40 rows: 3 eval batches (16, 16, 8) if nothing stops it.
    config = replace(setup, output_dir=setup.output_dir.parent / "cancel-eval", n_epochs=1, eval_samples=20)
    rows, original = [], GenerationMixin.generate

    def counting(self, *args, **kwargs):
        rows.append(int(kwargs["input_ids"].shape[0]))
        return original(self, *args, **kwargs)

    # Poll 1 is step 1's on_step_end; poll 2 comes before the evaluation's second batch.
    rep = ListReporter(action="cancel", stop_on_poll=2)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(GenerationMixin, "generate", counting)
        result = rft.train_rft(config, rep)
    assert result.status == "cancelled" and result.steps == 1
    assert rows.count(rft.EVAL_BATCH_ROWS) == 1 and 8 not in rows  # one eval batch ran, not three
    assert rep.checkpoints == [] and not events(rep, "best_checkpoint_step")
