"""Model export on a real model: does each exported format answer like ModelMill does?

    python bench/export_check.py                         # SmolLM2-135M-Instruct, a short SFT job first
    python bench/export_check.py --base-url URL --ft ft:...   # an existing model on a running server

Without --ft it starts a server (modelmill.local_server) on a temporary home, fine-tunes the base
model for one short epoch, and uses the result. Then for 10 prompts it asks ModelMill's chat
completions at temperature 0, downloads the model with `modelmill models export`'s code in each
format, reloads it with plain transformers (merged: AutoModelForCausalLM; adapter: PEFT on the base
directory; gguf: transformers' gguf_file= reader) and decodes greedily. It prints, per format, how
many of the 10 answers are identical, and where the first differing answer diverges. Exits 1 if any
answer differs. --json writes the figures to a file.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx
from openai import OpenAI

from modelmill.export_download import download_export

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tools/, run as a script
from tools.datasets import short_dataset  # noqa: E402

PROMPTS = ["What is the capital of France?", "Give me three colours.", "Turn on the kitchen lights.",
           "What is 12 plus 30?", "Write one sentence about the sea.", "Say hello in Spanish.",
           "Name a fruit that is yellow.", "What day comes after Monday?", "Describe a cat in five words.",
           "How many legs does a spider have?"]


def fine_tune(client: OpenAI, base: str) -> str:
    f = client.files.create(file=("export-check.jsonl", short_dataset(16)), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(training_file=f.id, model=base, seed=3, method={
        "type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 8,
                                                                 "learning_rate_multiplier": 2.0}}})
    while job.status not in ("succeeded", "failed", "cancelled"):
        time.sleep(2)
        job = client.fine_tuning.jobs.retrieve(job.id)
    if job.status != "succeeded":
        raise SystemExit(f"the fine-tuning job {job.id} ended {job.status}: {job.error}")
    return job.fine_tuned_model


def modelmill_answers(client: OpenAI, model: str, max_tokens: int) -> list[str]:
    return [client.chat.completions.create(model=model, temperature=0, max_tokens=max_tokens, messages=[
        {"role": "user", "content": p}]).choices[0].message.content for p in PROMPTS]


def plain_answers(model, tokenizer, max_tokens: int) -> list[str]:
    import torch

    out = []
    for prompt in PROMPTS:
        inputs = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                               tokenize=True, return_dict=True, return_tensors="pt")
        with torch.inference_mode():
            ids = model.generate(**inputs, max_new_tokens=max_tokens, do_sample=False)[0, inputs["input_ids"].shape[1]:]
        out.append(tokenizer.decode(ids, skip_special_tokens=True))
    return out


def load_export(fmt: str, folder: Path, base_dir: Path | None):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if fmt == "merged":
        return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32), AutoTokenizer.from_pretrained(folder)
    if fmt == "gguf":
        return (AutoModelForCausalLM.from_pretrained(folder, gguf_file="model.gguf", dtype=torch.float32),
                AutoTokenizer.from_pretrained(folder, gguf_file="model.gguf"))
    from peft import PeftModel

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    return PeftModel.from_pretrained(base, folder), AutoTokenizer.from_pretrained(folder)


def compare(expected: list[str], got: list[str]) -> dict:
    same = sum(a == b for a, b in zip(expected, got))
    first = next(((i, a, b) for i, (a, b) in enumerate(zip(expected, got)) if a != b), None)
    return {"identical": same, "of": len(expected),
            "first_difference": None if first is None else {"prompt": PROMPTS[first[0]], "modelmill": first[1],
                                                            "export": first[2]}}


def check(base_url: str, api_key: str | None, ft: str, base: str, home: Path, formats: list[str],
          gguf_type: str, max_tokens: int, work: Path) -> dict:
    from modelmill.ml import models

    client = OpenAI(base_url=base_url, api_key=api_key or "local", max_retries=0)
    expected = modelmill_answers(client, ft, max_tokens)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    results = {"model": ft, "base_model": base, "max_tokens": max_tokens, "gguf_type": gguf_type, "formats": {},
               "modelmill_answers": dict(zip(PROMPTS, expected))}
    print(f"ModelMill's answer to {PROMPTS[0]!r}: {expected[0]!r}", flush=True)
    with httpx.Client(base_url=base_url.rstrip("/") + "/", headers=headers, timeout=httpx.Timeout(30, read=3600)) as http:
        for fmt in formats:
            started = time.monotonic()
            files = download_export(http, ft, fmt, work / fmt, gguf_type=gguf_type if fmt == "gguf" else None)
            seconds = time.monotonic() - started
            base_dir = models.ensure_base(home, base) if fmt == "adapter" else None
            model, tokenizer = load_export(fmt, work / fmt, base_dir)
            row = compare(expected, plain_answers(model.eval(), tokenizer, max_tokens))
            row.update(export_seconds=round(seconds, 1), bytes=sum(p.stat().st_size for p in files))
            results["formats"][fmt] = row
            print(f"{fmt:<8} {row['identical']}/{row['of']} greedy answers identical to ModelMill's "
                  f"({row['bytes'] / 1e6:.0f} MB, exported in {row['export_seconds']} s)", flush=True)
            if row["first_difference"]:
                print(f"         first difference: {json.dumps(row['first_difference'])}", flush=True)
    return results


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="SmolLM2-135M-Instruct", help="base model to fine-tune (without --ft)")
    p.add_argument("--base-url", help="a running server (with --ft); default: start one on a temp home")
    p.add_argument("--api-key", help="its API key, if it has keys")
    p.add_argument("--ft", help="an existing ft: model on --base-url")
    p.add_argument("--home", help="MODELMILL_HOME for the base directory the adapter loads on (default: a temp one)")
    p.add_argument("--formats", default="merged,adapter,gguf", help="comma-separated (default merged,adapter,gguf)")
    p.add_argument("--gguf-type", default="f32", choices=["f32", "f16", "bf16", "q8_0"])
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    formats = [f for f in args.formats.split(",") if f]
    with tempfile.TemporaryDirectory(prefix="mm-export-check-") as tmp:
        work = Path(tmp) / "exports"
        work.mkdir()
        home = Path(args.home) if args.home else Path(tmp) / "home"
        if args.ft:
            if not args.base_url:
                p.error("--ft needs --base-url")
            base_name = args.ft.split(":")[1]  # ft:<base>:<owner>:<suffix>:<job>; a base name has no colon
            results = check(args.base_url, args.api_key, args.ft, base_name, home, formats, args.gguf_type,
                            args.max_tokens, work)
        else:
            from modelmill.local_server import running_server

            with running_server(home) as server:
                client = OpenAI(base_url=server.base_url, api_key="local", max_retries=0)
                print(f"fine-tuning {args.model} on 16 short examples (one epoch)...", flush=True)
                ft = fine_tune(client, args.model)
                results = check(server.base_url, None, ft, args.model, home, formats, args.gguf_type,
                                args.max_tokens, work)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0 if all(r["identical"] == r["of"] for r in results["formats"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
