"""DPO story: jokes. examples/dpo_jokes (45 training / 12 held-out preference pairs from humor-mcp's
Mallard corpus, CC-BY-4.0), trained through the server by that example's own code.

Metrics:
- held-out preference accuracy (the example's measure, examples/dpo_jokes/run.py pair_logps):
  the share of held-out pairs whose preferred answer gets a higher summed log-probability than the
  non-preferred one, base vs base + DPO adapter;
- judge win rate: one joke per held-out line from each model (chat sampling, the same seed for
  both), each scored 0-10 by a `score_model` grader through the Evals API (completions runs); a
  win is fine-tuned score > base score on the same line. Ties and lines the judge could not score
  (its reply was not a number) are counted apart.

The judge must run offline, so it is SmolLM2-135M-Instruct itself (a model ModelMill serves is
answered by ModelMill, service/graders/judge.py). A 135M model is a weak judge of humour: to put a number
on that, the same grader also scores the held-out pairs' own answers (a jsonl run each for the
preferred and the non-preferred outputs), and the story reports how often it agrees with the
human preference. Seen while building this (held-out pairs' own answers, greedy): asked for a bare
number, SmolLM2-135M answered in prose, so every reply was a parse error; with two worked examples
in the prompt (JUDGE_SHOTS) it answers with a number, but the same number for every joke (10; 1 with
the two examples in the other order).
"""

from __future__ import annotations

import json
import tempfile
import time
import types
from dataclasses import dataclass, field
from pathlib import Path

from common import (EXAMPLES, Context, job_events, load_example, machine, output_items, result, row, today,
                    wait_eval_run)

JOKES = EXAMPLES / "dpo_jokes"
JUDGE_SYSTEM = ("You are a comedy judge. You rate how funny a joke is on a scale from 0 (not funny at all) "
                "to 10 (hilarious). Reply with the number only.")
JUDGE_USER = ("Request: {{item.prompt}}\nJoke: {{sample.output_text}}\n\n"
              "How funny is this joke, from 0 to 10? Reply with the number only.")
# Two worked examples before the joke to judge. Without them SmolLM2-135M answers in prose ("The joke
# is hilarious, but it's not funny at all.") and every reply is a model_grader_parse_error; with
# them it answers with a bare number. The examples are not from the data set.
JUDGE_SHOTS = (("Give me a funny one-liner (mundane complaint).", "I went to the store and bought some milk.", "2"),
               ("Give me a funny one-liner (wordplay observation).", "I used to be a banker, but I lost interest.",
                "7"))


@dataclass(frozen=True)
class DPOStory:
    model: str = "SmolLM2-135M-Instruct"
    judge_model: str = "SmolLM2-135M-Instruct"  # must be local (no network): a model ModelMill serves
    joke_tokens: int = 48  # completion budget of each generated joke
    joke_temperature: float = 0.8  # sampled, so the 12 lines (5 distinct prompts) get different jokes
    judge_tokens: int = 4  # the judge's reply budget: a number
    seed: int = 7  # sampling seed of both models' jokes (the same for both)
    hyperparameters: dict | None = None  # None: the example's own (examples/dpo_jokes/run.py)
    train_pairs: int | None = None  # None: all 45 training pairs
    heldout_pairs: int | None = None  # None: all 12 held-out pairs
    # A second job side by side in the same run, the same data and hyperparameters with this job metadata
    # (None = none): DPO's loss alone, the "auto" rule until 2026-12-04, against today's DPO + 0.3 x SFT term.
    compare_metadata: dict | None = field(default_factory=lambda: {"modelmill.dpo_sft_weight": "0"})
    compare_label: str = "DPO's loss alone (the \"auto\" rule until 2026-12-04)"


FULL = DPOStory()
QUICK = DPOStory(model="modelmill-tiny", judge_model="modelmill-tiny", joke_tokens=8, train_pairs=10,
                 heldout_pairs=3, hyperparameters={"n_epochs": 1, "batch_size": 4, "beta": 0.1})


