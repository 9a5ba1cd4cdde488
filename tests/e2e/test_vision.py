"""Vision end to end with the official openai SDK: upload an image SFT file, train modelmill-tiny-vl,
chat with an image on the fine-tuned model and a checkpoint, and refuse bad vision files and images
sent to a text-only model."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.e2e.conftest import wait_for
from tests.ml.test_vision import COLOURS, image_line, png_url
from tests.spec_check import assert_matches


def vision_file(lines: list[dict]) -> bytes:
    return "".join(json.dumps(x) + "\n" for x in lines).encode()


def vl_job(client, training_file: str, model: str = "modelmill-tiny-vl", **kw):
    return client.fine_tuning.jobs.create(
        training_file=training_file, model=model, seed=3, suffix="vl",
        method={"type": "supervised", "supervised": {"hyperparameters": {
            "n_epochs": 1, "batch_size": 4, "learning_rate_multiplier": 2.0}}}, **kw)


def image_message(colour: str = "red") -> list[dict]:
    return image_line(colour)["messages"][:1]


def test_vision_sft_then_chat_with_an_image(client, server):
    assert "modelmill-tiny-vl" in {m.id for m in client.models.list().data}
    lines = [image_line(c, detail="high" if i == 0 else "low") for c in COLOURS for i in range(4)]
    f = client.files.create(file=("vision.jsonl", vision_file(lines)), purpose="fine-tune")
    job = wait_for(client, vl_job(client, f.id).id, {"succeeded", "failed", "cancelled"})
    assert job.status == "succeeded", job.error
    body = client.fine_tuning.jobs.with_raw_response.retrieve(job.id).http_response.json()
    assert_matches(body, "FineTuningJob")
    assert body["trained_tokens"] > 0 and body["fine_tuned_model"].startswith("ft:modelmill-tiny-vl:")
    events = client.fine_tuning.jobs.with_raw_response.list_events(job.id, limit=100).http_response.json()
    assert_matches(events, "ListFineTuningJobEventsResponse")
    assert any("12 images in 12 examples" in e["message"] for e in events["data"])
    assert [e["data"]["step"] for e in events["data"] if e.get("type") == "metrics"][::-1] == [1, 2, 3]
    ckpts = client.fine_tuning.jobs.checkpoints.with_raw_response.list(job.id).http_response.json()
    assert_matches(ckpts, "ListFineTuningJobCheckpointsResponse")
    assert ckpts["data"]
    # the file report (dashboard) counts the images and their tokens
    report = httpx.get(f"{server.base_url.removesuffix('/v1')}/dashboard/api/files/{f.id}/report", timeout=120,
                       headers={"Authorization": "Bearer test-key"}).json()
    assert report["ok"] and report["tokenizer_model"] == "modelmill-tiny-vl", report
    # detail low: the 32x32 global view alone (7 tokens); high: 2x2 tiles + the global view (33)
    assert report["images"] == {"images": 12, "image_tokens": 9 * 7 + 3 * 33, "examples_with_images": 12}

    text_only = client.chat.completions.create(model=job.fine_tuned_model, max_tokens=3, temperature=0,
                                               messages=[{"role": "user", "content": [
                                                   {"type": "text", "text": "Colour?"}]}])
    for model in ("modelmill-tiny-vl", job.fine_tuned_model, ckpts["data"][0]["fine_tuned_model_checkpoint"]):
        out = client.chat.completions.with_raw_response.create(model=model, messages=image_message(), max_tokens=3,
                                                               temperature=0).http_response.json()
        assert_matches(out, "CreateChatCompletionResponse")
        # the image's tokens (<fake><global-img><image> x 4 <fake>) are in the prompt count
        assert out["usage"]["prompt_tokens"] == text_only.usage.prompt_tokens + 7
        assert out["usage"]["completion_tokens"] >= 1 and out["model"] == model
    for detail in ("high", "auto"):  # the processor's own image splitting: 26 more image tokens than low
        out = client.chat.completions.create(model=job.fine_tuned_model, max_tokens=2, temperature=0,
                                             messages=image_line("red", detail=detail)["messages"][:1])
        assert out.usage.prompt_tokens == text_only.usage.prompt_tokens + 33
    chunks = list(client.chat.completions.create(model=job.fine_tuned_model, messages=image_message("blue"),
                                                 max_tokens=3, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].usage.prompt_tokens == text_only.usage.prompt_tokens + 7


@pytest.mark.parametrize("model, url, code, needle", [
    ("modelmill-tiny", png_url(), "unsupported_content", "text-only"),
    ("modelmill-tiny-vl", "https://example.com/cat.png", "image_url_not_allowed", "example.com"),
    ("modelmill-tiny-vl", png_url(fmt="GIF"), "unsupported_image_format", "GIF"),
])
def test_chat_image_errors_are_400s_naming_the_part(client, model, url, code, needle):
    messages = [{"role": "user", "content": [{"type": "text", "text": "?"},
                                             {"type": "image_url", "image_url": {"url": url}}]}]
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=model, messages=messages, max_tokens=2)
    error = e.value.body
    assert error["code"] == code and needle in error["message"], error
    assert error["param"].startswith("messages[0].content[1]")


def test_malformed_vision_files_fail_their_jobs_naming_line_and_part(client):
    good = [image_line(c) for c in COLOURS for _ in range(4)]
    cases = [  # (file lines, base model, text the job's error must contain)
        (good[:11] + [image_line("red", "data:image/png;base64,AAAA")], "modelmill-tiny-vl",
         "line 12: messages[0].content[1].image_url.url: the image cannot be decoded"),
        (good[:11] + [image_line("red", png_url(fmt="GIF"))], "modelmill-tiny-vl",
         "line 12: messages[0].content[1].image_url.url: image format GIF"),
        ([image_line("red", "http://images.example.com/a.png")] + good[:11], "modelmill-tiny-vl",
         "line 1: messages[0].content[1].image_url.url: images are not fetched from images.example.com"),
        (good, "modelmill-tiny", "line 1: messages[0].content[1].type: image_url parts need a vision-language"),
    ]
    jobs = [(vl_job(client, client.files.create(file=("bad.jsonl", vision_file(lines)), purpose="fine-tune").id,
                    model=model).id, needle) for lines, model, needle in cases]
    for job_id, needle in jobs:
        job = wait_for(client, job_id, {"failed", "succeeded"}, timeout=90)
        assert job.status == "failed" and job.error.param == "training_file"
        assert needle in job.error.message, job.error.message


def test_eval_item_reference_messages_with_images(client):
    """An eval's item_reference messages carry input_image parts to a VLM, each at its detail; for a
    text-only model each such item is an item error, never an image silently dropped."""
    from tests.e2e.test_evals import wait_run

    schema = {"type": "object", "properties": {"chat": {"type": "array"}, "label": {"type": "string"}},
              "required": ["chat", "label"]}
    ev = client.evals.create(name="vision", data_source_config={"type": "custom", "item_schema": schema},
                             testing_criteria=[{"type": "string_check", "name": "exact", "operation": "eq",
                                                "input": "{{sample.output_text}}", "reference": "{{item.label}}"}])

    def item(detail: str) -> dict:
        return {"item": {"label": "red", "chat": [{"role": "user", "content": [
            {"type": "input_text", "text": "Colour?"},
            {"type": "input_image", "image_url": png_url(COLOURS["red"]), "detail": detail}]}]}}

    runs = {model: client.evals.runs.create(ev.id, data_source={
        "type": "completions", "model": model, "sampling_params": {"max_completion_tokens": 2, "temperature": 0},
        "input_messages": {"type": "item_reference", "item_reference": "item.chat"},
        "source": {"type": "file_content", "content": [item("low"), item("high")]}}).id
        for model in ("modelmill-tiny-vl", "modelmill-tiny")}
    vl = wait_run(client, ev.id, runs["modelmill-tiny-vl"])
    assert vl["status"] == "completed" and vl["result_counts"]["errored"] == 0, vl
    samples = [i.sample for i in client.evals.runs.output_items.list(runs["modelmill-tiny-vl"], eval_id=ev.id)]
    tokens = sorted(s.usage.prompt_tokens for s in samples)
    assert tokens[1] - tokens[0] == 26  # high: 2x2 tiles + the global view; low: the global view alone
    text_only = wait_run(client, ev.id, runs["modelmill-tiny"])
    assert text_only["result_counts"]["errored"] == 2, text_only


def image_input(detail: str, url: str | None = None) -> list[dict]:
    """A Responses API input: one user message with input_text + input_image parts."""
    return [{"role": "user", "content": [{"type": "input_text", "text": "Colour?"},
                                         {"type": "input_image", "image_url": url or png_url(COLOURS["red"]),
                                          "detail": detail}]}]


def test_responses_input_image(client):
    low = client.responses.with_raw_response.create(model="modelmill-tiny-vl", input=image_input("low"),
                                                    max_output_tokens=2, temperature=0).http_response.json()
    assert_matches(low, "Response")
    assert low["status"] in ("completed", "incomplete") and low["output"]  # incomplete: max_output_tokens hit
    high = client.responses.create(model="modelmill-tiny-vl", input=image_input("high"), max_output_tokens=2,
                                   temperature=0)
    assert high.usage.input_tokens - low["usage"]["input_tokens"] == 26  # 2x2 tiles + the global view vs. one view
    items = client.responses.input_items.with_raw_response.list(low["id"]).http_response.json()
    assert_matches(items, "ResponseItemList")
    assert items["data"][0]["content"][1] == {"type": "input_image", "image_url": png_url(COLOURS["red"]),
                                              "file_id": None, "detail": "low"}
    follow = client.responses.create(model="modelmill-tiny-vl", previous_response_id=low["id"], input="And now?",
                                     max_output_tokens=2, temperature=0)  # the image stays in the history
    assert follow.usage.input_tokens > low["usage"]["input_tokens"]
    for model, url, param, code in [
            ("modelmill-tiny", None, "input[0].content[1]", "unsupported_content"),
            ("modelmill-tiny-vl", png_url(fmt="GIF"), "input[0].content[1].image_url", "unsupported_image_format"),
            ("modelmill-tiny-vl", "https://example.com/cat.png", "input[0].content[1].image_url",
             "image_url_not_allowed")]:
        with pytest.raises(openai.BadRequestError) as e:
            client.responses.create(model=model, input=image_input("auto", url), max_output_tokens=2)
        assert (e.value.body["param"], e.value.body["code"]) == (param, code), e.value.body
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="modelmill-tiny-vl", input=image_input("ultra"), max_output_tokens=2)
    assert e.value.body["param"] == "input[0].content[1].detail"


def test_batch_of_chat_lines_with_images(client):
    from tests.e2e.test_batches import output_lines, wait_batch

    def line(i: int, model: str, detail: str, url: str | None = None) -> dict:
        return {"custom_id": f"img-{i}", "method": "POST", "url": "/v1/chat/completions",
                "body": {"model": model, "max_tokens": 2, "temperature": 0,
                         "messages": image_line("blue", url=url, detail=detail)["messages"][:1]}}

    good = [line(0, "modelmill-tiny-vl", "low"), line(1, "modelmill-tiny-vl", "high"),
            {**line(2, "modelmill-tiny", "low"), "body": {"model": "modelmill-tiny", "max_tokens": 2,
                                                          "messages": [{"role": "user", "content": "Colour?"}]}}]
    f = client.files.create(file=("images.jsonl", vision_file(good)), purpose="batch")
    batch = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    done = wait_batch(client, batch.id, {"completed", "failed", "expired", "cancelled"})
    assert done.status == "completed" and done.request_counts.completed == 3, done
    usage = {o["custom_id"]: o["response"]["body"]["usage"]["prompt_tokens"] for o in output_lines(client,
                                                                                                   done.output_file_id)}
    assert usage["img-1"] - usage["img-0"] == 26
    # a line whose image the model cannot read is refused at create, naming the line and the part
    for bad, needle in [(line(1, "modelmill-tiny", "low"), "line 2: body.messages[0].content[1]"),
                        (line(1, "modelmill-tiny-vl", "low", png_url(fmt="GIF")),
                         "line 2: body.messages[0].content[1].image_url.url")]:
        f = client.files.create(file=("bad.jsonl", vision_file([good[0], bad])), purpose="batch")
        with pytest.raises(openai.BadRequestError) as e:
            client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
        assert needle in str(e.value) and e.value.body["param"] == "input_file_id", e.value.body
