"""Vision story (issue 23): colour and shape classification on generated images, base vs fine-tuned.

No vision-language model's weights install offline, so this story runs only when a real VLM is
registered with the server's home (e.g. SmolVLM-256M-Instruct, an Idefics3 model, downloaded by you):

    modelmill models add SmolVLM-256M-Instruct /path/to/SmolVLM-256M-Instruct --home bench/out/home
    MODELMILL_VISION_MODEL=SmolVLM-256M-Instruct make results STORY=vision

Without one it is skipped with a message saying so (`unavailable`). `--quick` runs the code path on
modelmill-tiny-vl (random weights: its figures mean nothing).

Task: an image of one shape (circle, square or triangle) in one colour (red, green, blue, yellow) on
a white background, drawn with PIL from a seed; the answer is "<colour> <shape>". Training and held-out
images differ in size, position and background shade, and no held-out image appears in training.
Metric: exact-match accuracy of the greedy answer on the held-out images, base against fine-tuned
(target: fine-tuned above base and >= 0.8).
"""

from __future__ import annotations

import base64
import io
import json
import os
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from common import Context, job_events, machine, result, row, today, wait_job

COLOURS = {"red": (220, 30, 30), "green": (30, 170, 30), "blue": (30, 60, 220), "yellow": (230, 200, 20)}
SHAPES = ("circle", "square", "triangle")
PROMPT = "What colour and shape is the object in this image? Answer with two words: colour then shape."


@dataclass(frozen=True)
class VisionStory:
    model: str = os.environ.get("MODELMILL_VISION_MODEL", "")  # a registered VLM; "" = none named
    train_images: int = 240
    test_images: int = 60
    image_size: int = 224  # pixels per side
    n_epochs: int = 2
    batch_size: int = 4
    learning_rate_multiplier: float = 1.0
    max_tokens: int = 6
    seed: int = 7


FULL = VisionStory()
QUICK = VisionStory(model="modelmill-tiny-vl", train_images=12, test_images=6, image_size=32, n_epochs=1)


def unavailable(home: Path, quick: bool) -> str | None:
    """Why the story cannot run with this home (run.py skips it and prints this), or None."""
    from modelmill.ml import models, vision

    if quick:
        return None
    name = FULL.model
    if not name:
        return ("no real vision-language model named: register one (modelmill models add NAME /path/to/SmolVLM "
                "--home HOME) and set MODELMILL_VISION_MODEL=NAME. modelmill-tiny-vl has random weights, so it "
                "would show nothing (--quick runs the code path on it)")
    if not models.is_base_model(home, name):
        return f"MODELMILL_VISION_MODEL={name} is not registered in {home} (modelmill models add {name} PATH)"
    if not vision.is_vision_base(home, name):
        return f"{name} is not a vision-language model ModelMill serves (families: {', '.join(vision.VISION_FAMILIES)})"
    return None


def draw(colour: str, shape: str, rng: random.Random, size: int) -> str:
    """One PNG as a data: URL: the shape at a random place and scale on a near-white background."""
    from PIL import Image, ImageDraw

    shade = rng.randint(225, 255)
    img = Image.new("RGB", (size, size), (shade, shade, shade))
    d = ImageDraw.Draw(img)
    r = rng.uniform(0.18, 0.32) * size
    cx, cy = rng.uniform(r, size - r), rng.uniform(r, size - r)
    fill = COLOURS[colour]
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def examples(n: int, seed: int, size: int) -> list[tuple[str, str]]:
    """(image data URL, answer) pairs, every colour x shape equally often."""
    rng = random.Random(seed)
    pairs = [(c, s) for c in COLOURS for s in SHAPES]
    return [(draw(c, s, rng, size), f"{c} {s}") for i in range(n) for c, s in [pairs[i % len(pairs)]]]


def user_message(url: str) -> dict:
    return {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                        {"type": "text", "text": PROMPT}]}


def accuracy(client, model: str, test: list[tuple[str, str]], max_tokens: int) -> tuple[float, list[dict]]:
    answers = []
    for url, want in test:
        out = client.chat.completions.create(model=model, messages=[user_message(url)], temperature=0,
                                             max_tokens=max_tokens)
        got = (out.choices[0].message.content or "").strip().lower().rstrip(".")
        answers.append({"want": want, "got": got, "right": got == want})
    return sum(a["right"] for a in answers) / len(answers), answers


def run(ctx: Context, cfg: VisionStory | None = None) -> dict:
    cfg = cfg or (QUICK if ctx.quick else FULL)
    train = examples(cfg.train_images, cfg.seed, cfg.image_size)
    test = examples(cfg.test_images, cfg.seed + 1, cfg.image_size)
    t0 = time.monotonic()
    base_acc, base_answers = accuracy(ctx.client, cfg.model, test, cfg.max_tokens)
    print(f"[vision] base accuracy {base_acc:.3f}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train.jsonl"
        path.write_text("".join(json.dumps({"messages": [user_message(url), {"role": "assistant", "content": want}]})
                                + "\n" for url, want in train))
        f = ctx.client.files.create(file=path.open("rb"), purpose="fine-tune")
    t_train = time.monotonic()
    job = ctx.client.fine_tuning.jobs.create(
        training_file=f.id, model=cfg.model, seed=cfg.seed, suffix="vision",
        method={"type": "supervised", "supervised": {"hyperparameters": {
            "n_epochs": cfg.n_epochs, "batch_size": cfg.batch_size,
            "learning_rate_multiplier": cfg.learning_rate_multiplier}}})
    job = wait_job(ctx.client, job.id)
    train_s = time.monotonic() - t_train
    ft_acc, ft_answers = accuracy(ctx.client, job.fine_tuned_model, test, cfg.max_tokens)
    print(f"[vision] fine-tuned accuracy {ft_acc:.3f}", flush=True)
    wall = time.monotonic() - t0
    met = ft_acc > base_acc and ft_acc >= 0.8
    rows = [row(f"held-out colour + shape accuracy ({len(test)} images, exact answer)", base_acc, ft_acc,
                "> base and >= 0.8", met)]
    notes = [f"Images: {cfg.image_size}x{cfg.image_size} PNGs drawn with PIL ({len(COLOURS)} colours x "
             f"{len(SHAPES)} shapes), {len(train)} training and {len(test)} held-out, different seeds.",
             f"Training: SFT job {job.id} ({cfg.n_epochs} epochs, batch {cfg.batch_size}), {train_s:.0f} s."]
    events = [e.message for e in job_events(ctx.client, job.id) if "images in" in e.message]
    details = {"rows": rows, "notes": notes + events[:1], "date": today(), "machine": machine(), "job_id": job.id,
               "fine_tuned_model": job.fine_tuned_model, "train_s": round(train_s, 1),
               "answers_base": base_answers, "answers_fine_tuned": ft_answers, "config": dict(cfg.__dict__)}
    return result("vision", cfg.model, rows[0]["metric"], base_acc, ft_acc, "> base and >= 0.8", met, wall, details)


if __name__ == "__main__":
    import sys

    sys.exit(__import__("run").main(["--story", "vision", *sys.argv[1:]]))
