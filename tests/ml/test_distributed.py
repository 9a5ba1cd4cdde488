"""ml/distributed.py: the rank plan, and DPO over 2 gloo ranks on CPU (real torch.distributed.run, real
processes). SFT through the real worker (same events as one process, cancel, a killed rank) is in
tests/service/test_worker_ranks.py."""

from __future__ import annotations

import json

import pytest

from modelmill.ml import distributed, dpo
from tests.ml.reporters import ListReporter


def test_the_rank_plan_keeps_the_global_batch():
    assert distributed.plan_processes(2, 4).processes == 2
    assert distributed.plan_processes(4, 6).processes == 3  # the largest divisor of 6 that is <= 4
    assert distributed.plan_processes(2, 1).processes == 1  # batch size 1 cannot be split
    assert distributed.plan_processes(1, 8).processes == 1
    assert distributed.plan_processes(2, 4, supports_ranks=False).processes == 1
    assert distributed.plan_processes("auto", 8).processes == 1  # no CUDA here
    plan = distributed.plan_processes(2, 8, fits_one_device=False)
    assert plan.fsdp and "FSDP" in plan.why and "2 examples per rank" not in plan.why and "4 examples" in plan.why


def test_dpo_over_two_ranks(tmp_path, tiny_model_dir):
    rows = [{"input": {"messages": [{"role": "user", "content": f"Greet {i}"}]},
             "preferred_output": [{"role": "assistant", "content": f"Hello {i}!"}],
             "non_preferred_output": [{"role": "assistant", "content": "No."}]} for i in range(4)]
    train = tmp_path / "pairs.jsonl"
    train.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    config = dpo.DPOConfig(base_dir=tiny_model_dir, train_path=train, valid_path=None, output_dir=tmp_path / "out",
                           n_epochs=1, batch_size=2, learning_rate_multiplier=1.0, torch_threads=1)
    reporter = ListReporter()
    result = distributed.train(dpo.train_dpo, config, reporter, distributed.plan_processes(2, 2))
    assert result.status == "succeeded" and result.steps == 2
    assert [s for s, _, _ in reporter.steps] == [1, 2]
