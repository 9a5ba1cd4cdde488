"""RFT on arithmetic: train SmolLM2-135M-Instruct with GRPO and a python grader (reasoning-gym's own
score_answer), then report the validation reward before and after, with the wall time.

    python examples/rft_arithmetic/run.py                   # starts its own server, MODELMILL_HOME
    python examples/rft_arithmetic/run.py --base-url URL    # against a running server

Everything goes through the official openai SDK: upload, create the reinforcement job with a
validation file (so ModelMill runs the before/after eval itself), follow its events, print:
- the base reward the job measured before its first step (a few sampled completions);
- valid_reward_mean at each evaluation step (sampled, temperature 1, `eval_samples` per prompt);
- the before/after table (greedy decoding, every validation line, the job's own grader).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from grader import GRADER  # noqa: E402

# 120 prompts / 2 per step = 60 GRPO steps of 2 x 8 rollouts of up to 64 tokens (~20 min on 2 CPU cores).
HYPERPARAMETERS = {"n_epochs": 1, "batch_size": 2, "learning_rate_multiplier": 4.0, "reasoning_effort": "low",
                   "compute_multiplier": 2.0, "eval_interval": 15, "eval_samples": 2}


def run(client, model: str, hyperparameters: dict | None = None, data_dir: Path = HERE,
        metadata: dict | None = None, grader: dict | None = None, suffix: str = "arith") -> dict:
    """Train and follow the job; hyperparameters and data_dir (train.jsonl, valid.jsonl) default to
    this example's (bench/results' quick mode passes smaller ones); metadata is the job's (for example
    {"modelmill.rft_temperature": "1.0"}, the rollout temperature before "auto" became 0.7); grader defaults
    to this example's (bench/results/rft_gcd_story.py passes the same rule under another name)."""
    train = client.files.create(file=open(data_dir / "train.jsonl", "rb"), purpose="fine-tune")
    valid = client.files.create(file=open(data_dir / "valid.jsonl", "rb"), purpose="fine-tune")
    t0 = time.time()
    job = client.fine_tuning.jobs.create(
        model=model, training_file=train.id, validation_file=valid.id, suffix=suffix, seed=7, metadata=metadata,
        method={"type": "reinforcement", "reinforcement": {"grader": grader or GRADER,
                                                           "hyperparameters": hyperparameters or HYPERPARAMETERS}})
    print(f"job {job.id} created", flush=True)
    seen = set()
    while True:
        job = client.fine_tuning.jobs.retrieve(job.id)
        for e in reversed(client.fine_tuning.jobs.list_events(job.id, limit=50).data):
            if e.id in seen:
                continue
            seen.add(e.id)
            d = e.data or {}
            if e.type == "metrics":
                valid = f" valid_reward_mean {d['valid_reward_mean']:.3f}" if "valid_reward_mean" in d else ""
                print(f"  step {d.get('step')}/{d.get('total_steps')}: train_reward_mean "
                      f"{d.get('train_reward_mean', float('nan')):.3f} kl {d.get('kl', float('nan')):.4f} "
                      f"tokens {d.get('completion_tokens_mean', float('nan')):.0f}{valid}", flush=True)
            else:
                print(f"  [{e.level}] {e.message}", flush=True)
        if job.status in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(5)
    wall = time.time() - t0
    if job.status != "succeeded":
        raise SystemExit(f"job ended {job.status}: {job.error}")
    events = list(reversed(client.fine_tuning.jobs.list_events(job.id, limit=1000).data))
    metrics = [e.data for e in events if e.type == "metrics"]
    base = next(e.data for e in events if "base_reward" in (e.data or {}))
    comparison = [e.data["eval_comparison"] for e in events if "eval_comparison" in (e.data or {})]
    best = [e.data for e in events if "best_checkpoint_step" in (e.data or {})]
    return {"job": job, "wall_s": wall, "base": base, "comparison": comparison[-1] if comparison else None,
            "valid": [(m["step"], m["valid_reward_mean"]) for m in metrics if "valid_reward_mean" in m],
            "train_first": [m["train_reward_mean"] for m in metrics[:10]],
            "train_last": [m["train_reward_mean"] for m in metrics[-10:]], "best": best[-1] if best else None}


