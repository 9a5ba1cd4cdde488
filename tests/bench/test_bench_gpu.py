"""bench/bench_gpu.py on CPU: the LoRA FLOP counter against a hand computation and a real model,
the peak-FLOPs table, the no-CUDA refusal, and (slow) the whole --cpu-smoke code path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))
import bench_gpu  # noqa: E402

# d=8, 2 heads of 4 (1 KV head), MLP 16, 1 layer, vocab 10.
SMALL = bench_gpu.Shape(hidden=8, layers=1, heads=2, kv_heads=1, intermediate=16, vocab=10)


def test_lora_train_flops_match_a_hand_computation():
    # Frozen matmul weights N: q 8x8=64, k 8x4=32, v 8x4=32, o 8x8=64, gate/up/down 3 x 8x16=384 -> 576 per
    # layer; LM head 8x10=80 -> N = 656.
    assert bench_gpu.frozen_matmul_params(SMALL) == 656
    # LoRA r=2 on every linear: 2 x (in + out): q 32, k 24, v 24, o 32, gate 48, up 48, down 48 -> 256.
    assert bench_gpu.lora_params(SMALL, 2, bench_gpu.ALL_LINEAR) == 256
    assert bench_gpu.lora_params(SMALL, 2, ("q_proj", "v_proj")) == 56
    # Causal attention, one sequence of 3 tokens: 3*4/2 = 6 query-key pairs, each 4 x head_dim(4) = 16 FLOPs per
    # head, 2 heads, 1 layer -> 192; a second sequence of 1 token: 1 pair -> 32.
    assert bench_gpu.attention_forward_flops(SMALL, [3]) == 192
    assert bench_gpu.attention_forward_flops(SMALL, [3, 1]) == 224
    # T = 3: forward 2*656*3 + 2*256*3 + 192 = 3936 + 1536 + 192 = 5664;
    # backward 2*656*3 (activation grads only) + 4*256*3 (LoRA: activation + weight grads) + 2*192 = 7392.
    flops = bench_gpu.lora_train_flops(SMALL, [3], 2, bench_gpu.ALL_LINEAR)
    assert (flops.forward, flops.backward, flops.total) == (5664, 7392, 13056)
    # Full fine-tuning would be 6 N T for the weights; LoRA's frozen part is 4 N T.
    assert flops.total - 6 * 256 * 3 - 3 * 192 == 4 * 656 * 3


def test_parameter_counts_match_a_real_llama_with_peft_lora():
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = bench_gpu.Shape(hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128, vocab=300)
    config = LlamaConfig(vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
                         num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
                         num_key_value_heads=shape.kv_heads, tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert linear == bench_gpu.frozen_matmul_params(shape)  # decoder linears + lm_head
    for targets, expected in (("all-linear", bench_gpu.ALL_LINEAR), (None, bench_gpu.PEFT_DEFAULT_LLAMA)):
        peft_model = get_peft_model(LlamaForCausalLM(config),
                                    LoraConfig(r=8, lora_alpha=16, target_modules=targets, task_type="CAUSAL_LM"))
        trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
        assert trainable == bench_gpu.lora_params(shape, 8, expected)


def test_the_1b_model_is_about_one_billion_parameters():
    n = bench_gpu.frozen_matmul_params(bench_gpu.GPU_SHAPE) + bench_gpu.GPU_SHAPE.vocab * bench_gpu.GPU_SHAPE.hidden
    assert 1.0e9 < n < 1.3e9  # matmul weights plus the (untied) embedding


def test_peak_flops_by_device_name():
    assert bench_gpu.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert bench_gpu.peak_flops("NVIDIA H200") == 989e12
    assert bench_gpu.peak_flops("NVIDIA H100 PCIe") == 756e12
    assert bench_gpu.peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert bench_gpu.peak_flops("Some Other GPU") is None


def test_without_cuda_it_refuses_and_writes_a_skip(tmp_path: Path, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "gpu.json"
    doc = bench_gpu.main(["--json", str(out)])
    assert doc == {"bench": "gpu", "skipped": "no CUDA device"} == json.loads(out.read_text())
    assert "no CUDA device" in capsys.readouterr().out


@pytest.mark.slow
def test_cpu_smoke_runs_every_code_path(tmp_path: Path):
    out = tmp_path / "gpu.json"
    subprocess.run([sys.executable, str(BENCH / "bench_gpu.py"), "--cpu-smoke", "--peak-tflops", "1",
                    "--json", str(out)], check=True, timeout=600)
    doc = json.loads(out.read_text())
    assert doc["bench"] == "gpu" and doc["device"] == "cpu"
    assert [len(doc["runs"][k]) for k in bench_gpu.KINDS] == [1, 1, 1]
    for r in doc["rows"]:
        assert r["baseline_median"] > 0 and r["modelmill_median"] > 0 and r["ratio"] > 0
    assert all(0 < r["modelmill_mfu"] < 1 for r in doc["rows"] if "modelmill_mfu" in r)
