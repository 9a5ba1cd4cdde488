"""Tiny models of each chat family, for the template, mask and tool round-trip tests.

Each is a 2-layer model built from its family's config class (hidden size 64) with the SmolLM2
tokenizer, the family's real chat template (tests/fixtures/chat_templates, see the README there)
and the family's special tokens added, so a rendering tokenizes as it would for the real model:
one token per control marker.

A random model of this size does not learn to write a whole tool call in the few LoRA steps a
test can afford, so `build_family_model` first teaches it one (TEACH_PROMPT -> TEACH_CALL, in the
template ModelMill will use for it) with a few seconds of full-weight training, as a real instruct
model already knows its tool format. The round-trip tests then fine-tune it through ModelMill,
serve it, and parse the call it writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

# Test data (vendored templates and their licences), kept beside the tests that check them.
TEMPLATES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "chat_templates"
TOOLS = [{"type": "function", "function": {"name": "set_light", "description": "Switch a light",
                                           "parameters": {"type": "object",
                                                          "properties": {"room": {"type": "string"}}}}}]
# No system message: Mistral-Nemo's template drops it from a conversation that ends with the
# assistant turn but keeps it in the served prompt, so the model would learn the call in another context.
TEACH_PROMPT = [{"role": "user", "content": "Kitchen lights on"}]
TEACH_CALL = {"role": "assistant", "content": None, "tool_calls": [
    {"id": "call_1", "type": "function", "function": {"name": "set_light", "arguments": '{"room": "kitchen"}'}}]}
TEACH_LR = 5e-3  # Adam learning rate teaching the tool call


@dataclass(frozen=True)
class FamilySpec:
    name: str  # also the model name registered with ModelMill ("tiny-<name>")
    config_class: str  # transformers config class
    template: str  # fixture file under TEMPLATES
    special_tokens: tuple[str, ...]  # added as special tokens (one id each)
    bos: str | None  # the tokenizer's bos_token (templates write it)
    eos: str  # the tokenizer's eos_token (end of an assistant turn)
    expected_family: str  # chat_families family the model should end up with
    extra_config: dict = field(default_factory=dict)
    teach_steps: int = 80  # Adam steps teaching the tool call (see teach_tool_call)


SPECS = {
    "qwen2": FamilySpec("qwen2", "Qwen2Config", "qwen2.jinja", ("<|endoftext|>",), None, "<|im_end|>", "hermes"),
    "llama": FamilySpec("llama", "LlamaConfig", "llama.jinja",
                        ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>",
                         "<|python_tag|>"), "<|begin_of_text|>", "<|eot_id|>", "llama3"),
    "mistral": FamilySpec("mistral", "MistralConfig", "mistral.jinja",
                          ("<s>", "</s>", "[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]",
                           "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]", "[/TOOL_RESULTS]"), "<s>", "</s>", "mistral"),
    # Gemma 2's template renders no tools, so ModelMill replaces it with its ChatML fallback.
    "gemma2": FamilySpec("gemma2", "Gemma2Config", "gemma2.jinja", ("<bos>", "<start_of_turn>", "<end_of_turn>"),
                         "<bos>", "<end_of_turn>", "chatml",
                         # without soft-capping: capped logits make the taught call too slow to learn
                         {"head_dim": 16, "query_pre_attn_scalar": 16, "final_logit_softcapping": None,
                          "attn_logit_softcapping": None}, teach_steps=120),
}


def family_tokenizer(spec: FamilySpec):
    """The SmolLM2 tokenizer with this family's template and special tokens (a fresh copy)."""
    import copy

    from modelmill.ml import models

    tok = copy.deepcopy(models._smollm2_tokenizer())
    tok.add_special_tokens({"additional_special_tokens": list(spec.special_tokens)})
    tok.chat_template = (TEMPLATES / spec.template).read_text()
    if spec.bos:
        tok.bos_token = spec.bos
    tok.eos_token = spec.eos
    return tok


def build_family_model(spec: FamilySpec, out: Path) -> Path:
    """Save a tiny random model of this family (safetensors + tokenizer) into `out`."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, GenerationConfig

    tok = family_tokenizer(spec)
    config = getattr(transformers, spec.config_class)(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, **spec.extra_config)
    # No pad_token_id in the config: the pad token is <|im_end|>, and an embedding's padding_idx row
    # starts at zero and never trains, so (tied to the LM head) the model could never end a ChatML turn.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)
        model = AutoModelForCausalLM.from_config(config).to(torch.float32)
    model.generation_config = GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
                                               pad_token_id=tok.pad_token_id)
    teach_tool_call(model, tok, spec.teach_steps)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def teach_tool_call(model, tokenizer, steps: int) -> float:
    """Full-weight training on TEACH_PROMPT + TEACH_CALL rendered with the template ModelMill will
    choose for this tokenizer, loss on the assistant turn only; returns the last loss."""
    import copy

    import torch

    from modelmill.ml import chat_families, chat_format

    chosen = copy.deepcopy(tokenizer)
    chat_families.choose_template(chosen, None, chat_format.chat_template())
    ids, mask = chat_format.tokenize_conversation(chosen, [*TEACH_PROMPT, TEACH_CALL], TOOLS)
    input_ids = torch.tensor([ids])
    labels = torch.tensor([[i if keep else -100 for i, keep in zip(ids, mask, strict=True)]])
    # Logits only from the position before the first trained token on: the same loss and gradients (the
    # prompt's positions carry no loss), without a (prompt length x vocabulary) LM head forward and
    # backward per step, which made teaching 2.5-4x slower (the prompt with its tool schema is ~190 tokens).
    tail = len(ids) - mask.index(True) + 1
    labels = labels[:, -tail:]
    optimizer = torch.optim.Adam(model.parameters(), lr=TEACH_LR)
    model.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for _ in range(steps):
            loss = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), labels=labels,
                         logits_to_keep=tail).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    return loss.item()


def build_family_models(build_dir: Path) -> dict[str, Path]:
    """Build every family's tiny model (build_family_model) under `build_dir`: {family: its directory}.
    About a minute on 2 cores: tests/conftest.py's session fixture `family_model_sources` builds them
    once for every test that needs them."""
    return {name: build_family_model(spec, build_dir / name) for name, spec in SPECS.items()}


def register_family_models(home: Path, sources: dict[str, Path]) -> dict[str, Path]:
    """Add each family's built model (build_family_models) to ModelMill's registry in `home` as
    tiny-<family> (add_model copies it and records the template choice); returns {family: materialised
    model dir}."""
    from modelmill.ml import models

    dirs = {}
    for name, src in sources.items():
        models.add_model(home, f"tiny-{name}", str(src))
        dirs[name] = models.ensure_base(home, f"tiny-{name}")
    return dirs
