"""DPO story with an objective metric: arithmetic. Pairs of a right answer against a subtly wrong one
(arith_pairs.py: reasoning-gym `basic_arithmetic`, 2 one-digit terms; the wrong answers are the base
model's own kinds of mistake: a sign dropped, a double negative read as one, off by one), training and
held-out questions sharing no answer.

Training: one DPO job through the server with every hyperparameter on "auto" (the job request names
none), no validation file (the held-out pairs are scored here, not by the job).

Metrics, base vs base + the job's adapter, on the held-out pairs:
- held-out preference accuracy: the share of pairs whose right answer gets a higher summed log-probability
  than the wrong one (examples/dpo_jokes/run.py pair_logps, the jokes story's measure). Target >= 0.70;
- held-out task accuracy: the held-out questions asked through chat completions (greedy), right when the
  reply's final answer is the answer: `final_answer`, the RFT arithmetic example's grader's own rule
  (examples/rft_arithmetic/grader.py: the whole reply when it is bare, else its last number, a minus
  sign counting only when it is not a subtraction). Target: above base.

Side by side (`compare_plain`): each DPO job is trained twice, with "auto" (DPO's loss plus an SFT term on
the preferred answer, ml/dpo.py AUTO_SFT_WEIGHT) and with DPO's loss alone (job metadata
`modelmill.dpo_sft_weight` "0", the "auto" rule before 2026-12-04), scored the same way.

Chained SFT -> DPO (`chain`): an SFT job on the same training questions with their right answers, then a
DPO job on the same pairs starting from that SFT model (model = its ft: name, so SFT is also DPO's
reference); task accuracy after SFT and after SFT -> DPO says whether DPO kept what SFT taught.
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import arith_pairs
from common import Context, job_events, load_example, machine, result, row, today, wait_job


@dataclass(frozen=True)
class DPOArithStory:
    model: str = "SmolLM2-135M-Instruct"
    train_pairs: int = 400
    heldout_pairs: int = 100
    hyperparameters: dict | None = None  # None: every hyperparameter "auto"
    chain: bool = True  # also SFT, then DPO from the SFT model (see the module docstring)
    # Also train every DPO job with the plain DPO loss (metadata modelmill.dpo_sft_weight "0", the "auto"
    # rule before 2026-12-04), side by side with "auto", which adds the SFT term (ml/dpo.py AUTO_SFT_WEIGHT).
    compare_plain: bool = True
    max_tokens: int = 32  # the reply budget when asking a held-out question
    seed: int = 7
    data_seed: int = 1234
    target: float = 0.70


PLAIN = {"modelmill.dpo_sft_weight": "0"}  # DPO's loss alone (the comparison jobs)
FULL = DPOArithStory()
QUICK = DPOArithStory(model="modelmill-tiny", train_pairs=12, heldout_pairs=3, max_tokens=4,
                      hyperparameters={"n_epochs": 1, "batch_size": 4})


def final_answer(text: str) -> str | None:
    """The reply's final answer as examples/rft_arithmetic's grader reads it (its GRADER_SOURCE, run here)."""
    grader = load_example("rft_arithmetic", "grader.py")
    if not hasattr(grader, "scope"):
        grader.scope = {}
        exec(compile(grader.GRADER_SOURCE, "rft_arithmetic_grader", "exec"), grader.scope)  # our own example's source
    text = (text or "").strip()
    return text if re.fullmatch(r"-?\d+", text) else grader.scope["final_answer"](text)


def task_accuracy(client, model: str, pairs: list[dict], max_tokens: int) -> tuple[float, list[dict]]:
    """Each held-out question through chat completions (temperature 0): right when the reply's final
    answer (final_answer) is the answer. (accuracy, [{question, answer, reply, ok}]), whole replies."""
    answers, t0 = [], time.monotonic()
    for i, p in enumerate(pairs, 1):
        resp = client.chat.completions.create(model=model, temperature=0, max_tokens=max_tokens,
                                              messages=p["input"]["messages"])
        reply = resp.choices[0].message.content or ""
        answers.append({"question": p["question"], "answer": p["answer"], "reply": reply,
                        "ok": final_answer(reply) == p["answer"]})
        if i % 25 == 0 or i == len(pairs):
            print(f"[dpo_arith]   {model}: {i}/{len(pairs)} asked, {sum(a['ok'] for a in answers)} right, "
                  f"{time.monotonic() - t0:.0f} s", flush=True)
    return sum(a["ok"] for a in answers) / len(answers), answers


def by_kind(pairs: list[dict], logps: list[tuple[float, float]]) -> dict[str, str]:
    """Preference accuracy per mistake kind, as "right/n"."""
    out: dict[str, list[int]] = {}
    for p, (chosen, rejected) in zip(pairs, logps, strict=True):
        out.setdefault(p["kind"], []).append(chosen > rejected)
    return {k: f"{sum(v)}/{len(v)}" for k, v in sorted(out.items())}


def _job(client, cfg: DPOArithStory, model: str, method: str, file_id: str, suffix: str, metadata: dict | None = None):
    spec = {"hyperparameters": cfg.hyperparameters} if cfg.hyperparameters else {}
    job = client.fine_tuning.jobs.create(model=model, training_file=file_id, suffix=suffix, seed=cfg.seed,
                                         metadata={"eval": "false", **(metadata or {})},
                                         method={"type": method, method: spec})
    t0 = time.monotonic()
    job = wait_job(client, job.id)
    return job, time.monotonic() - t0


def _upload(client, name: str, lines: list[dict]) -> str:
    data = "".join(json.dumps(x) + "\n" for x in lines).encode()
    return client.files.create(file=(name, data), purpose="fine-tune").id


def run(ctx: Context, cfg: DPOArithStory | None = None) -> dict:
    from modelmill.ml import models

    cfg = cfg or (QUICK if ctx.quick else FULL)
    client = ctx.client
    jokes = load_example("dpo_jokes")  # its pair_logps / accuracy: the jokes story's preference measure
    pair_logps, accuracy = jokes.pair_logps, jokes.accuracy
    train, held = arith_pairs.build(cfg.train_pairs, cfg.heldout_pairs, cfg.data_seed)
    print(f"[dpo_arith] {len(train)} training pairs, {len(held)} held-out pairs (no answer shared)", flush=True)
    base_dir = models.ensure_base(ctx.home, cfg.model)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        held_path = Path(tmp) / "heldout.jsonl"
        held_path.write_text("".join(json.dumps(arith_pairs.strip(p)) + "\n" for p in held))
        logps = {"base": pair_logps(base_dir, None, held_path)}
        task = {"base": task_accuracy(client, cfg.model, held, cfg.max_tokens)}
        dpo_file = _upload(client, "results_dpo_arith_train.jsonl", [arith_pairs.strip(p) for p in train])
        jobs = {}

        def dpo_job(key: str, model: str, suffix: str, metadata: dict | None = None) -> None:
            jobs[key] = _job(client, cfg, model, "dpo", dpo_file, suffix, metadata)
            logps[key] = pair_logps(base_dir, ctx.home / "jobs" / jobs[key][0].id / "adapter", held_path)
            task[key] = task_accuracy(client, jobs[key][0].fine_tuned_model, held, cfg.max_tokens)
            print(f"[dpo_arith] {key}: preference accuracy {accuracy(logps['base']):.3f} -> "
                  f"{accuracy(logps[key]):.3f}; task accuracy {task['base'][0]:.3f} -> {task[key][0]:.3f}", flush=True)

        dpo_job("dpo", cfg.model, "results-dpo-arith")
        if cfg.compare_plain:
            dpo_job("dpo_plain", cfg.model, "results-dpo-arith-plain", PLAIN)
        if cfg.chain:
            sft_lines = [{"messages": [*p["input"]["messages"], *p["preferred_output"]]} for p in train]
            sft_file = _upload(client, "results_dpo_arith_sft.jsonl", sft_lines)
            jobs["sft"] = _job(client, cfg, cfg.model, "supervised", sft_file, "results-arith-sft")
            task["sft"] = task_accuracy(client, jobs["sft"][0].fine_tuned_model, held, cfg.max_tokens)
            logps["sft"] = pair_logps(base_dir, ctx.home / "jobs" / jobs["sft"][0].id / "adapter", held_path)
            dpo_job("sft_dpo", jobs["sft"][0].fine_tuned_model, "results-arith-sft-dpo")
            if cfg.compare_plain:
                dpo_job("sft_dpo_plain", jobs["sft"][0].fine_tuned_model, "results-arith-sft-dpo-plain", PLAIN)
    wall = time.monotonic() - t0
    return report(ctx, cfg, train, held, jobs, logps, task, accuracy, wall)


def report(ctx: Context, cfg: DPOArithStory, train, held, jobs, logps, task, accuracy, wall) -> dict:
    n = len(held)
    pref = {k: accuracy(v) for k, v in logps.items()}
    job, train_s = jobs["dpo"]
    hp = job.method.dpo.hyperparameters
    rows = [row(f"held-out preference accuracy ({n} pairs: right answer vs a subtly wrong one, log-prob)",
                pref["base"], pref["dpo"], f">= {cfg.target}", pref["dpo"] >= cfg.target),
            row(f"held-out task accuracy ({n} questions whose answers training never has; chat, greedy, final answer)",
                task["base"][0], task["dpo"][0], "> base", task["dpo"][0] > task["base"][0])]
    if "sft" in jobs:
        rows += [row("chained: task accuracy after SFT on the same questions' right answers (base -> SFT)",
                     task["base"][0], task["sft"][0], "reported", None),
                 row("chained: task accuracy, the SFT model (base column) -> SFT then DPO (must not lose what SFT taught)",
                     task["sft"][0], task["sft_dpo"][0], ">= SFT", task["sft_dpo"][0] >= task["sft"][0]),
                 row("chained: held-out preference accuracy (base -> SFT then DPO)", pref["base"], pref["sft_dpo"],
                     "reported", None),
                 row("chained: held-out preference accuracy (base -> SFT alone)", pref["base"], pref["sft"],
                     "reported", None)]
    if "dpo_plain" in jobs:  # the same jobs with DPO's loss alone (dpo_sft_weight 0, "auto" before 2026-12-04)
        rows += [row("plain DPO loss (dpo_sft_weight 0): held-out preference accuracy", pref["base"],
                     pref["dpo_plain"], "reported", None),
                 row("plain DPO loss: held-out task accuracy", task["base"][0], task["dpo_plain"][0], "reported", None)]
    if "sft_dpo_plain" in jobs:
        rows += [row("plain DPO loss, chained: task accuracy, the SFT model (base column) -> SFT then DPO",
                     task["sft"][0], task["sft_dpo_plain"][0], "reported", None)]
    kinds = {k: by_kind(held, v) for k, v in logps.items()}
    notes = [
        f"Data (bench/results/arith_pairs.py): reasoning-gym basic_arithmetic, 2 one-digit terms; {len(train)} training "
        f"and {n} held-out pairs, split by the answer's absolute value (no answer in both, not even with the other sign); the wrong answer of each pair is one of the base "
        "model's own kinds of mistake (sign, double negative, off by one), drawn at random.",
        f"DPO job: every hyperparameter \"auto\", resolved to {hp.n_epochs} epochs, batch {hp.batch_size}, beta "
        f"{hp.beta}, LR multiplier {hp.learning_rate_multiplier}; {train_s / 60:.1f} min of training.",
        "Preference accuracy by mistake kind (right/n): "
        + "; ".join(f"{model}: " + ", ".join(f"{kind} {v}" for kind, v in per.items()) for model, per in kinds.items())
        + ".",
    ]
    if "sft" in jobs:
        notes.append(f"Chained: SFT job ({_hp(jobs['sft'][0].method.supervised.hyperparameters)}; "
                     f"{jobs['sft'][1] / 60:.1f} min), then a DPO job with model = the SFT model "
                     f"({_hp(jobs['sft_dpo'][0].method.dpo.hyperparameters)}; {jobs['sft_dpo'][1] / 60:.1f} min).")
    misses = [a for a in task["dpo"][1] if not a["ok"]][:6]
    notes.append("DPO model's misses (first 6, question -> reply): "
                 + ", ".join(f"{a['question']} = {a['answer']} -> {a['reply']!r}" for a in misses) + ".")
    details = {"rows": rows, "notes": notes, "date": today(), "machine": machine(), "job_id": job.id,
               "fine_tuned_model": job.fine_tuned_model, "train_s": round(train_s, 1),
               "jobs": {k: {"id": j.id, "model": j.fine_tuned_model, "train_s": round(s, 1),
                            "events": [e.message for e in job_events(ctx.client, j.id) if e.type != "metrics"][-8:]}
                        for k, (j, s) in jobs.items()},
               "preference_accuracy": pref, "preference_by_kind": kinds, "logps": logps,
               "task_accuracy": {k: v[0] for k, v in task.items()}, "answers": {k: v[1] for k, v in task.items()},
               "config": dict(cfg.__dict__)}
    return result("dpo_arith", cfg.model, rows[0]["metric"], pref["base"], pref["dpo"], rows[0]["target"],
                  rows[0]["met"], wall, details)


def _hp(hp) -> str:
    d = hp.to_dict()
    return ", ".join(f"{k} {v}" for k, v in d.items())
