"""Images in training data and sampling on modelmill-tiny-vl (ml/vision.py, ml/vision_train.py)."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from modelmill.ml import data, models, sampling, sft, vision, vision_train
from modelmill.ml.types import ChatExample, ModelRef
from tests.ml.lora_adapters import random_lora_adapter
from tests.ml.reporters import ListReporter

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}


def png_url(rgb=(255, 0, 0), size=(24, 16), fmt="PNG", mode="RGB") -> str:
    buf = io.BytesIO()
    Image.new(mode, size, rgb if mode != "L" else 128).save(buf, fmt)
    mime = {"PNG": "png", "JPEG": "jpeg", "GIF": "gif", "WEBP": "webp", "BMP": "bmp"}[fmt]
    return f"data:image/{mime};base64," + base64.b64encode(buf.getvalue()).decode()


def image_line(colour: str, url: str | None = None, detail: str = "low") -> dict:
    return {"messages": [
        {"role": "user", "content": [{"type": "text", "text": "Colour?"},
                                     {"type": "image_url", "image_url": {"url": url or png_url(COLOURS[colour]),
                                                                         "detail": detail}}]},
        {"role": "assistant", "content": colour}]}


def write(path, lines) -> None:
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))


@pytest.fixture(scope="session")
def tiny_vl_dir(tmp_path_factory):
    return models.ensure_base(tmp_path_factory.mktemp("mm-home-vl"), "modelmill-tiny-vl")


def test_tiny_vl_is_listed_and_loads_through_the_image_text_to_text_classes(tiny_vl_dir, tmp_path):
    assert "modelmill-tiny-vl" in [m.name for m in models.list_models(tmp_path)]
    model, _tok = models.load_model(tiny_vl_dir)
    processor = vision.load_processor(tiny_vl_dir)
    assert type(model).__name__ == "Idefics3ForConditionalGeneration"
    assert type(processor).__name__ == "Idefics3Processor" and processor.chat_template
    assert vision.is_vision_dir(tiny_vl_dir)


@pytest.mark.parametrize("url, code", [
    ("data:image/png;base64,@@@notbase64", "invalid_image"),
    ("data:image/png;base64," + base64.b64encode(b"not an image at all").decode(), "invalid_image"),
    (png_url(fmt="GIF"), "unsupported_image_format"),
    (png_url(fmt="BMP"), "unsupported_image_format"),
    (png_url(mode="L"), "unsupported_image_format"),
    ("https://example.com/cat.png", "image_url_not_allowed"),
    ("ftp://example.com/cat.png", "invalid_image_url"),
])
def test_bad_images_name_line_and_part(tmp_path, url, code):
    lines = [image_line("red")] * 10 + [image_line("red", url)]
    write(tmp_path / "t.jsonl", lines)
    report = data.validate_file(tmp_path / "t.jsonl", images=vision.ImagePolicy())
    [problem] = report.problems
    assert (problem.line, problem.field, problem.code) == (11, "messages[0].content[1].image_url.url", code)
    assert "line 11: messages[0].content[1].image_url.url" in str(problem)


def test_too_large_image_and_images_for_a_text_only_base(tmp_path):
    write(tmp_path / "t.jsonl", [image_line("red")] * 10)
    small = vision.ImagePolicy(max_bytes=50)
    [problem] = {p.code: p for p in data.validate_file(tmp_path / "t.jsonl", images=small).problems[:1]}.values()
    assert (problem.line, problem.code) == (1, "image_too_large")
    text_only = data.validate_file(tmp_path / "t.jsonl").problems  # no policy: a text-only base model
    assert (text_only[0].line, text_only[0].field, text_only[0].code) == (
        1, "messages[0].content[1].type", "unsupported_content_part")
    assert "text-only" in text_only[0].message
    assert data.validate_file(tmp_path / "t.jsonl", images=vision.ImagePolicy()).ok


def test_image_in_an_assistant_message_and_bad_detail(tmp_path):
    bad = image_line("red")
    bad["messages"][0]["content"][1]["image_url"]["detail"] = "ultra"
    bad["messages"].append({"role": "assistant", "content": [{"type": "image_url", "image_url": {"url": png_url()}}]})
    write(tmp_path / "t.jsonl", [image_line("red")] * 10 + [bad])
    problems = {(p.field, p.code) for p in data.validate_file(tmp_path / "t.jsonl", images=vision.ImagePolicy()).problems}
    assert ("messages[0].content[1].image_url.detail", "invalid_value") in problems
    assert ("messages[2].content[0].type", "unsupported_content_part") in problems


class _Images(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        body = base64.b64decode(png_url().split(",", 1)[1])
        if self.path == "/big.png":
            body += b"\0" * 4096
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_http_images_only_from_allowed_hosts_within_the_size_limit():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Images)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        allowed = vision.ImagePolicy(hosts=("127.0.0.1",), max_bytes=2048, timeout_s=5)
        assert vision.load_image(f"{base}/ok.png", allowed).size == (24, 16)
        with pytest.raises(vision.ImageError) as e:
            vision.load_image(f"{base}/big.png", allowed)
        assert e.value.code == "image_too_large"
        with pytest.raises(vision.ImageError) as e:
            vision.load_image(f"{base}/ok.png", vision.ImagePolicy(hosts=("images.example.com",)))
        assert e.value.code == "image_url_not_allowed"
    finally:
        server.shutdown()


def test_image_tokens_are_never_targets(tiny_vl_dir):
    tokenizer = models.load_tokenizer(tiny_vl_dir)
    processor = vision.load_processor(tiny_vl_dir)
    line = image_line("blue")
    line["messages"] += [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": png_url()}},
                                                      {"type": "text", "text": "and this?"}]},
                         {"role": "assistant", "content": "red"}]
    row = vision_train.tokenize_example(processor, tokenizer, ChatExample(line["messages"], line=1),
                                        vision.ImagePolicy(), None)
    image_ids = {tokenizer.convert_tokens_to_ids(t) for t in ("<image>", "<fake_token_around_image>", "<global-img>",
                                                              "<row_1_col_1>", "<row_1_col_2>", "<row_2_col_1>",
                                                              "<row_2_col_2>")}
    assert len(row.images) == 2 and row.details == ["low", "auto"]
    # the first image (detail low) is the global view alone; the second (auto) 2x2 tiles + the global view
    assert sum(t == tokenizer.convert_tokens_to_ids("<image>") for t in row.input_ids) == 6 * processor.image_seq_len
    assert all(label == -100 for tok, label in zip(row.input_ids, row.labels) if tok in image_ids)
    targets = tokenizer.decode([label for label in row.labels if label != -100])
    assert targets == "blue<|im_end|>red<|im_end|>"
    # a cut inside the second image drops that image whole (never half an image's tokens)
    second = [i for i, t in enumerate(row.input_ids) if t == tokenizer.convert_tokens_to_ids("<fake_token_around_image>")][2]
    cut = vision_train.tokenize_example(processor, tokenizer, ChatExample(line["messages"], line=1),
                                        vision.ImagePolicy(), second + 3)
    assert len(cut.images) == 1 and len(cut.input_ids) == second and cut.truncated


def test_detail_low_takes_the_fewest_image_tokens(tiny_vl_dir):
    """OpenAI's detail: low = one 32x32 view, no splitting (7 tokens); high and auto = the processor's own
    splitting (2x2 tiles + the global view: 33 tokens for a 24x16 image), in training and in sampling."""
    processor = vision.load_processor(tiny_vl_dir)

    def tokens(detail: str) -> int:
        image = vision.load_image(vision.ImageRef(png_url(), detail), vision.ImagePolicy())
        return len(vision.image_token_ids(processor, image))

    assert tokens("low") == 7 and tokens("high") == tokens("auto") == 33
    tokenizer = models.load_tokenizer(tiny_vl_dir)
    lengths = {d: len(vision_train.tokenize_example(processor, tokenizer, ChatExample(image_line("red", detail=d)[
        "messages"], line=1), vision.ImagePolicy(), None).input_ids) for d in ("low", "high")}
    assert lengths["high"] - lengths["low"] == 26
    sampler = sampling.Sampler(batch_window_s=0)
    prompts = [image_line("red", detail=d)["messages"][:1] for d in ("low", "high", "low")]
    params = sampling.SamplingParams(temperature=0, max_tokens=2)
    results = sampler.batch_generate(ModelRef(tiny_vl_dir), prompts, params)  # rows of 1 and 5 tiles, padded
    assert results[1].prompt_tokens - results[0].prompt_tokens == 26
    assert results[2].choices[0].text == sampler.generate(ModelRef(tiny_vl_dir), prompts[2],
                                                          params=params).choices[0].text


def test_sft_with_images_trains_and_the_adapter_answers_an_image(tiny_vl_dir, tmp_path):
    text_only = {"messages": [{"role": "user", "content": "Colour of the sky?"}, {"role": "assistant", "content": "blue"}]}
    write(tmp_path / "train.jsonl", [image_line(c, detail=d) for c in COLOURS for d in ("low", "high", "auto")]
          + [text_only] * 3)
    config = sft.SFTConfig(base_dir=tiny_vl_dir, train_path=tmp_path / "train.jsonl", valid_path=None,
                           output_dir=tmp_path / "out",
                           n_epochs=1, batch_size=4, learning_rate_multiplier=1.0, torch_threads=1)
    reporter = ListReporter()
    result = sft.train_sft(config, reporter)
    assert result.status == "succeeded" and result.steps == 3
    assert all(m["train_loss"] > 0 for _s, _t, m in reporter.steps)
    assert any("9 images in 12 examples" in msg for _l, msg, _d in reporter.events)  # batches mix both kinds
    sampler = sampling.Sampler(batch_window_s=0)
    ref = ModelRef(tiny_vl_dir, result.adapter_dir)
    prompt = image_line("red")["messages"][:1]
    out = sampler.generate(ref, prompt, params=sampling.SamplingParams(temperature=0, max_tokens=4))
    text_only = sampler.generate(ref, [{"role": "user", "content": "Colour?"}],
                                 params=sampling.SamplingParams(temperature=0, max_tokens=4))
    assert out.prompt_tokens == text_only.prompt_tokens + vision.load_processor(tiny_vl_dir).image_seq_len + 3
    assert out.choices[0].completion_tokens >= 1
    sampled = sampler.generate(ref, prompt, params=sampling.SamplingParams(temperature=1.0, max_tokens=3, n=2, seed=1))
    assert len(sampled.choices) == 2 and sampled.prompt_tokens == out.prompt_tokens  # image rows repeated per choice



def test_dpo_with_images_trains(tiny_vl_dir, tmp_path):
    from modelmill.ml import dpo

    def pair(colour: str, wrong: str, detail: str = "low") -> dict:
        return {"input": {"messages": image_line(colour, detail=detail)["messages"][:1]},
                "preferred_output": [{"role": "assistant", "content": colour}],
                "non_preferred_output": [{"role": "assistant", "content": wrong}]}

    write(tmp_path / "train.jsonl", [pair("red", "blue"), pair("blue", "green", "high"), pair("green", "red")] * 2)
    config = dpo.DPOConfig(base_dir=tiny_vl_dir, train_path=tmp_path / "train.jsonl", valid_path=None,
                           output_dir=tmp_path / "out", n_epochs=1, batch_size=2, learning_rate_multiplier=1.0,
                           torch_threads=1)
    reporter = ListReporter()
    result = dpo.train_dpo(config, reporter)
    assert result.status == "succeeded" and result.steps == 3
    assert all("train_loss" in m for _s, _t, m in reporter.steps)
    # the batches TRL trains on hold each prompt's image at its own detail (low: 1 tile, high: 5)
    ds = dpo._load_dataset(tmp_path / "train.jsonl", "training", models.load_tokenizer(tiny_vl_dir),
                           dataclasses.replace(config, max_seq_len=512), ListReporter())
    assert ds[0]["image_details"] == ["low"] and ds[1]["image_details"] == ["high"]
    batch = vision_train.preference_collator(vision.load_processor(tiny_vl_dir))([ds[0], ds[1]])
    image_id = models.load_tokenizer(tiny_vl_dir).convert_tokens_to_ids("<image>")
    assert (batch["input_ids"] == image_id).sum(dim=1).tolist() == [4, 20, 4, 20]  # chosen rows, rejected rows
    assert batch["pixel_values"].shape[:2] == (4, 5)


def test_a_user_added_vlm_directory_loads_the_same_way(tiny_vl_dir, tmp_path):
    """Real weights (e.g. a SmolVLM directory) are added like any model; modelmill-tiny-vl's stands in."""
    models.add_model(tmp_path, "my-vl", str(tiny_vl_dir))
    assert vision.is_vision_base(tmp_path, "my-vl") and not vision.is_vision_base(tmp_path, "modelmill-tiny")
    out = sampling.Sampler(batch_window_s=0).generate(ModelRef(models.ensure_base(tmp_path, "my-vl")),
                                                      image_line("red")["messages"][:1],
                                                      params=sampling.SamplingParams(temperature=0, max_tokens=2))
    assert out.prompt_tokens > vision.load_processor(tiny_vl_dir).image_seq_len


