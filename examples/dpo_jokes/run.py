"""DPO on joke preferences: train SmolLM2-135M-Instruct to prefer the funnier one-liner,
then report held-out reward accuracy before vs after.

Against a running ModelMill server (the official openai SDK; the job runs on the server):
    modelmill serve &                      # MODELMILL_HOME must be the server's, to read the adapter
    python examples/dpo_jokes/run.py --base-url http://127.0.0.1:8000/v1
In-process, without a server (the same training through ml.dpo.train_dpo):
    python examples/dpo_jokes/run.py --local

Held-out reward accuracy: the share of the 12 held-out pairs where the model gives the
preferred answer a higher summed log-probability than the non-preferred one, both as the
assistant's reply to the pair's prompt (rendered like training, see ml.dpo.render_pair).
It is well defined before training (the base model) and after (base + the DPO adapter).
The DPO-implicit view of the same thing, "margin vs the base model > 0", is 0/undefined
before training, so the script reports it only after, as "implicit reward accuracy".
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
HYPERPARAMETERS = {"n_epochs": 3, "batch_size": 4, "learning_rate_multiplier": 3.0, "beta": 0.1}


def pair_logps(model_dir: Path, adapter_dir: Path | None, path: Path) -> list[tuple[float, float]]:
    """(logp chosen, logp rejected) per pair: summed log-probs of each answer's tokens given its prompt."""
    import torch

    from modelmill.ml import data, dpo, models

    model, tok = models.load_model(model_dir, adapter_dir)
    out = []
    for pair in data.read_examples(path, "dpo", min_examples=1):
        r = dpo.render_pair(tok, pair)
        n_prompt = len(tok(r["prompt"], add_special_tokens=False)["input_ids"])
        scores = []
        for key in ("chosen", "rejected"):
            ids = tok(r["prompt"] + r[key], add_special_tokens=False, return_tensors="pt")["input_ids"]
            with torch.no_grad():
                logits_T_V = model(input_ids=ids).logits[0, :-1]
            logps_T = torch.log_softmax(logits_T_V.float(), dim=-1).gather(1, ids[0, 1:, None])[:, 0]
            scores.append(float(logps_T[n_prompt - 1:].sum()))
        out.append((scores[0], scores[1]))
    return out


def accuracy(logps: list[tuple[float, float]]) -> float:
    return sum(c > r for c, r in logps) / len(logps)


def train_remote(args, hyperparameters: dict | None = None, data_dir: Path = HERE,
                 metadata: dict[str, str] | None = None, seed: int | None = None) -> Path:
    """Upload, create the DPO job, wait; returns the job's adapter dir under MODELMILL_HOME.
    hyperparameters and data_dir (train.jsonl, heldout.jsonl) default to this example's
    (bench/results' quick mode passes smaller ones); metadata goes on the job (e.g. ModelMill's
    modelmill.dpo_sft_weight); seed None lets the server pick one."""
    from openai import OpenAI

    client = OpenAI(base_url=args.base_url, api_key=args.api_key or os.environ.get("MODELMILL_API_KEY", "none"))
    train = client.files.create(file=open(data_dir / "train.jsonl", "rb"), purpose="fine-tune")
    valid = client.files.create(file=open(data_dir / "heldout.jsonl", "rb"), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model=args.model, training_file=train.id, validation_file=valid.id, suffix="jokes", metadata=metadata,
        **({"seed": seed} if seed is not None else {}),
        method={"type": "dpo", "dpo": {"hyperparameters": hyperparameters or HYPERPARAMETERS}})
    print(f"job {job.id} created")
    while job.status not in ("succeeded", "failed", "cancelled"):
        time.sleep(5)
        job = client.fine_tuning.jobs.retrieve(job.id)
        print(f"  {job.status}")
    if job.status != "succeeded":
        raise SystemExit(f"job ended {job.status}: {job.error}")
    for event in reversed(client.fine_tuning.jobs.list_events(job.id, limit=100).data):
        if event.type == "metrics" and event.data and "full_valid_reward_accuracy" in event.data:
            print(f"  final metrics: {event.data}")
    print(f"fine-tuned model: {job.fine_tuned_model}")
    return Path(args.home) / "jobs" / job.id / "adapter"


def train_local(args, base_dir: Path) -> Path:
    from modelmill.ml import dpo
    from modelmill.ml.report import PrintReporter

    config = dpo.DPOConfig(base_dir=base_dir, train_path=HERE / "train.jsonl", valid_path=HERE / "heldout.jsonl",
                           output_dir=Path(args.home) / "examples" / "dpo_jokes", max_seq_len=args.max_seq_len,
                           truncation=True,  # --max-seq-len is a speed knob here: cut longer pairs (one warn event)
                           eval_every_steps=0, torch_threads=args.torch_threads, **HYPERPARAMETERS)
    result = dpo.train_dpo(config, PrintReporter())
    return result.adapter_dir


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    p.add_argument("--api-key", default=None)
    p.add_argument("--home", default=os.environ.get("MODELMILL_HOME", str(Path.home() / ".modelmill")),
                   help="the server's MODELMILL_HOME (to read the adapter and the base model)")
    p.add_argument("--model", default="SmolLM2-135M-Instruct")
    p.add_argument("--local", action="store_true", help="train in this process instead of on a server")
    p.add_argument("--max-seq-len", type=int, default=128, help="--local only")
    p.add_argument("--torch-threads", type=int, default=None, help="--local only")
    args = p.parse_args()

    from modelmill.ml import models

    base_dir = models.ensure_base(Path(args.home), args.model)
    t0 = time.time()
    before = pair_logps(base_dir, None, HERE / "heldout.jsonl")
    adapter = train_local(args, base_dir) if args.local else train_remote(args)
    trained_s = time.time() - t0
    after = pair_logps(base_dir, adapter, HERE / "heldout.jsonl")
    implicit = sum((ca - cb) - (ra - rb) > 0 for (cb, rb), (ca, ra) in zip(before, after, strict=True)) / len(after)
    n = len(after)
    print(f"held-out pairs: {n}")
    print(f"reward accuracy (logp preferred > logp non-preferred): before {accuracy(before):.3f} "
          f"({round(accuracy(before) * n)}/{n}), after {accuracy(after):.3f} ({round(accuracy(after) * n)}/{n})")
    print(f"implicit reward accuracy (margin vs base > 0) after: {implicit:.3f}")
    print(f"mean logp margin: before {sum(c - r for c, r in before) / n:.3f}, "
          f"after {sum(c - r for c, r in after) / n:.3f}; train+eval {trained_s:.0f} s")


if __name__ == "__main__":
    main()
