"""Intent story: the seed's banking demo. A customer message in, one of 12 intent labels out.

Data (intent_data.py, generated in code from templates and slot values; nothing is downloaded):
- training: `train_per_intent` messages per intent from TRAIN_TEMPLATES with TRAIN_SLOTS values:
  polite, complete sentences (some wrapped in a greeting or a thank-you) alternating with short, casual
  and misspelled ones written apart from the test set (no three words in a row shared with it);
  `casual=False` trains on the polite half only, the data until 2026-12-03; `typo_share` misspells one
  word in that share of the training messages (intent_data.misspell: never into a word of the test set);
- held out: every TEST_TEMPLATES shape once per intent, with TEST_SLOTS values. Those shapes are
  never trained on (slang, typos, fragments, long messages, other verbs); tests/bench/test_intent_data.py
  checks that no test template's skeleton is a training template's.
Every line carries the same system prompt, which lists the labels (the base model is told them too).

Training: one SFT job through the server with EVERY hyperparameter on "auto" (`hyperparameters`
None: the job request names none), no validation file. The job's resolved n_epochs / batch_size /
learning_rate_multiplier and its events are recorded for the "auto" rule's evidence. Then, side by
side in the same run, a second job on the same file and seed with what the previous "auto" rule resolved
to (`compare_hyperparameters`), so a change of the rule is measured against the old one.

Metric: exact label (the reply, whitespace stripped, equals the intent) from a greedy chat completion
(temperature 0), base vs fine-tuned, on the held-out phrasings. Target >= 0.85, and training under
20 minutes on this machine (the second row).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field

import intent_data
from common import Context, job_events, machine, result, row, today, wait_job


@dataclass(frozen=True)
class IntentStory:
    model: str = "SmolLM2-135M-Instruct"
    intents: tuple[str, ...] = intent_data.INTENTS
    train_per_intent: int = 24  # distinct training messages per intent (12 until 2026-12-04)
    casual: bool = True  # train on the casual templates too (False: polite sentences only, as until 2026-12-03)
    typo_share: float = 0.5  # share of training messages with one misspelled word (intent_data.misspell; 0 until 2026-12-04)
    test_per_intent: int | None = None  # held-out shapes per intent; None: all of TEST_TEMPLATES (5 each)
    hyperparameters: dict | None = None  # None: every hyperparameter "auto" (the point of the story)
    # A second job, side by side in the same run: what the "auto" rule before 2026-12-04 resolved to for
    # these 288 lines (3 epochs, batch 4, LR multiplier 1.0), so a change of the rule is measured against
    # the old one on the same data, seed and machine. None: one job only.
    compare_hyperparameters: dict | None = field(default_factory=lambda: {
        "n_epochs": 3, "batch_size": 4, "learning_rate_multiplier": 1.0})
    compare_label: str = "the \"auto\" rule until 2026-12-04"
    max_tokens: int = 8  # a label is at most 4 tokens; room to see what else the model says
    seed: int = 7
    target: float = 0.85
    train_minutes_target: float = 20.0


FULL = IntentStory()
# The code path only: 3 intents, 4 lines each (the server wants 10 at least), one epoch (the tiny random model learns nothing anyway).
QUICK = IntentStory(model="modelmill-tiny", intents=intent_data.INTENTS[:3], train_per_intent=4, test_per_intent=1,
                    hyperparameters={"n_epochs": 1},
                    compare_hyperparameters={"n_epochs": 1, "batch_size": 4, "learning_rate_multiplier": 1.0})


def ask(client, model: str, probe: dict, max_tokens: int) -> dict:
    resp = client.chat.completions.create(
        model=model, temperature=0, max_tokens=max_tokens,
        messages=[{"role": "system", "content": intent_data.SYSTEM_PROMPT}, {"role": "user", "content": probe["message"]}])
    reply = resp.choices[0].message.content or ""
    return {"id": probe["id"], "intent": probe["intent"], "message": probe["message"], "reply": reply[:120],
            "ok": reply.strip() == probe["intent"]}


def score(client, model: str, probes: list[dict], max_tokens: int) -> tuple[float, list[dict]]:
    t0, answers = time.monotonic(), []
    for i, p in enumerate(probes, 1):
        answers.append(ask(client, model, p, max_tokens))
        if i % 20 == 0 or i == len(probes):
            print(f"[intent]   {i}/{len(probes)} asked, {sum(a['ok'] for a in answers)} right, "
                  f"{time.monotonic() - t0:.0f} s", flush=True)
    return sum(a["ok"] for a in answers) / len(answers), answers


def confusions(answers: list[dict]) -> str:
    """The fine-tuned model's misses as "intent -> reply (n)", most frequent first."""
    counts: dict[str, int] = {}
    for a in answers:
        if not a["ok"]:
            key = f"{a['intent']} -> {a['reply'].strip()[:30]!r}"
            counts[key] = counts.get(key, 0) + 1
    top = sorted(counts.items(), key=lambda kv: -kv[1])
    return ", ".join(f"{k} ({n})" for k, n in top) or "none"