def test_batch_generate_mixes_image_and_text_prompts(tiny_vl_dir):
    """An eval's batch: prompts with and without images in one batch_generate call."""
    sampler = sampling.Sampler(batch_window_s=0)
    prompts = [image_line("red")["messages"][:1], [{"role": "user", "content": "Colour?"}],
               image_line("blue")["messages"][:1]]
    results = sampler.batch_generate(ModelRef(tiny_vl_dir), prompts, sampling.SamplingParams(temperature=0, max_tokens=2))
    alone = sampler.generate(ModelRef(tiny_vl_dir), prompts[2], params=sampling.SamplingParams(temperature=0, max_tokens=2))
    assert [r.prompt_tokens for r in results] == [alone.prompt_tokens, results[1].prompt_tokens, alone.prompt_tokens]
    assert results[2].choices[0].text == alone.choices[0].text  # padding and the other rows change nothing


# ---------------------------------------------------------------- image requests batched with text requests

VL_GREEDY = sampling.SamplingParams(temperature=0, max_tokens=4)


def image_prompt(text: str, *images: tuple[str, str]) -> list[dict]:
    """A user message: text, then one image_url part per (colour, detail)."""
    return [{"role": "user", "content": [{"type": "text", "text": text}] + [
        {"type": "image_url", "image_url": {"url": png_url(COLOURS[c]), "detail": d}} for c, d in images]}]