def judge_grader(cfg: DPOStory) -> dict:
    return {"type": "score_model", "name": "funny", "model": cfg.judge_model, "range": [0, 10],
            "sampling_params": {"temperature": 0, "max_completions_tokens": cfg.judge_tokens, "seed": 0},
            "input": [{"role": "system", "content": JUDGE_SYSTEM}, *_shots(),
                      {"role": "user", "content": JUDGE_USER}]}


def _shots() -> list[dict]:
    out = []
    for prompt, joke, score in JUDGE_SHOTS:
        user = JUDGE_USER.replace("{{item.prompt}}", prompt).replace("{{sample.output_text}}", joke)
        out += [{"role": "user", "content": user}, {"role": "assistant", "content": score}]
    return out


def data_dir(cfg: DPOStory, tmp: Path) -> Path:
    """The example's folder, or a copy of its first lines (quick mode)."""
    if cfg.train_pairs is None and cfg.heldout_pairs is None:
        return JOKES
    for name, n in (("train.jsonl", cfg.train_pairs), ("heldout.jsonl", cfg.heldout_pairs)):
        (tmp / name).write_text("".join((JOKES / name).read_text().splitlines(keepends=True)[:n]))
    return tmp


def heldout(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "heldout.jsonl").read_text().splitlines() if line.strip()]


def _text(output: list[dict]) -> str:
    return output[-1].get("content") or ""


def judged(items) -> list[tuple[float | None, str]]:
    """(score, sample text) per output item; score None when sampling or the judge failed (e.g. its
    reply was not a number: model_grader_parse_error)."""
    out = []
    for it in items:
        res = (it.results or [{}])[0]
        res = res if isinstance(res, dict) else res.model_dump()
        output = getattr(it.sample, "output", None) or []
        text = (output[0].content or "") if output else ""
        out.append((None if it.status == "error" or res.get("errors") else float(res.get("score", 0.0)), text))
    return out


def judge_runs(ctx: Context, cfg: DPOStory, pairs: list[dict], models: dict[str, str]) -> tuple[dict, dict]:
    """One eval; a completions run per model on the held-out prompts, and jsonl runs scoring the
    pairs' own preferred / non-preferred answers. ({label: [(score, text)]}, {label: run id})."""
    client = ctx.client
    schema = {"type": "object", "properties": {"prompt": {"type": "string"}, "messages": {"type": "array"}},
              "required": ["prompt", "messages"]}
    ev = client.evals.create(name="results: DPO jokes, judged", testing_criteria=[judge_grader(cfg)],
                             data_source_config={"type": "custom", "item_schema": schema,
                                                 "include_sample_schema": True})
    items = [{"prompt": p["input"]["messages"][-1]["content"], "messages": p["input"]["messages"]} for p in pairs]
    runs = {}
    for label, model in models.items():
        runs[label] = client.evals.runs.create(ev.id, name=f"{label} jokes", data_source={
            "type": "completions", "model": model,
            "input_messages": {"type": "item_reference", "item_reference": "item.messages"},
            "sampling_params": {"temperature": cfg.joke_temperature, "max_completion_tokens": cfg.joke_tokens,
                                "seed": cfg.seed},
            "source": {"type": "file_content", "content": [{"item": it} for it in items]}}).id
    for label, key in (("human_preferred", "preferred_output"), ("human_rejected", "non_preferred_output")):
        runs[label] = client.evals.runs.create(ev.id, name=label, data_source={
            "type": "jsonl", "source": {"type": "file_content", "content": [
                {"item": it, "sample": {"output_text": _text(p[key])}} for it, p in zip(items, pairs)]}}).id
    scores = {}
    for label, run_id in runs.items():
        wait_eval_run(client, ev.id, run_id)
        scores[label] = judged(output_items(client, ev.id, run_id))
    return scores, {"eval_id": ev.id, **runs}


def compare(a: list[tuple[float | None, str]], b: list[tuple[float | None, str]]) -> dict:
    """Line by line, a vs b: wins (a > b), ties, losses, unscored (either side unusable)."""
    out = {"wins": 0, "ties": 0, "losses": 0, "unscored": 0, "n": len(a)}
    for (sa, _), (sb, _) in zip(a, b, strict=True):
        key = "unscored" if sa is None or sb is None else "wins" if sa > sb else "losses" if sa < sb else "ties"
        out[key] += 1
    return out