def run(ctx: Context, cfg: IntentStory | None = None) -> dict:
    cfg = cfg or (QUICK if ctx.quick else FULL)
    client = ctx.client
    misspelled: set[str] = set()
    train, probes = intent_data.build(cfg.train_per_intent, cfg.test_per_intent, cfg.seed, cfg.intents, cfg.casual,
                                      cfg.typo_share, misspelled)
    print(f"[intent] {len(train)} training lines, {len(probes)} held-out messages, {len(cfg.intents)} intents",
          flush=True)

    t0 = time.monotonic()
    data = "".join(json.dumps(x) + "\n" for x in train).encode()
    train_file = client.files.create(file=("results_intent_train.jsonl", data), purpose="fine-tune")
    print(f"[intent] scoring the base model {cfg.model} ...", flush=True)
    base, base_answers = score(client, cfg.model, probes, cfg.max_tokens)
    job, train_s, tuned, tuned_answers = train_and_score(client, cfg, train_file.id, cfg.hyperparameters, probes)
    print(f"[intent] exact label: base {base:.3f} -> fine-tuned {tuned:.3f}; training {train_s:.0f} s", flush=True)
    compare = None
    if cfg.compare_hyperparameters:
        print(f"[intent] side by side: {cfg.compare_label}, {cfg.compare_hyperparameters}", flush=True)
        compare = train_and_score(client, cfg, train_file.id, cfg.compare_hyperparameters, probes)
        print(f"[intent] exact label with {cfg.compare_label}: {compare[2]:.3f}; training {compare[1]:.0f} s",
              flush=True)
    wall = time.monotonic() - t0
    return report(ctx, cfg, train, probes, job, (base, base_answers), (tuned, tuned_answers), train_s, wall, compare,
                  len(misspelled))


def train_and_score(client, cfg: IntentStory, train_file: str, hyperparameters: dict | None, probes: list[dict]):
    """One SFT job on the training file (hyperparameters None: every one "auto"), then its model scored:
    (the finished job, training seconds, accuracy, answers)."""
    supervised = {"hyperparameters": hyperparameters} if hyperparameters else {}
    job = client.fine_tuning.jobs.create(model=cfg.model, training_file=train_file, suffix="results-intent",
                                         seed=cfg.seed, metadata={"eval": "false"},  # scored here
                                         method={"type": "supervised", "supervised": supervised})
    t_train = time.monotonic()
    job = wait_job(client, job.id)
    train_s = time.monotonic() - t_train
    print(f"[intent] scoring {job.fine_tuned_model} ...", flush=True)
    accuracy, answers = score(client, job.fine_tuned_model, probes, cfg.max_tokens)
    return job, train_s, accuracy, answers