def random_vl_adapters(base_dir, tmp_path_factory, targets: list) -> list[ModelRef]:
    """Random LoRA adapters of a VLM, scaled up so each visibly changes the output. "all-linear" is what
    training makes (sft/dpo): LoRA in the vision encoder and projector too."""
    return [ModelRef(base_dir, random_lora_adapter(base_dir, tmp_path_factory.mktemp(f"vl-adapter{seed}"), seed=seed,
                                                   r=2 + seed, targets=target, task_type="CAUSAL_LM"))
            for seed, target in enumerate(targets, start=1)]


@pytest.fixture(scope="module")
def vl_adapters(tiny_vl_dir, tmp_path_factory):
    """Two all-linear adapters of modelmill-tiny-vl, and one with LoRA on the embeddings (not stackable)."""
    return random_vl_adapters(tiny_vl_dir, tmp_path_factory, ["all-linear", "all-linear", ["embed_tokens", "q_proj"]])


def solo_and_batched(plan, params=VL_GREEDY, preload=(), solo=None):
    """Each (ref, messages, stream?) decoded one at a time, then all concurrently behind a gated first
    generate() (tests/ml/test_sampling_batching.py). Returns ((text, usage) alone, (text, usage) batched,
    the rows of each generate() call)."""
    from tests.ml.test_sampling_batching import GatedLoader, run_concurrently

    solo = solo or sampling.Sampler(batch_window_s=0)
    want = [solo.generate(r, m, params=params) for r, m, _ in plan]
    loader = GatedLoader(hold=True)
    s = sampling.Sampler(loader=loader)
    for ref in preload:
        s.load(ref)

    def call(ref, messages, stream):
        if stream:
            events = list(s.stream(ref, messages, params=params))
            return "".join(e.delta for e in events), events[-1].usage
        out = s.generate(ref, messages, params=params)
        return out.choices[0].text, out.usage

    got = run_concurrently(s, loader, [lambda r=r, m=m, st=st: call(r, m, st) for r, m, st in plan])
    return [(w.choices[0].text, w.usage) for w in want], got, loader.rows


