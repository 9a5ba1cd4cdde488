"""The learning-results suite (`make results`): the stories, each fine-tuning SmolLM2-135M-Instruct
through a live ModelMill server (the official openai SDK) and scoring base vs fine-tuned on held-out
data, offline.

    python bench/results/run.py                      # every story: sft, intent, dpo, dpo_arith, rft, rft_gcd (in that order)
    python bench/results/run.py --story sft          # one story
    python bench/results/run.py --quick              # every code path on modelmill-tiny, tiny data
    python bench/results/run.py --story dpo_arith --set compare_plain=false  # one config field changed

- sft (sft_story.py): function calling on BFCL simple_python + the demo's smart-home set;
  exact calls on held-out examples (target >= 85%) and, apart, on held-out functions.
- intent (intent_story.py): 12 banking intents (intent_data.py), every hyperparameter "auto"; exact label
  on held-out phrasings whose sentence shapes training never uses (target >= 0.85, training < 20 min).
- dpo (dpo_story.py): examples/dpo_jokes; held-out preference accuracy, and a judge's win rate of
  the fine-tuned model's jokes over the base model's.
- dpo_arith (dpo_arith_story.py): right vs subtly wrong answers to one-digit arithmetic (arith_pairs.py);
  held-out preference accuracy (target >= 0.70), held-out task accuracy (above base), and chained SFT -> DPO.
- rft (rft_story.py): examples/rft_arithmetic; validation reward (target >= 0.45), with the rollout temperature
  before 2026-12-04 side by side.
- rft_gcd (rft_gcd_story.py): RFT on reasoning-gym's gcd, training and validation answers disjoint;
  held-out reward before/after (target: above base; the issue sets none).
- agentic (agentic_story.py, opt-in: --story agentic): agentic RFT with a calculator tool on 3-digit x
  2-digit multiplication; held-out reward of greedy agent runs (target >= 0.4 and at least double the base).

Each story writes OUT/results_<story>.json (bench/README.md, "Results JSON"); then every story JSON in
OUT is merged into the section `results` of BENCHMARKS.md: a re-run story's rows and notes replace
its old ones, kept below as its earlier run; other stories' stay as they are. The server runs with
MODELMILL_HOME = --home (default bench/out/home; the base model is converted there once, before any
story's clock starts). --quick defaults OUT to bench/out/quick and writes the section to
OUT/BENCHMARKS.md, so a smoke run never replaces real figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import common  # noqa: E402

STORY_MODULES = {"sft": "sft_story", "intent": "intent_story", "dpo": "dpo_story", "dpo_arith": "dpo_arith_story",
                 "rft": "rft_story", "rft_gcd": "rft_gcd_story"}
# Run only when named (--story synth), not by "all": issue 19's `data synth` story (synth_story.py).
# agentic: issue 22's (agentic_story.py); vision: issue 23's, only with a real VLM registered (vision_story.py).
OPT_IN_STORIES = {"synth": "synth_story", "agentic": "agentic_story", "vision": "vision_story"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--story", choices=[*STORY_MODULES, *OPT_IN_STORIES, "all"], default="all")
    p.add_argument("--quick", action="store_true", help="modelmill-tiny and tiny data: the code path only")
    p.add_argument("--out", type=Path, default=None, help="where results_<story>.json go (default bench/out, "
                                                          "or bench/out/quick with --quick)")
    p.add_argument("--benchmarks-md", type=Path, default=None,
                   help="the file whose `results` section is rewritten (default BENCHMARKS.md, or OUT/BENCHMARKS.md "
                        "with --quick)")
    p.add_argument("--home", type=Path, default=None,
                   help="the server's MODELMILL_HOME (default bench/out/home; a temporary one with --quick)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", dest="overrides",
                   help="change one field of the story's config for this run (VALUE read as JSON, else as text; "
                        "repeatable); the results JSON and the story's notes say what was changed")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch in the server and here (OMP_NUM_THREADS); default: torch's own")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = args.out or (common.BENCH_DIR / "out" / ("quick" if args.quick else ""))
    md = args.benchmarks_md or (out / "BENCHMARKS.md" if args.quick else common.REPO / "BENCHMARKS.md")
    stories = list(STORY_MODULES) if args.story == "all" else [args.story]
    if args.threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(args.threads)
        import torch

        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="modelmill-results-") as tmp:
        home = args.home or (Path(tmp) if args.quick else common.BENCH_DIR / "out" / "home")
        run_stories(stories, home.resolve(), args.quick, out, parse_overrides(args.overrides))
    if not stories:  # every story named was skipped (it said why): no results to write
        return 0
    common.write_section(out, md, stories)
    print(f"results: {', '.join(str(out / f'results_{s}.json') for s in stories)}; section `results` of {md}")
    return 0


def parse_overrides(pairs: list[str]) -> dict:
    """--set FIELD=VALUE pairs as {field: value}; VALUE is JSON when it parses ("false", "400", '{"a": 1}'),
    else the text itself."""
    out = {}
    for pair in pairs:
        field, sep, value = pair.partition("=")
        if not sep or not field:
            raise SystemExit(f"--set {pair!r}: expected FIELD=VALUE")
        try:
            out[field] = json.loads(value)
        except json.JSONDecodeError:
            out[field] = value
    return out


def configure(module, quick: bool, overrides: dict) -> None:
    """Replace the story module's FULL (or QUICK) config by one with `overrides` applied; an unknown field
    stops the run before anything trains (a misspelt field must not run the committed config quietly)."""
    name = "QUICK" if quick else "FULL"
    cfg = getattr(module, name)
    known = {f.name for f in dataclasses.fields(cfg)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise SystemExit(f"--set: {module.__name__} has no config field {', '.join(unknown)} "
                         f"(its fields: {', '.join(sorted(known))})")
    setattr(module, name, dataclasses.replace(cfg, **overrides))


def run_stories(stories: list[str], home: Path, quick: bool, out: Path, overrides: dict | None = None) -> None:
    import importlib

    from openai import OpenAI

    from modelmill.local_server import running_server
    from modelmill.ml import models

    home.mkdir(parents=True, exist_ok=True)
    modules = {s: importlib.import_module({**STORY_MODULES, **OPT_IN_STORIES}[s]) for s in stories}
    if overrides:
        for s in stories:
            configure(modules[s], quick, overrides)
    for s in list(stories):  # a story that cannot run here (vision without a real VLM) says why and is skipped
        why = getattr(modules[s], "unavailable", lambda _home, _quick: None)(home, quick)
        if why:
            print(f"== story {s}: skipped: {why}", flush=True)
            stories.remove(s)
    for s in stories:  # convert base models once, outside every story's clock
        cfg = modules[s].QUICK if quick else modules[s].FULL
        for name in {cfg.model, getattr(cfg, "judge_model", cfg.model)}:
            models.ensure_base(home, name)
    api_key = os.environ.get("MODELMILL_API_KEY", "local")
    with running_server(home, log_level="warning") as server:
        base_url = server.base_url
        client = OpenAI(base_url=base_url, api_key=api_key, max_retries=2, timeout=600)
        ctx = common.Context(client=client, base_url=base_url, api_key=api_key, home=home, quick=quick)
        # The home persists (its converted models are reused): a job an interrupted run left queued or
        # running would otherwise resume first and hold the worker while this run's story job waits.
        for job in client.fine_tuning.jobs.list(limit=100):  # iterating a page fetches the next ones
            if job.status not in ("succeeded", "failed", "cancelled"):
                client.fine_tuning.jobs.cancel(job.id)
                print(f"cancelled {job.id} ({job.status}), left over from an interrupted run", flush=True)
        for s in stories:
            print(f"== story {s}{' (quick)' if quick else ''} ==", flush=True)
            t0, load = time.monotonic(), os.getloadavg()[0]
            data = modules[s].run(ctx)
            data["details"]["story_s"] = round(time.monotonic() - t0, 1)
            data["details"]["machine"] = common.machine(load_at_start=load)
            data["details"]["quick"] = quick
            if overrides:
                data["details"]["config_overrides"] = overrides
                changed = ", ".join(f"{k} = {json.dumps(v)}" for k, v in overrides.items())
                data["details"].setdefault("notes", []).append(
                    f"Run with the story's config changed: {changed} (`bench/results/run.py --set`); every other "
                    "field as committed.")
            path = common.write_json(data, out)
            print(f"== {s}: {data['metric']}: base {data['base']} -> fine-tuned {data['fine_tuned']} "
                  f"(target {data['target']}: {'-' if data['met'] is None else 'met' if data['met'] else 'missed'}); "
                  f"{data['wall_s']:.0f} s; {path}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