def run(ctx: Context, cfg: DPOStory | None = None) -> dict:
    from modelmill.ml import models

    cfg = cfg or (QUICK if ctx.quick else FULL)
    example = load_example("dpo_jokes")
    base_dir = models.ensure_base(ctx.home, cfg.model)
    with tempfile.TemporaryDirectory() as tmp:
        folder = data_dir(cfg, Path(tmp))
        t0 = time.monotonic()
        before = example.pair_logps(base_dir, None, folder / "heldout.jsonl")
        args = types.SimpleNamespace(base_url=ctx.base_url, api_key=ctx.api_key, model=cfg.model, home=str(ctx.home))
        t_train = time.monotonic()
        # upload, create the job, wait; both jobs get the story's seed (until 2026-12-05 the server drew one)
        adapter = example.train_remote(args, cfg.hyperparameters, folder, seed=cfg.seed)
        train_s = time.monotonic() - t_train
        job = ctx.client.fine_tuning.jobs.retrieve(adapter.parent.name)
        after = example.pair_logps(base_dir, adapter, folder / "heldout.jsonl")
        acc_base, acc_ft = example.accuracy(before), example.accuracy(after)
        print(f"[dpo] held-out preference accuracy {acc_base:.3f} -> {acc_ft:.3f}", flush=True)
        side = None
        if cfg.compare_metadata:
            print(f"[dpo] side by side: {cfg.compare_label} ...", flush=True)
            t_c = time.monotonic()
            c_adapter = example.train_remote(args, cfg.hyperparameters, folder, metadata=cfg.compare_metadata,
                                             seed=cfg.seed)
            c_train_s = time.monotonic() - t_c
            c_after = example.pair_logps(base_dir, c_adapter, folder / "heldout.jsonl")
            side = {"label": cfg.compare_label, "metadata": cfg.compare_metadata, "job_id": c_adapter.parent.name,
                    "train_s": round(c_train_s, 1), "accuracy": example.accuracy(c_after), "logps": c_after}
            print(f"[dpo] held-out preference accuracy with {cfg.compare_label}: {side['accuracy']:.3f}", flush=True)
        pairs, n_train = heldout(folder), _lines(folder / "train.jsonl")
        scores, run_ids = judge_runs(ctx, cfg, pairs, {"base": cfg.model, "fine_tuned": job.fine_tuned_model})
        wall = time.monotonic() - t0
    duel = compare(scores["fine_tuned"], scores["base"])
    agree = compare(scores["human_preferred"], scores["human_rejected"])
    decided = duel["wins"] + duel["losses"]
    mean = {k: _mean([s for s, _ in v]) for k, v in scores.items()}
    print(f"[dpo] judge: fine-tuned vs base {duel}; judge vs human preference {agree}", flush=True)

    n = len(pairs)
    prompts = len({p["input"]["messages"][-1]["content"] for p in pairs})
    rows = [row(f"held-out preference accuracy ({n} pairs, log-prob preferred > non-preferred)", acc_base, acc_ft,
                "> base", acc_ft > acc_base),
            row(f"judge win rate, fine-tuned over base ({n} jokes each; "
                f"{duel['wins']} wins / {duel['ties']} ties / {duel['losses']} losses / {duel['unscored']} unscored)",
                None, duel["wins"] / n, "> 50% of decided", (duel["wins"] / decided > 0.5) if decided else None),
            row("mean judge score (0-10)", mean["base"], mean["fine_tuned"], None, None)]
    rows.append(row("held-out reward accuracy (DPO's implicit reward: the preferred answer gained more log-prob over "
                    "the base model than the non-preferred one; a model that learned nothing scores 0)", None,
                    reward_accuracy(before, after), "reported", None))
    if side:
        rows.append(row(f"the same data and hyperparameters with {cfg.compare_label}, side by side in this run: "
                        "held-out preference accuracy", acc_base, side["accuracy"], "reported", None))
        rows.append(row("  its held-out reward accuracy", None, reward_accuracy(before, side["logps"]), "reported",
                        None))
    notes = [
        f"Training: examples/dpo_jokes/run.py's job ({_hp(job)}), {n_train} training pairs, "
        f"{train_s:.0f} s including the job's own before/after eval of its validation file.",
        f"Judge: a `score_model` grader on {cfg.judge_model} (temperature 0, {cfg.judge_tokens} tokens, two worked "
        "examples in its prompt so that it answers with a number), the only judge available offline. Scoring the "
        "held-out pairs' own answers, it preferred the human-preferred one in "
        f"{agree['wins']} of {agree['n']} pairs ({agree['ties']} ties, {agree['losses']} against, "
        f"{agree['unscored']} unscored; scores given: {_spread(scores)}): read the win rate with that in mind.",
        f"Jokes sampled at temperature {cfg.joke_temperature}, up to {cfg.joke_tokens} tokens, seed {cfg.seed} for "
        f"both models ({n} held-out lines, {prompts} distinct prompts).",
    ]
    if side:
        notes.append(f"DPO's supervised term: the job above ran with the \"auto\" weight (loss: "
                     f"{_loss(ctx.client, job.id)}); the side-by-side job, metadata {cfg.compare_metadata} (loss: "
                     f"{_loss(ctx.client, side['job_id'])}), trained {side['train_s']:.0f} s (its preference accuracy "
                     "is the last row; the judge did not score its jokes). The wall time includes it.")
    jokes = [{"prompt": p["input"]["messages"][-1]["content"], "base": b[1], "base_score": b[0],
              "fine_tuned": f[1], "fine_tuned_score": f[0]}
             for p, b, f in zip(pairs, scores["base"], scores["fine_tuned"])]
    details = {"rows": rows, "notes": notes, "date": today(), "machine": machine(), "job_id": job.id,
               "fine_tuned_model": job.fine_tuned_model, "train_s": round(train_s, 1),
               "logps_base": before, "logps_fine_tuned": after, "duel": duel, "judge_vs_human": agree,
               "mean_scores": mean, "judge_grader": judge_grader(cfg), "eval_runs": run_ids, "jokes": jokes,
               "config": dict(cfg.__dict__),
               "compare": side}
    return result("dpo", cfg.model, rows[0]["metric"], acc_base, acc_ft, "> base", rows[0]["met"], wall, details)