def test_image_and_text_requests_to_one_vlm_share_one_generate(tiny_vl_dir, vl_adapters):
    """Image requests (any number of images, any detail, base or adapters, streamed or not) and text
    requests to one VLM base decode in ONE generate(), each with the tokens it gets alone."""
    base, a, b = ModelRef(tiny_vl_dir), *vl_adapters[:2]
    plan = [(base, [{"role": "user", "content": "hi"}], False),
            (a, image_prompt("Colour?", ("red", "low")), False),
            (b, image_prompt("And this one?", ("blue", "high")), False),
            (base, image_prompt("Two:", ("green", "low"), ("red", "high")), False),
            (a, [{"role": "user", "content": "Colour of the sky?"}], False),
            (b, image_prompt("Streamed", ("green", "auto")), True)]
    solo = sampling.Sampler(batch_window_s=0)
    want, got, rows = solo_and_batched(plan, preload=(a, b), solo=solo)
    assert rows == [1, 5]  # the first alone, then 4 image requests and 1 text request in ONE generate()
    assert got == want  # text and usage (image tokens counted) as when decoded alone
    # the adapters change what an image row decodes (so a row given another's LoRA would show)
    assert len({want[1][0]} | {solo.generate(r, plan[1][1], params=VL_GREEDY).choices[0].text for r in (base, b)}) == 3


