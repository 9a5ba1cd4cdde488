"""ml/multi_lora.py on modelmill-tiny: one base, adapters by name, the stacked mixed-adapter path
against PEFT's own mixed batch, merging rules and the adapter LRU with pins."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from modelmill.ml import batching, models
from modelmill.ml.multi_lora import MultiLoraModel
from tests.ml.lora_adapters import random_lora_adapter


@pytest.fixture(scope="module")
def adapter_dirs(tiny_model_dir, tmp_path_factory) -> list[Path]:
    """Three adapters with different ranks and target modules (random A and B, scaled up)."""
    return [random_lora_adapter(tiny_model_dir, tmp_path_factory.mktemp(f"lora{seed}"), seed=seed, r=r,
                                targets=targets)
            for seed, (r, targets) in enumerate([(2, ["q_proj", "v_proj"]), (4, "all-linear"), (3, ["down_proj"])])]


def inputs(tokenizer, n: int) -> dict:
    tokenizer.padding_side = "left"
    enc = tokenizer([f"prompt number {i} " * (i + 1) for i in range(n)], return_tensors="pt", padding=True)
    return dict(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], max_new_tokens=6,
                min_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)


def test_stacked_mixed_batch_gives_pefts_tokens(tiny_model_dir, adapter_dirs):
    model, tok = models.load_model(tiny_model_dir)
    host = MultiLoraModel(model)
    names = [host.acquire(d) for d in adapter_dirs]
    rows = [names[0], None, names[1], names[2], names[0], names[1]]
    kw = inputs(tok, len(rows))
    with batching.GENERATE_LOCK, torch.inference_mode():
        stacked = host.generate(adapters_B=rows, **kw)
        peft = host.model.generate(adapter_names=[n or "__base__" for n in rows], **kw)
        alone = [host.generate(adapters_B=[n], **{**kw, "input_ids": kw["input_ids"][i:i + 1],
                                                  "attention_mask": kw["attention_mask"][i:i + 1]})
                 for i, n in enumerate(rows)]
    assert torch.equal(stacked, peft)
    for i, one in enumerate(alone):  # merged (or base) alone: the same tokens as in the mixed batch
        assert torch.equal(one[0, -6:], stacked[i, -6:])


def test_half_precision_bases_never_merge(tiny_model_dir, adapter_dirs):
    model, tok = models.load_model(tiny_model_dir)
    host = MultiLoraModel(model.to(torch.bfloat16))
    name = host.acquire(adapter_dirs[1])
    before = [p.detach().clone() for p in host.model.get_base_model().parameters()]
    kw = inputs(tok, 2)
    with batching.GENERATE_LOCK, torch.inference_mode():
        got = host.generate(adapters_B=[name, name], **kw)
        host.model.set_adapter(name)
        want = host.model.generate(**kw)
        host.generate(adapters_B=[None, None], **kw)
    assert host._merged is None and torch.equal(got, want)
    assert all(torch.equal(a, b) for a, b in zip(before, host.model.get_base_model().parameters()))


def test_adapters_are_dropped_least_recent_first_but_never_while_pinned(tiny_model_dir, adapter_dirs):
    model, _ = models.load_model(tiny_model_dir)
    host = MultiLoraModel(model, max_adapters=1)
    first = host.acquire(adapter_dirs[0])  # pinned
    second = host.acquire(adapter_dirs[1])
    assert host.adapters() == adapter_dirs[:2]  # over the limit: the pinned one stays
    host.release(first)
    assert host.adapters() == [adapter_dirs[1]] and first not in host.model.peft_config
    assert not host.evict(adapter_dirs[1])  # still pinned
    host.release(second)
    assert host.evict(adapter_dirs[1]) and host.adapters() == [] and host.adapter_loads == 2
