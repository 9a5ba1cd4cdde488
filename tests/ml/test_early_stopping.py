"""Early stopping and final_model "best" (trainer_hooks.ReporterHooks): the rule on a made-up history, and
one real SFT run on modelmill-tiny whose validation loss rises while it learns the opposite answers."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from modelmill.ml import models, sft, trainer_hooks
from tests.ml.reporters import ListReporter


def _hooks(patience, final_model="last"):
    config = SimpleNamespace(early_stopping_patience=patience, final_model=final_model)
    return trainer_hooks.ReporterHooks(ListReporter(), config, has_valid=True)


def _state(losses: dict[int, float], step: int, max_steps: int = 100):
    history = [{"loss": 1.0, "step": s} for s in losses] + [{"full_valid_loss": v, "step": s} for s, v in losses.items()]
    return SimpleNamespace(log_history=history, global_step=step, max_steps=max_steps)


def test_the_rule_counts_evaluations_since_the_best():
    hooks = _hooks(patience=2, final_model="best")
    control = SimpleNamespace(should_training_stop=False)
    state = _state({10: 0.9, 20: 0.5, 30: 0.6}, step=30)
    assert hooks.best_evaluation(state) == (20, 0.5) and hooks.protected_steps(state) == (20,)
    hooks.stop_early_if_stalled(state, control)
    assert not control.should_training_stop  # one evaluation without improvement, patience 2
    state = _state({10: 0.9, 20: 0.5, 30: 0.6, 40: 0.5}, step=40)  # a tie is not an improvement
    hooks.stop_early_if_stalled(state, control)
    assert control.should_training_stop
    level, message, data = hooks.reporter.events[-1]
    assert message.startswith("Stopped early at step 40 of 100: full_valid_loss has not improved for 2 evaluation(s)")
    assert data == {"early_stopped_step": 40, "best_step": 20, "full_valid_loss": 0.5}
    off = SimpleNamespace(should_training_stop=False)
    _hooks(patience=None).stop_early_if_stalled(state, off)
    assert not off.should_training_stop and _hooks(patience=None).protected_steps(state) == ()


@pytest.fixture(scope="module")
def diverging(tmp_path_factory):
    """Training teaches 'no' to questions whose validation answer is 'yes': the validation loss rises
    from the first epoch on, so the first epoch's checkpoint is the best one."""
    home = tmp_path_factory.mktemp("home")
    base = models.ensure_base(home, "modelmill-tiny")

    def write(name, answer):
        path = home / name
        path.write_text("\n".join(json.dumps({"messages": [{"role": "user", "content": f"Is {i} even?"},
                                                           {"role": "assistant", "content": answer}]})
                                  for i in range(4)) + "\n")
        return path

    config = sft.SFTConfig(base_dir=base, train_path=write("train.jsonl", "no no no"),
                           valid_path=write("valid.jsonl", "yes yes yes"), output_dir=home / "out", n_epochs=6,
                           batch_size=4, learning_rate_multiplier=20.0, eval_every_steps=0, torch_threads=1,
                           early_stopping_patience=3, final_model="best", keep_checkpoints=2)
    reporter = ListReporter()
    return config, reporter, sft.train_sft(config, reporter)


def test_a_stalled_run_stops_early_and_returns_its_best_checkpoint(diverging):
    config, reporter, result = diverging
    losses = [(s, m["full_valid_loss"]) for s, _, m in reporter.steps if "full_valid_loss" in m]
    assert [s for s, _ in losses] == [1, 2, 3, 4] and all(a[1] < b[1] for a, b in zip(losses, losses[1:])), losses
    assert result.status == "succeeded" and result.steps == 4  # of 6: three evaluations without improvement
    messages = [m for _, m, _ in reporter.events]
    assert any(m.startswith("Stopped early at step 4 of 6") for m in messages), messages
    assert any(m.startswith("fine_tuned_model is the checkpoint of step 1") for m in messages), messages
    best = config.output_dir / "checkpoints" / "step-1"
    kept = sorted(p.name for p in (config.output_dir / "checkpoints").iterdir())
    assert kept == ["step-1", "step-3", "step-4"]  # the newest 2 (keep_checkpoints), plus the best
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        assert (result.adapter_dir / name).read_bytes() == (best / name).read_bytes()
