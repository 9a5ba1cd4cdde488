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
    f = client.files.create(file=("vision.jsonl", vision_file([image_line(c) for c in COLOURS for _ in range(4)])),
                            purpose="fine-tune")
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
    assert report["images"] == {"images": 12, "image_tokens": 12 * 7, "examples_with_images": 12}

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
