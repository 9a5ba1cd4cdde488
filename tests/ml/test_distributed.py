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
    assert "2 examples per rank" not in plan.why and "4 examples" in plan.why


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



def test_fsdp_is_planned_only_for_cuda_ranks(monkeypatch):
    """A model that does not fit one device is sharded (FSDP) over CUDA ranks; on CPU accelerate can only
    replicate, and the plan says so rather than claiming FSDP."""
    import torch

    from modelmill.ml import run_config

    plan = distributed.plan_processes(2, 8, fits_one_device=False)
    assert not plan.fsdp and "FSDP needs CUDA" in plan.why
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    plan = distributed.plan_processes("auto", 8, fits_one_device=False)
    assert plan.processes == 2 and plan.fsdp and plan.why.startswith("FSDP over 2 processes (NCCL")
    assert run_config.fsdp_args() == {}
    monkeypatch.setenv(distributed.FSDP_ENV, "1")
    assert run_config.fsdp_args()["fsdp"] == "full_shard auto_wrap"