def answer_diagnostic(client, model: str) -> dict:
    """What the grader's score hides: on every validation line, greedy, with the job's reasoning
    instruction as the system message (through chat completions), how often the LAST number in the
    reply is the right answer, how often the right answer appears at all, and the reply length."""
    import json
    import re

    from modelmill.ml.rft.rewards import REASONING_INSTRUCTION

    rows = [json.loads(line) for line in (HERE / "valid.jsonl").read_text().splitlines()]
    last = contains = tokens = 0
    for row in rows:
        reply = client.chat.completions.create(
            model=model, temperature=0, max_tokens=64,
            messages=[{"role": "system", "content": REASONING_INSTRUCTION}, *row["messages"]])
        text = reply.choices[0].message.content or ""
        numbers = re.findall(r"-?\d+", text)
        last += bool(numbers) and numbers[-1] == row["answer"]
        contains += row["answer"] in text
        tokens += reply.usage.completion_tokens
    return {"model": model, "n": len(rows), "last_number_correct": last, "contains_answer": contains,
            "mean_tokens": tokens / len(rows)}


def print_diagnostic(d: dict) -> None:
    print(f"  {d['model']}: last number correct {d['last_number_correct']}/{d['n']}, right answer anywhere "
          f"{d['contains_answer']}/{d['n']}, mean reply {d['mean_tokens']:.0f} tokens")


def report(r: dict) -> None:
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
    print(f"\nfine-tuned model: {r['job'].fine_tuned_model}; job wall time {r['wall_s'] / 60:.1f} min")
    print(f"base reward before step 1 (sampled): {r['base']['base_reward']:.3f} on {r['base']['samples']} samples")
    print("valid_reward_mean (sampled, per eval step): "
          + ", ".join(f"step {s}: {v:.3f}" for s, v in r["valid"]))
    print(f"train_reward_mean: first 10 steps {mean(r['train_first']):.3f}, last 10 steps {mean(r['train_last']):.3f}")
    if r["best"]:
        print(f"best checkpoint: step {r['best']['best_checkpoint_step']} "
              f"(valid_reward_mean {r['best']['valid_reward_mean']:.3f})")
    if r["comparison"]:
        print("before/after (greedy, every validation line, the job's grader):")
        for row in r["comparison"]["rows"]:
            scores = ", ".join(f"{k} {v:.3f}" for k, v in row["scores"].items())
            print(f"  {row['label']:>6}  {row['model']}: {scores}; exact {row['passed']}/{row['total']}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-url", default=None, help="a running ModelMill server; default: start one")
    p.add_argument("--api-key", default=os.environ.get("MODELMILL_API_KEY", "none"))
    p.add_argument("--model", default="SmolLM2-135M-Instruct")
    p.add_argument("--diagnose", metavar="FT_MODEL", default=None,
                   help="skip training: only the answer diagnostic, for --model and this fine-tuned model")
    args = p.parse_args()

    from openai import OpenAI

    from modelmill.local_server import running_server

    with contextlib.ExitStack() as stack:
        base_url = args.base_url or stack.enter_context(running_server(log_level="warning")).base_url
        client = OpenAI(base_url=base_url, api_key=args.api_key, max_retries=2)
        r = None if args.diagnose else run(client, args.model)
        tuned = args.diagnose or r["job"].fine_tuned_model
        diagnostics = [answer_diagnostic(client, m) for m in (args.model, tuned)]
    if r:
        report(r)
    print("answer diagnostic (greedy, chat completions, every validation line):")
    for d in diagnostics:
        print_diagnostic(d)


if __name__ == "__main__":
    main()