def test_images_do_not_mix_with_adapters_that_cannot_stack(tiny_vl_dir, vl_adapters):
    """An adapter with LoRA on the embeddings runs through PEFT's mixed batch, which cannot give a VLM's
    images their own rows' adapters: its image requests batch with its own adapter's rows only."""
    base, a, emb = ModelRef(tiny_vl_dir), vl_adapters[0], vl_adapters[2]
    plan = [(base, [{"role": "user", "content": "hi"}], False),
            (emb, image_prompt("Colour?", ("red", "low")), False),
            (a, image_prompt("Colour?", ("blue", "low")), False),
            (emb, [{"role": "user", "content": "x"}], False),
            (a, [{"role": "user", "content": "y"}], False)]
    want, got, rows = solo_and_batched(plan, preload=(a, emb))
    assert rows == [1, 2, 2]  # emb's two requests together, then a's two
    assert got == want


def test_image_requests_keep_their_adapter_batch_whatever_order_they_arrive_in():
    """The batcher's grouping alone, every arrival order of four requests (two adapters, an image and a
    text request each) behind a busy first batch, on a model that cannot mix adapters under images: each
    adapter's two requests decode together, never text first and each image alone."""
    import itertools

    from modelmill.ml import batching

    class NoImageMixing:  # what multi_lora.MultiLoraModel.mixes_images says of an embedding adapter
        @staticmethod
        def mixes_images(adapters):
            return len(adapters) == 1

    settings = batching.DecodeSettings(greedy=True, temperature=1.0, top_p=1.0, stop=None, seed=0)

    def request(adapter, image):
        return batching.BatchRequest(key="base", model=NoImageMixing(), tokenizer=None, tok_lock=None, eos_ids=[0],
                                     pad_id=0, prompt_ids=[[1, 2]], budgets=[1], copies=1, settings=settings,
                                     adapter=adapter, images=[[{"pixels": 0}]] if image else None)

    for order in itertools.permutations([("a", True), ("a", False), ("e", True), ("e", False)]):
        batches, busy, gate = [], threading.Event(), threading.Event()

        def decode(batch):
            batches.append(sorted((r.adapter, bool(r.images)) for r in batch))
            busy.set()
            gate.wait(10)
            for r in batch:
                r.row_done(0, [5], True)

        b = batching.Batcher(window_s=0, decode=decode)
        b.submit(request(None, False))
        assert busy.wait(10)
        queued = [b.submit(request(*o)) for o in order]
        gate.set()
        for r in queued:
            assert r.wait() == [([5], True)]
        assert batches[1:] in ([[("a", False), ("a", True)], [("e", False), ("e", True)]],
                               [[("e", False), ("e", True)], [("a", False), ("a", True)]]), (order, batches)