def report(ctx: Context, cfg: IntentStory, train: list[dict], probes: list[dict], job, before: tuple, after: tuple,
           train_s: float, wall: float, compare: tuple | None = None, misspelled: int = 0) -> dict:
    """The story's Results JSON from the finished job and both models' (accuracy, answers); `compare` is
    the side-by-side job's train_and_score result, or None; `misspelled`: how many training lines got a
    misspelling."""
    client = ctx.client
    (base, base_answers), (tuned, tuned_answers) = before, after
    hp = job.method.supervised.hyperparameters
    steps = math.ceil(len(train) / hp.batch_size) * hp.n_epochs
    events = job_events(client, job.id)
    messages = [e.message for e in events if e.type != "metrics"]
    metrics = [e.data for e in events if e.type == "metrics" and e.data]
    losses = [m.get("train_loss") for m in metrics if m.get("train_loss") is not None]
    rows = [row(f"held-out phrasings, exact label ({len(probes)} messages, {len(cfg.intents)} intents, "
                "sentence shapes never trained on)", base, tuned, f">= {cfg.target}", tuned >= cfg.target),
            row("training time, minutes (the job, as measured)", None, round(train_s / 60, 1),
                f"< {cfg.train_minutes_target:g}", train_s / 60 < cfg.train_minutes_target)]
    if compare:
        c_job, c_train_s, c_acc, c_answers = compare
        c_hp = c_job.method.supervised.hyperparameters
        rows.append(row(f"the same, trained with {cfg.compare_label} ({c_hp.n_epochs} epochs, batch "
                        f"{c_hp.batch_size}, LR multiplier {c_hp.learning_rate_multiplier}; "
                        f"{c_train_s / 60:.1f} min of training), side by side in this run", base, c_acc,
                        "reported", None))
    notes = [
        f"Training: {len(train)} lines ({cfg.train_per_intent} per intent) from "
        f"{sum(len((intent_data.TRAIN_TEMPLATES if cfg.casual else intent_data.POLITE_TEMPLATES)[i]) for i in cfg.intents)} "
        f"training templates ({'polite and casual' if cfg.casual else 'polite only'}"
        + (f"; {misspelled} of the lines with one word misspelled at random "
           f"(typo_share {cfg.typo_share:.2f}; never a word of the test set)" if cfg.typo_share else "") + "); "
        + (f"hyperparameters {cfg.hyperparameters}, the rest \"auto\"" if cfg.hyperparameters
           else "every hyperparameter \"auto\"")
        + f", resolved by the job to {hp.n_epochs} epochs, batch {hp.batch_size}, LR multiplier "
        f"{hp.learning_rate_multiplier} ({steps} steps, {train_s / steps:.1f} s a step); no validation file; "
        f"{job.trained_tokens} tokens trained.",
        f"Held out: {len(probes)} messages from {len(probes)} test templates (slang, typos, fragments, long "
        "messages), none of them a training template's shape (tests/bench/test_intent_data.py), filled with slot "
        "values training never saw.",
        "Train loss: " + (f"{losses[0]:.3f} at the first step, {sum(losses[-10:]) / len(losses[-10:]):.3f} on average "
                          "over the last 10 logged" if losses else "none logged") + ".",
        f"Fine-tuned misses (intent -> reply): {confusions(tuned_answers)}.",
        f"Base misses (first 5): {confusions(base_answers[:5])}.",
    ]
    if compare:
        notes.append(f"Side by side, the same data and seed trained with {cfg.compare_label} "
                     f"({compare[0].method.supervised.hyperparameters.to_dict()}): {compare[2]:.3f} "
                     f"({sum(a['ok'] for a in compare[3])} of {len(probes)}) in {compare[1] / 60:.1f} min of "
                     f"training; its misses: {confusions(compare[3])}.")
    details = {"rows": rows, "notes": notes, "date": today(), "machine": machine(), "job_id": job.id,
               "fine_tuned_model": job.fine_tuned_model, "train_s": round(train_s, 1), "steps": steps,
               "trained_tokens": job.trained_tokens, "hyperparameters": hp.to_dict(),
               "config": {k: v for k, v in cfg.__dict__.items()}, "train_lines": len(train),
               # Under other load the worker's nice value (default 10: requests first) sets its CPU share.
               "worker_nice": os.environ.get("MODELMILL_WORKER_NICE", "default (10)"),
               "event_messages": messages, "train_losses": losses,
               "base_answers": base_answers, "fine_tuned_answers": tuned_answers,
               "compare": None if not compare else {
                   "label": cfg.compare_label, "job_id": compare[0].id, "train_s": round(compare[1], 1),
                   "hyperparameters": compare[0].method.supervised.hyperparameters.to_dict(),
                   "accuracy": compare[2], "answers": compare[3]}}
    return result("intent", cfg.model, rows[0]["metric"], base, tuned, rows[0]["target"], rows[0]["met"], wall,
                  details)
