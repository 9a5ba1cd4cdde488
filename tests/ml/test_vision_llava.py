"""The second vision family, LLaVA (LlavaForConditionalGeneration: a CLIP vision tower + projector in
front of a Qwen2 text model; LlavaProcessor with the PIL CLIPImageProcessor): a tiny random one built
from config and saved as a llava-hf directory is, like real LLaVA weights, added with
models.add_model, then trained (SFT and DPO) and asked about an image (ml/vision.py, docs/vision.md)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from modelmill.ml import models, sampling, sft, vision, vision_train
from modelmill.ml.types import ChatExample, ModelRef
from tests.ml.reporters import ListReporter
from tests.ml.test_vision import (COLOURS, image_line, image_prompt, png_url, random_vl_adapters,
                                 solo_and_batched, write)

LLAVA_IMAGE_SIZE = 32  # CLIP: shortest edge resized to 32, centre-cropped to 32x32
LLAVA_PATCH = 8  # (32 / 8)^2 = 16 patches + CLS; the "default" feature strategy drops CLS: 16 image tokens
LLAVA_IMAGE_TOKENS = (LLAVA_IMAGE_SIZE // LLAVA_PATCH) ** 2
# llava-hf/llava-1.5-7b-hf's processor chat template (USER: / ASSISTANT:, images before the text)
LLAVA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}"
    "{% endif %}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' '}}{% endfor %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}")


def build_tiny_llava(out: Path) -> Path:
    """A random LLaVA (CLIP vision 32 wide x 1 layer, Qwen2 text 64 wide x 2 layers) with SmolLM2's
    tokenizer plus <image>, saved as llava-hf lays out real weights (config, safetensors, tokenizer,
    processor + preprocessor config, chat template)."""
    import torch
    from transformers import (CLIPVisionConfig, GenerationConfig, LlavaConfig, LlavaForConditionalGeneration,
                              LlavaProcessor, Qwen2Config)
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tok = copy.deepcopy(models._smollm2_tokenizer())
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": LLAVA_IMAGE_SIZE},
                                            crop_size={"height": LLAVA_IMAGE_SIZE, "width": LLAVA_IMAGE_SIZE})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=LLAVA_PATCH,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=LLAVA_TEMPLATE)
    text = Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    vision_cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                  image_size=LLAVA_IMAGE_SIZE, patch_size=LLAVA_PATCH, projection_dim=32)
    config = LlavaConfig(vision_config=vision_cfg, text_config=text,
                         image_token_index=tok.convert_tokens_to_ids("<image>"),
                         vision_feature_select_strategy="default", vision_feature_layer=-1,
                         pad_token_id=tok.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(99)
        model = LlavaForConditionalGeneration(config).to(torch.float32)
    model.generation_config = GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                               pad_token_id=tok.pad_token_id)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    # llava-hf's layout: the image processor in its own preprocessor_config.json, named without a backend
    # ("CLIPImageProcessor"); transformers picks the PIL one when torchvision is absent, as here.
    config_path = out / "processor_config.json"
    processor_config = json.loads(config_path.read_text())
    image_config = {**processor_config.pop("image_processor"), "image_processor_type": "CLIPImageProcessor"}
    (out / "preprocessor_config.json").write_text(json.dumps(image_config, indent=2))
    config_path.write_text(json.dumps(processor_config, indent=2))
    return out


@pytest.fixture(scope="module")
def llava_home(tmp_path_factory):
    """A home with the tiny LLaVA added from its directory, as a user adds real LLaVA weights."""
    home = tmp_path_factory.mktemp("mm-home-llava")
    models.add_model(home, "tiny-llava", str(build_tiny_llava(tmp_path_factory.mktemp("llava-src"))))
    return home


@pytest.fixture(scope="module")
def llava_dir(llava_home):
    return models.ensure_base(llava_home, "tiny-llava")


def test_a_llava_directory_loads_through_the_image_text_to_text_classes(llava_home, llava_dir):
    assert vision.is_vision_base(llava_home, "tiny-llava") and vision.is_vision_dir(llava_dir)
    assert json.loads((llava_dir / "config.json").read_text())["model_type"] == "llava"
    model, _tok = models.load_model(llava_dir)
    processor = vision.load_processor(llava_dir)
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert type(processor).__name__ == "LlavaProcessor"
    assert type(processor.image_processor).__name__.startswith("CLIPImageProcessor")  # PIL without torchvision
    # one fixed 32x32 crop: detail low has nothing smaller to give, so it is the same 16 tokens as high
    for detail in ("low", "high"):
        image = vision.load_image(vision.ImageRef(png_url(size=(48, 20)), detail), vision.ImagePolicy())
        assert len(vision.image_token_ids(processor, image)) == LLAVA_IMAGE_TOKENS


def test_llava_image_tokens_are_never_targets(llava_dir):
    tokenizer = models.load_tokenizer(llava_dir)
    processor = vision.load_processor(llava_dir)
    line = image_line("blue")
    line["messages"] += [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": png_url()}},
                                                      {"type": "text", "text": "and this?"}]},
                         {"role": "assistant", "content": "red"}]
    row = vision_train.tokenize_example(processor, tokenizer, ChatExample(line["messages"], line=1),
                                        vision.ImagePolicy(), None)
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    assert len(row.images) == 2 and row.input_ids.count(image_id) == 2 * LLAVA_IMAGE_TOKENS
    assert all(label == -100 for tok, label in zip(row.input_ids, row.labels) if tok == image_id)
    targets = tokenizer.decode([label for label in row.labels if label != -100])
    assert targets == "blue<|im_end|>red<|im_end|>"  # LLaVA's template renders no tools: ModelMill's ChatML


def test_llava_sft_trains_and_the_adapter_answers_an_image(llava_dir, tmp_path):
    write(tmp_path / "train.jsonl", [image_line(c, detail=d) for c in COLOURS for d in ("low", "high")])
    config = sft.SFTConfig(base_dir=llava_dir, train_path=tmp_path / "train.jsonl", valid_path=None,
                           output_dir=tmp_path / "out", n_epochs=1, batch_size=3, learning_rate_multiplier=1.0,
                           torch_threads=1)
    reporter = ListReporter()
    result = sft.train_sft(config, reporter)
    assert result.status == "succeeded" and result.steps == 2
    assert all(m["train_loss"] > 0 for _s, _t, m in reporter.steps)
    assert any("6 images in 6 examples" in msg for _l, msg, _d in reporter.events)
    sampler = sampling.Sampler(batch_window_s=0)
    ref = ModelRef(llava_dir, result.adapter_dir)
    prompts = [image_line("red")["messages"][:1], [{"role": "user", "content": "Colour?"}],
               image_line("green")["messages"][:1]]
    out = sampler.batch_generate(ref, prompts, sampling.SamplingParams(temperature=0, max_tokens=3))
    alone = sampler.generate(ref, prompts[2], params=sampling.SamplingParams(temperature=0, max_tokens=3))
    assert out[0].prompt_tokens == out[1].prompt_tokens + LLAVA_IMAGE_TOKENS  # the placeholder became 16 tokens
    assert out[2].choices[0].text == alone.choices[0].text  # images stay with their rows (flat layout)
    sampled = sampler.generate(ref, prompts[0], params=sampling.SamplingParams(temperature=1.0, max_tokens=2, n=2,
                                                                               seed=1))
    assert len(sampled.choices) == 2 and sampled.prompt_tokens == out[0].prompt_tokens


def test_llava_dpo_with_images_trains(llava_dir, tmp_path):
    from modelmill.ml import dpo

    def pair(colour: str, wrong: str) -> dict:
        return {"input": {"messages": image_line(colour)["messages"][:1]},
                "preferred_output": [{"role": "assistant", "content": colour}],
                "non_preferred_output": [{"role": "assistant", "content": wrong}]}

    write(tmp_path / "train.jsonl", [pair("red", "blue"), pair("blue", "green"), pair("green", "red")] * 2)
    config = dpo.DPOConfig(base_dir=llava_dir, train_path=tmp_path / "train.jsonl", valid_path=None,
                           output_dir=tmp_path / "out", n_epochs=1, batch_size=2, learning_rate_multiplier=1.0,
                           torch_threads=1)
    reporter = ListReporter()
    result = dpo.train_dpo(config, reporter)
    assert result.status == "succeeded" and result.steps == 3
    assert all("train_loss" in m for _s, _t, m in reporter.steps)


def test_llava_image_and_text_requests_share_one_generate(llava_dir, tmp_path_factory):
    """LLaVA's flat image layout: image requests (one or two images, base or an adapter with LoRA in the
    CLIP tower and projector too) and text requests decode in ONE generate(), each as it does alone."""
    base, (a,) = ModelRef(llava_dir), random_vl_adapters(llava_dir, tmp_path_factory, ["all-linear"])
    plan = [(base, [{"role": "user", "content": "hi"}], False),
            (a, image_prompt("Colour?", ("red", "low")), False),
            (base, image_prompt("Two:", ("green", "high"), ("blue", "low")), False),
            (a, [{"role": "user", "content": "Colour of the sky?"}], False),
            (a, image_prompt("Streamed", ("blue", "auto")), True)]
    want, got, rows = solo_and_batched(plan, preload=(a,))
    assert rows == [1, 4]  # the first alone, then 3 image requests and 1 text request in ONE generate()
    assert got == want
