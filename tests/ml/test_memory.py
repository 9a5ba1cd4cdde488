"""ml/memory.plan_memory: precision, quantisation, checkpointing and the sequence limit, on fake
devices and model configs (no GPU needed), plus the parts that read a real model directory."""

from __future__ import annotations

import json

import pytest
from transformers import LlamaConfig

from modelmill.errors import DataValidationError, InvalidRequestError
from modelmill.ml import data, memory, sft
from modelmill.ml.memory import GIB, Device, MemoryRequest, ModelShape, plan_memory

CPU_24G = Device("cpu", "cpu", total_bytes=24 * GIB, free_bytes=20 * GIB, bf16=False)
H100 = Device("cuda", "NVIDIA H100", total_bytes=80 * GIB, free_bytes=79 * GIB, bf16=True)
GPU_16G = Device("cuda", "NVIDIA T4-ish", total_bytes=16 * GIB, free_bytes=15 * GIB, bf16=True)

# SmolLM2-135M's and Llama-3-8B's shapes, from their configs (no weights needed).
SMOL = ModelShape.of(LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                 num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                                 tie_word_embeddings=True))
LLAMA_8B = ModelShape.of(LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                                     num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                                     max_position_embeddings=8192))


def test_shape_counts_parameters_like_the_model(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM

    assert 130e6 < SMOL.params < 140e6 and 7.9e9 < LLAMA_8B.params < 8.1e9
    shape = memory.model_shape(tiny_model_dir)  # counted from the safetensors header
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    assert shape.params == sum(p.numel() for p in model.parameters())
    assert shape.context == memory.model_context(tiny_model_dir) == model.config.max_position_embeddings
    assert ModelShape.of(model.config).params == shape.params  # the config-only count agrees


def test_cpu_is_fp32_unquantised_without_checkpointing_for_short_examples():
    plan = plan_memory(SMOL, CPU_24G, MemoryRequest(batch_size=4, longest_example=300))
    assert (plan.dtype, plan.quantization, plan.gradient_checkpointing) == ("float32", "none", False)
    assert not plan.bf16 and plan.dtype_why == "CPU" and plan.quantization_why == "auto: CPU"
    assert plan.estimated_peak_bytes < plan.budget_bytes == int(24 * GIB * memory.CPU_MEMORY_SHARE)


def test_cpu_turns_checkpointing_on_only_when_long_examples_need_it():
    long = plan_memory(SMOL, CPU_24G, MemoryRequest(batch_size=4, longest_example=4096))
    assert long.gradient_checkpointing and "> 18.0 GB budget" in long.gradient_checkpointing_why
    assert plan_memory(SMOL, CPU_24G, MemoryRequest(batch_size=4, longest_example=4096,
                                                    gradient_checkpointing=False)).gradient_checkpointing is False


def test_cuda_that_fits_is_bf16_unquantised():
    plan = plan_memory(SMOL, H100, MemoryRequest(batch_size=4, longest_example=2048))
    assert (plan.dtype, plan.quantization, plan.gradient_checkpointing) == ("bfloat16", "none", False)
    assert plan.bf16 and "fits" in plan.quantization_why and plan.max_seq_len == 8192


def test_cuda_that_does_not_fit_in_bf16_gets_nf4():
    plan = plan_memory(LLAMA_8B, GPU_16G, MemoryRequest(batch_size=1, longest_example=1024))
    assert plan.quantization == "nf4" and plan.quantization_why.startswith("auto: ")
    assert "estimated unquantised >" in plan.quantization_why
    assert plan.estimated_peak_bytes <= plan.budget_bytes
    # An explicit "none" is obeyed (the run may then fail for memory, as asked).
    assert plan_memory(LLAMA_8B, GPU_16G, MemoryRequest(quantization="none")).quantization == "none"
    # On a big GPU the same model trains unquantised.
    assert plan_memory(LLAMA_8B, H100, MemoryRequest(longest_example=1024)).quantization == "none"


def test_nf4_estimate_is_under_045x_bf16_where_weights_dominate():
    """Only the weights shrink: the logits (fp32, vocabulary-wide) and activations do not, so the
    ratio grows with the tokens per step (Llama-3-8B: about 0.43 at 512 tokens, 0.54 at 4 x 1024)."""
    def ratio(tokens: int) -> float:
        est = {q: memory.estimate_bytes(LLAMA_8B, tokens, dtype="bfloat16", quantization=q, checkpointing=True)
               for q in ("none", "nf4")}
        return est["nf4"] / est["none"]

    assert ratio(512) < 0.45 < ratio(4 * 1024) < 0.6


def test_nf4_requested_on_cpu_is_an_error_never_ignored():
    with pytest.raises(InvalidRequestError) as e:
        plan_memory(SMOL, CPU_24G, MemoryRequest(quantization="nf4", quantization_from="job metadata 'x'"))
    assert e.value.param == "quantization" and e.value.code == "quantization_unsupported"
    assert "job metadata 'x'" in e.value.message and "CUDA" in e.value.message
    requested = plan_memory(SMOL, H100, MemoryRequest(quantization="nf4", quantization_from="MODELMILL_QUANTIZATION"))
    assert requested.quantization == "nf4" and requested.quantization_why == "requested by MODELMILL_QUANTIZATION"
    with pytest.raises(InvalidRequestError):
        plan_memory(SMOL, H100, MemoryRequest(quantization="int3"))


def test_max_seq_len_is_the_context_or_the_request_within_it():
    assert plan_memory(SMOL, CPU_24G, MemoryRequest()).max_seq_len == 8192
    asked = plan_memory(SMOL, CPU_24G, MemoryRequest(max_seq_len=300))
    assert asked.max_seq_len == 300 and asked.max_seq_len_why.startswith("requested")
    for bad in (0, 8193):
        with pytest.raises(InvalidRequestError) as e:
            plan_memory(SMOL, CPU_24G, MemoryRequest(max_seq_len=bad))
        assert e.value.param == "max_seq_len"


def test_memory_caps_the_limit_below_the_context():
    small = Device("cpu", "cpu", total_bytes=8 * GIB, free_bytes=6 * GIB, bf16=False)
    plan = plan_memory(SMOL, small, MemoryRequest(batch_size=4))
    assert 128 <= plan.max_seq_len < 8192 and plan.max_seq_len % memory.SEQ_LEN_STEP == 0
    assert plan.max_seq_len_why.startswith("memory estimate")
    over = memory.estimate_bytes(SMOL, 4 * (plan.max_seq_len + 128), dtype="float32", quantization="none",
                                 checkpointing=True)
    assert over > plan.budget_bytes  # one step more would not fit
    # A model whose config states no context is capped by memory alone.
    no_context = ModelShape(**{**SMOL.__dict__, "context": None})
    assert plan_memory(no_context, small, MemoryRequest(batch_size=4)).max_seq_len == plan.max_seq_len


def test_event_names_every_choice_and_why():
    message, data = plan_memory(SMOL, CPU_24G, MemoryRequest(batch_size=2, longest_example=100)).event()
    assert message.startswith("Precision: fp32 (CPU); quantisation: none (auto: CPU); gradient checkpointing: off (")
    assert message.endswith("max sequence length 8192 (model context 8192)")
    assert data["dtype"] == "float32" and data["max_seq_len"] == 8192 and data["gradient_checkpointing"] is False
    json.dumps(data)  # stored as the event's data


def _chat(i: int, answer: str) -> str:
    return json.dumps({"messages": [{"role": "user", "content": f"Question {i}?"},
                                    {"role": "assistant", "content": answer}]})


def test_plan_run_names_each_over_long_line_unless_truncation_is_allowed(tiny_model_dir, tmp_path):
    from modelmill.ml import models

    train = tmp_path / "train.jsonl"
    train.write_text("\n".join([_chat(0, "short"), _chat(1, "word " * 300), _chat(2, "ok"), _chat(3, "word " * 200)]))
    config = sft.SFTConfig(base_dir=tiny_model_dir, train_path=train, valid_path=None, output_dir=tmp_path / "out",
                           n_epochs=1, batch_size=1, learning_rate_multiplier=1.0, max_seq_len=100)
    tokenizer = models.load_tokenizer(tiny_model_dir)
    lengths = sft.example_lengths(train, tokenizer, config)
    with pytest.raises(DataValidationError) as e:
        config.plan_run(tokenizer)
    assert e.value.param == "training_file" and e.value.code == "invalid_training_file"
    assert [(p.line, p.code) for p in e.value.problems] == [(2, "example_too_long"), (4, "example_too_long")]
    assert f"line 2: {lengths[1].tokens} tokens, over the limit of 100" in e.value.message
    resolved, plan = _allowed(config).plan_run(tokenizer)
    assert resolved.max_seq_len == plan.max_seq_len == 100 and resolved.gradient_checkpointing is False
    default, plan = _allowed(config, max_seq_len=None).plan_run(tokenizer)
    assert default.max_seq_len == plan.context_length == 8192  # no request: the model's context


def _allowed(config, **changes):
    from dataclasses import replace

    return replace(config, truncation=True, **changes)


def test_dpo_counts_prompt_plus_the_longer_answer_as_trl_does(tiny_model_dir, tmp_path):
    from modelmill.ml import dpo, models

    def pair(answer_words: int) -> str:
        return json.dumps({"input": {"messages": [{"role": "user", "content": "Talk."}]},
                           "preferred_output": [{"role": "assistant", "content": "ok"}],
                           "non_preferred_output": [{"role": "assistant", "content": "word " * answer_words}]})

    train = tmp_path / "pairs.jsonl"
    train.write_text("\n".join([pair(3), pair(200), pair(5)]) + "\n")
    config = dpo.DPOConfig(base_dir=tiny_model_dir, train_path=train, valid_path=None, output_dir=tmp_path / "o",
                           n_epochs=1, batch_size=1, learning_rate_multiplier=1.0, max_seq_len=100)
    tokenizer = models.load_tokenizer(tiny_model_dir)
    lengths = dpo.example_lengths(train, tokenizer, config)
    row = dpo.render_pair(tokenizer, data.read_examples(train, "preference", min_examples=1)[1])
    assert lengths[1].tokens == len(tokenizer(text=row["prompt"] + row["rejected"])["input_ids"]) > 200
    with pytest.raises(DataValidationError) as e:
        config.plan_run(tokenizer)
    assert [p.line for p in e.value.problems] == [2] and f"{lengths[1].tokens} tokens" in e.value.message
    assert _allowed(config).plan_run(tokenizer)[1].max_seq_len == 100


def test_rft_counts_prompt_plus_the_completion_budget(tiny_model_dir, tmp_path):
    from modelmill.ml import models, rft

    train = tmp_path / "prompts.jsonl"
    train.write_text("\n".join(json.dumps({"messages": [{"role": "user", "content": "word " * n}], "answer": "x"})
                               for n in (5, 150, 5)) + "\n")
    grader = {"type": "string_check", "name": "g", "input": "{{sample.output_text}}", "reference": "x",
              "operation": "eq"}
    config = rft.RFTConfig(base_dir=tiny_model_dir, train_path=train, valid_path=train, output_dir=tmp_path / "o",
                           n_epochs=1, batch_size=1, learning_rate_multiplier=1.0, grader=grader, max_seq_len=200)
    tokenizer = models.load_tokenizer(tiny_model_dir)
    lengths = rft.example_lengths(train, tokenizer, config)
    assert all(x.detail.endswith(f"completion budget {config.completion_budget}") for x in lengths)
    with pytest.raises(DataValidationError) as e:
        config.plan_run(tokenizer)
    assert [p.line for p in e.value.problems] == [2] and "completion budget 64" in e.value.message


def test_load_model_precision_and_a_clear_nf4_error_without_cuda(tiny_model_dir):
    import torch

    from modelmill.ml import models

    model, _ = models.load_model(tiny_model_dir, dtype="bfloat16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in models.load_model(tiny_model_dir)[0].parameters()} == {torch.float32}  # the default
    if torch.cuda.is_available():
        pytest.skip("nf4 loads on a CUDA machine")
    with pytest.raises(InvalidRequestError) as e:  # bitsandbytes missing, or no CUDA: either is named
        models.load_model(tiny_model_dir, trainable=True, quantization="nf4")
    assert e.value.code == "quantization_unsupported" and ("bitsandbytes" in e.value.message
                                                          or "CUDA" in e.value.message)