def reward_accuracy(base: list[tuple[float, float]], tuned: list[tuple[float, float]]) -> float:
    """The share of pairs whose preferred answer's log-prob rose more (or fell less) from base to tuned
    than the non-preferred one's: the sign of DPO's implicit reward margin, beta x (log pi/pi_ref(chosen)
    - log pi/pi_ref(rejected)), the reward accuracy TRL logs on validation data. Ties count as misses."""
    return sum((tc - bc) > (tr - br) for (bc, br), (tc, tr) in zip(base, tuned, strict=True)) / len(base)


def _loss(client, job_id: str) -> str:
    """The loss the job's start event names (ml/dpo.py: "loss: DPO + 0.3 x the preferred answer's NLL ...")."""
    for e in job_events(client, job_id):
        if "loss: " in e.message:
            return e.message.split("loss: ", 1)[1].split(";")[0]
    return "not reported"


def _spread(scores: dict) -> str:
    """The distinct scores the judge gave, with counts, over every run."""
    counts: dict = {}
    for v in scores.values():
        for score, _ in v:
            key = "unscored" if score is None else f"{score:g}"
            counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{k} x{n}" for k, n in sorted(counts.items()))


def _lines(path) -> int:
    return sum(1 for line in path.read_text().splitlines() if line.strip())


def _mean(xs: list[float | None]) -> float | None:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def _hp(job) -> str:
    hp = job.method.dpo.hyperparameters
    return (f"{hp.n_epochs} epochs, batch {hp.batch_size}, beta {hp.beta}, "
            f"LR multiplier {hp.learning_rate_multiplier}")
