"""DPO's SFT-term weight, in-process, on the dpo_arith story's data: the measurement behind DPO's "auto"
weight (ml/dpo.py AUTO_SFT_WEIGHT; BENCHMARKS.md, dpo_arith's hand notes, 2026-12-04).

One run per call, so runs can go two at a time (one torch thread each) on a 2-core machine:

    PY=.venv/bin/python; S=bench/results/dpo_sft_weight.py; O=bench/out/dpo_sft_weight
    $PY $S $O/base --score-only base
    $PY $S $O/sft --train-sft                                  # SFT on the preferred answers ("auto")
    $PY $S $O/alone_w0.3 --sft-weight 0.3                      # DPO from the base model
    $PY $S $O/chain_w0.3 --sft-weight 0.3 --init $O/sft/job/adapter   # DPO from the SFT model

Data and seeds are the story's (arith_pairs.build(400, 100, 1234), job seed 7); hyperparameters are
"auto" as the worker resolves them. Each run writes OUT/result.json: held-out preference accuracy
(examples/dpo_jokes pair_logps, as the story), held-out task accuracy (greedy generation of up to 32
tokens from the prompt the server renders, scored with the story's final_answer) and every reply.
The story measures the same through the API; this script exists because four DPO jobs per weight
through the API would take hours on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import arith_pairs
from common import BENCH_DIR, load_example
from dpo_arith_story import FULL, final_answer


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, help="the run's directory (its job/ and result.json)")
    p.add_argument("--sft-weight", type=float, default=0.0, help="DPOConfig.sft_weight (0 = DPO's loss alone)")
    p.add_argument("--init", type=Path, default=None, help="start DPO from this adapter (an SFT run's job/adapter)")
    p.add_argument("--train-sft", action="store_true", help="train SFT on the preferred answers instead of DPO")
    p.add_argument("--score-only", default=None, help="score this adapter directory, or 'base', without training")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: two runs share 2 cores well)")
    p.add_argument("--home", type=Path, default=BENCH_DIR / "out" / "home", help="where the base model is converted")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from modelmill.ml import dpo, models, sft
    from modelmill.ml.report import PrintReporter

    torch.set_num_threads(args.threads)
    cfg = FULL
    base_dir = models.ensure_base(args.home, cfg.model)
    train, held = arith_pairs.build(cfg.train_pairs, cfg.heldout_pairs, cfg.data_seed)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    _write(out / "train.jsonl", [arith_pairs.strip(x) for x in train])
    _write(out / "held.jsonl", [arith_pairs.strip(x) for x in held])
    t0 = time.monotonic()
    if args.score_only:
        adapter = None if args.score_only == "base" else Path(args.score_only)
    elif args.train_sft:
        _write(out / "sft.jsonl", [{"messages": [*x["input"]["messages"], *x["preferred_output"]]} for x in train])
        hp = sft.resolve_sft_hyperparameters({}, len(train))
        sft.train_sft(sft.SFTConfig(base_dir=base_dir, train_path=out / "sft.jsonl", valid_path=None,
                                    output_dir=out / "job", seed=cfg.seed, **hp), PrintReporter())
        adapter = out / "job" / "adapter"
    else:
        hp = dpo.resolve_dpo_hyperparameters({}, len(train))
        dpo.train_dpo(dpo.DPOConfig(base_dir=base_dir, train_path=out / "train.jsonl", valid_path=None,
                                    output_dir=out / "job", seed=cfg.seed, init_adapter=args.init,
                                    sft_weight=args.sft_weight, **hp), PrintReporter())
        adapter = out / "job" / "adapter"
    train_s = time.monotonic() - t0
    jokes = load_example("dpo_jokes")
    logps = jokes.pair_logps(base_dir, adapter, out / "held.jsonl")
    replies = _greedy(base_dir, adapter, held, cfg.max_tokens)
    ok = [final_answer(r) == x["answer"] for r, x in zip(replies, held, strict=True)]
    res = {"sft_weight": args.sft_weight, "init": str(args.init), "train_sft": args.train_sft,
           "score_only": args.score_only, "train_s": round(train_s), "preference_accuracy": jokes.accuracy(logps),
           "task_accuracy": sum(ok) / len(ok),
           "replies": [{"question": x["question"], "answer": x["answer"], "reply": r} for r, x in zip(replies, held)]}
    (out / "result.json").write_text(json.dumps(res, indent=1))
    print({k: v for k, v in res.items() if k != "replies"}, flush=True)
    return 0


def _greedy(base_dir: Path, adapter: Path | None, held: list[dict], max_tokens: int, batch: int = 20) -> list[str]:
    """Each held-out question's greedy reply, from the prompt the server renders (chat_format.render)."""
    import torch

    from modelmill.ml import chat_format, models

    model, tok = models.load_model(base_dir, adapter)
    tok.padding_side = "left"
    prompts = [chat_format.render(tok, x["input"]["messages"], None, add_generation_prompt=True) for x in held]
    replies = []
    for i in range(0, len(prompts), batch):
        enc = tok(prompts[i:i + batch], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            ids = model.generate(**enc, max_new_tokens=max_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
        replies += tok.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return replies


def _write(path: Path, lines: list[dict]) -> None:
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))


if __name__ == "__main__":
    raise SystemExit(main())
