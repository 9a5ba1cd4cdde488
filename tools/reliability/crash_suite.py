"""Crash suite (issue 8): SIGKILL the worker at many points of an SFT, a DPO and an RFT job.

For each method, one job on modelmill-tiny is killed `points` times, then left to finish:
- "random": at a random moment of the run (uniform over a reference run's duration);
- "mid_save": while a checkpoint is half-written (its .staging dir exists, trainer_state.json not yet);
- "store_commit": inside a store write transaction, after its statements and before COMMIT
  (the worker SIGKILLs itself there: MODELMILL_CRASH_AT, see modelmill/faults.py);
- "checkpoint_publish": a checkpoint fully staged but not yet renamed into checkpoints/;
- "adapter_publish": the final adapter written but not yet renamed into place.
Checked after each job: it succeeded; every step up to total_steps has a metrics event; every listed
checkpoint is complete on disk; a worker started after success does not run it again; PRAGMA
integrity_check is ok; the final adapter matches an uninterrupted run with the same seed (max |diff|
of the LoRA weights, reported against a tolerance).

Also the stale-worker case: worker A is SIGSTOPped past its lease, worker B takes the job over, A is
SIGCONTed: A's writes must be refused (no event, checkpoint or status written by A after takeover).

    python -m tools.reliability.crash_suite                 # 20 points x sft, dpo, rft + SIGSTOP (make reliability)
    python -m tools.reliability.crash_suite --points 4 --methods sft --no-write   # a quick run

Writes the "Crashes" section of RELIABILITY.md (unless --no-write) and prints the same table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from benchmarks_md import write_section  # noqa: E402
from tools.datasets import arithmetic_dataset, short_dataset, short_preference_dataset  # noqa: E402
from tools.servers import Server  # noqa: E402

RELIABILITY = REPO / "RELIABILITY.md"
RESULTS = REPO / "bench" / "out" / "crash_suite.json"  # every method's last result (git-ignored)
KINDS = ("random", "mid_save", "store_commit", "checkpoint_publish", "adapter_publish")
# The suite kills on purpose, so the "give up after 3 losses without progress" rail is lifted.
LEASE_ENV = {"MODELMILL_LEASE_SECONDS": "3", "MODELMILL_HEARTBEAT_SECONDS": "0.5",
             "MODELMILL_MAX_WORKER_LOSSES": "1000"}
ADAPTER_TOLERANCE = 1e-4  # max |w_interrupted - w_reference| over every LoRA weight

# A reward that varies from sample to sample, so a random tiny model's rewards have a spread, GRPO's
# advantages are non-zero, the adapter moves, and comparing it with the reference run means something
# (exact match would give a random model 0 everywhere: no update at all).
RFT_GRADER = {"type": "text_similarity", "name": "sim", "input": "{{sample.output_text}}",
              "reference": "{{item.answer_text}}", "evaluation_metric": "fuzzy_match"}


def rft_dataset(n: int, seed: int = 0) -> bytes:
    """arithmetic_dataset with the answer as a sentence (item.answer_text), for RFT_GRADER."""
    return arithmetic_dataset(n, seed, fields=lambda total: {"answer_text": f"the answer is {total}"})


# n_epochs is high so a run outlasts its 20 kills and has many epoch-end checkpoints to resume from.
METHODS = {
    "sft": (lambda: short_dataset(16), {"type": "supervised", "supervised": {"hyperparameters": {
        "n_epochs": 40, "batch_size": 4, "learning_rate_multiplier": 2.0}}}),
    "dpo": (lambda: short_preference_dataset(16), {"type": "dpo", "dpo": {"hyperparameters": {
        "n_epochs": 40, "batch_size": 4, "learning_rate_multiplier": 2.0}}}),
    "rft": (lambda: rft_dataset(12), {"type": "reinforcement", "reinforcement": {"grader": RFT_GRADER,
            "hyperparameters": {"n_epochs": 10, "batch_size": 4, "learning_rate_multiplier": 1.0,
                                "reasoning_effort": "low", "compute_multiplier": 0.5, "eval_interval": 1000,
                                "eval_samples": 1}}}),
}


@dataclass
class MethodResult:
    method: str
    kills: dict[str, int] = field(default_factory=dict)  # kind -> kills that happened
    missed: dict[str, int] = field(default_factory=dict)  # kind -> the worker ended before the point
    status: str = ""
    steps_ok: bool = False
    checkpoints_ok: bool = False
    not_rerun: bool = False
    integrity: str = ""
    max_diff: float | None = None
    reclaims: int = 0
    wall_s: float = 0.0
    problems: list[str] = field(default_factory=list)


class Suite:
    def __init__(self, home: Path, seed: int):
        self.server = Server(home, worker=False, env=LEASE_ENV)
        self.client = self.server.client
        self.rng = random.Random(seed)

    def worker_env(self, crash_at: str | None = None) -> dict:
        env = dict(self.server.env)
        env.pop("MODELMILL_CRASH_AT", None)
        if crash_at:
            env["MODELMILL_CRASH_AT"] = crash_at
        return env

    def worker(self, crash_at: str | None = None) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "modelmill.cli", "worker"], env=self.worker_env(crash_at),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def create(self, method: str):
        data, spec = METHODS[method]
        train = self.client.files.create(file=(f"{method}.jsonl", data()), purpose="fine-tune")
        return self.client.fine_tuning.jobs.create(training_file=train.id, model="modelmill-tiny", seed=11,
                                                   method=spec, metadata={"eval": "false"})

    def status(self, job_id: str) -> str:
        return self.client.fine_tuning.jobs.retrieve(job_id).status

    def run_to_end(self, job_id: str, timeout: float = 900) -> float:
        t0 = time.monotonic()
        w = self.worker()
        try:
            while self.status(job_id) not in ("succeeded", "failed", "cancelled"):
                if time.monotonic() - t0 > timeout:
                    raise TimeoutError(f"{job_id} did not finish in {timeout}s")
                time.sleep(0.2)
        finally:
            stop(w)
        return time.monotonic() - t0

    # -- one kill ---------------------------------------------------------------------------

    def kill_once(self, job_id: str, kind: str, duration: float) -> bool:
        """Start a worker and kill it at a point of this kind; False if the job ended first."""
        job_dir = self.server.home / "jobs" / job_id
        if kind in ("store_commit", "checkpoint_publish", "adapter_publish"):
            nth = {"store_commit": self.rng.randint(1, 12), "checkpoint_publish": 1, "adapter_publish": 1}[kind]
            w = self.worker(f"{kind}:{nth}")
            return self._wait_self_kill(w, job_id)
        w = self.worker()
        deadline = time.monotonic() + duration * 3 + 60
        try:
            if kind == "random":
                fire_at = time.monotonic() + self.rng.uniform(2.0, max(3.0, duration / 4))
                while time.monotonic() < fire_at:
                    if self._ended(job_id, w):
                        return False
                    time.sleep(0.05)
                w.send_signal(signal.SIGKILL)
                return True
            while time.monotonic() < deadline:  # mid_save: a half-written checkpoint in .staging
                for d in (job_dir / ".staging").glob("checkpoint-*"):
                    if d.is_dir() and not (d / "trainer_state.json").exists() and any(d.iterdir()):
                        w.send_signal(signal.SIGKILL)
                        return True
                if w.poll() is not None or self.status(job_id) in ("succeeded", "failed"):
                    return False
                time.sleep(0.002)
            return False
        finally:
            stop(w)

    def _wait_self_kill(self, w: subprocess.Popen, job_id: str) -> bool:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            rc = w.poll()
            if rc is not None:
                return rc == -signal.SIGKILL
            if self.status(job_id) in ("succeeded", "failed"):
                stop(w)
                return False
            time.sleep(0.05)
        stop(w)
        return False

    def _ended(self, job_id: str, w: subprocess.Popen) -> bool:
        return w.poll() is not None or self.status(job_id) in ("succeeded", "failed")

    # -- one method -------------------------------------------------------------------------

    def run_method(self, method: str, points: int) -> MethodResult:
        res = MethodResult(method)
        ref = self.create(method)
        duration = self.run_to_end(ref.id)
        if self.status(ref.id) != "succeeded":
            res.problems.append(f"reference job {ref.id} did not succeed")
            return res
        t0 = time.monotonic()
        job = self.create(method)
        plan = [KINDS[i % len(KINDS)] for i in range(points)]
        self.rng.shuffle(plan)
        plan.sort(key=lambda k: k == "adapter_publish")  # the final-adapter kill only once training is done
        for kind in plan:
            if self.status(job.id) in ("succeeded", "failed"):
                res.missed[kind] = res.missed.get(kind, 0) + 1
                continue
            killed = self.kill_once(job.id, kind, duration)
            bucket = res.kills if killed else res.missed
            bucket[kind] = bucket.get(kind, 0) + 1
        self.run_to_end(job.id)
        res.wall_s = time.monotonic() - t0
        self.check(job.id, ref.id, res)
        return res

    def check(self, job_id: str, ref_id: str, res: MethodResult) -> None:
        client = self.client
        done = client.fine_tuning.jobs.retrieve(job_id)
        res.status = done.status
        if done.status != "succeeded":
            res.problems.append(f"status {done.status}: {done.error}")
        events = client.fine_tuning.jobs.list_events(job_id, limit=10000).data
        metrics = [e.data for e in events if e.type == "metrics"]
        total = max((m["total_steps"] for m in metrics), default=0)
        res.steps_ok = total > 0 and {m["step"] for m in metrics} == set(range(1, total + 1))
        if not res.steps_ok:
            res.problems.append("a step has no metrics event")
        res.reclaims = sum(1 for e in events if e.message.startswith("Resuming job after"))
        job_dir = self.server.home / "jobs" / job_id
        ckpts = client.fine_tuning.jobs.checkpoints.list(job_id, limit=100).data
        res.checkpoints_ok = bool(ckpts) and all(
            (job_dir / "checkpoints" / f"step-{c.step_number}" / "adapter_model.safetensors").is_file()
            for c in ckpts)
        if not res.checkpoints_ok:
            res.problems.append("a listed checkpoint is missing on disk")
        # No second run once succeeded: a fresh worker finds nothing to do with it.
        before = (len(events), done.finished_at)
        w = self.worker()
        time.sleep(8)
        stop(w)
        after_events = client.fine_tuning.jobs.list_events(job_id, limit=10000).data
        res.not_rerun = (len(after_events), client.fine_tuning.jobs.retrieve(job_id).finished_at) == before
        if not res.not_rerun:
            res.problems.append("the job changed after it succeeded")
        con = sqlite3.connect(self.server.home / "modelmill.db")
        res.integrity = con.execute("PRAGMA integrity_check").fetchone()[0]
        con.close()
        res.max_diff = adapter_max_diff(self.server.home / "jobs" / job_id / "adapter",
                                        self.server.home / "jobs" / ref_id / "adapter")
        if res.max_diff is None or res.max_diff > ADAPTER_TOLERANCE:
            res.problems.append(f"adapter differs from the uninterrupted run by {res.max_diff}")

    # -- SIGSTOP ----------------------------------------------------------------------------

    def stale_worker(self) -> dict:
        """A stopped worker loses its lease to a second worker; once continued, it writes nothing,
        drops the job (its log says so), and the second worker finishes the job."""
        data, spec = METHODS["sft"]
        spec = json.loads(json.dumps(spec))
        spec["supervised"]["hyperparameters"]["n_epochs"] = 20
        train = self.client.files.create(file=("stale.jsonl", data()), purpose="fine-tune")
        job = self.client.fine_tuning.jobs.create(training_file=train.id, model="modelmill-tiny", seed=11,
                                                  method=spec, metadata={"eval": "false"})
        db = self.server.home / "modelmill.db"
        a_log = self.server.home.parent / "stale-worker-a.log"
        with open(a_log, "wb") as out:
            a = subprocess.Popen([sys.executable, "-m", "modelmill.cli", "worker"], env=self.worker_env(),
                                 stdout=out, stderr=subprocess.STDOUT)
        b = None
        try:
            while not self.client.fine_tuning.jobs.checkpoints.list(job.id).data:
                time.sleep(0.05)
            a.send_signal(signal.SIGSTOP)
            stopped_at = time.monotonic()
            b = self.worker()
            while self.reclaims(db, job.id) < 1:  # B takes the job over once A's lease expires
                time.sleep(0.1)
            takeover_s = time.monotonic() - stopped_at
            time.sleep(3)
            marker = self.max_event_rowid(db)
            a.send_signal(signal.SIGCONT)
            continued = time.monotonic()
            dropped_s = None
            while time.monotonic() - continued < 60:
                if "to another claim" in a_log.read_text(errors="replace"):
                    dropped_s = round(time.monotonic() - continued, 1)
                    break
                time.sleep(0.1)
            deadline = time.monotonic() + 900
            while self.status(job.id) not in ("succeeded", "failed") and time.monotonic() < deadline:
                time.sleep(0.5)
            # Every event since A was continued must come from B: a metric step recorded twice after
            # the marker would be A writing next to B.
            steps_after = self.metric_steps_after(db, job.id, marker)
            return {"takeover_s": round(takeover_s, 1), "duplicate_steps_after_continue":
                    len(steps_after) - len(set(steps_after)), "a_dropped_job_after_s": dropped_s,
                    "job_status": self.status(job.id)}
        finally:
            for w in (a, b):
                if w is not None:
                    w.send_signal(signal.SIGCONT)
                    stop(w)

    @staticmethod
    def reclaims(db: Path, job_id: str) -> int:
        con = sqlite3.connect(db)
        try:
            return con.execute("SELECT reclaims FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]
        finally:
            con.close()

    @staticmethod
    def max_event_rowid(db: Path) -> int:
        con = sqlite3.connect(db)
        try:
            return con.execute("SELECT COALESCE(MAX(rowid), 0) FROM events").fetchone()[0]
        finally:
            con.close()

    @staticmethod
    def metric_steps_after(db: Path, job_id: str, rowid: int) -> list[int]:
        con = sqlite3.connect(db)
        try:
            rows = con.execute("SELECT data FROM events WHERE job_id = ? AND rowid > ? AND type = 'metrics'",
                               (job_id, rowid)).fetchall()
        finally:
            con.close()
        return [json.loads(r[0])["step"] for r in rows]

    def close(self) -> None:
        self.server.stop()


def stop(w: subprocess.Popen) -> None:
    if w.poll() is None:
        w.kill()
    w.wait()


def adapter_max_diff(a: Path, b: Path) -> float | None:
    from safetensors.torch import load_file

    fa, fb = a / "adapter_model.safetensors", b / "adapter_model.safetensors"
    if not (fa.is_file() and fb.is_file()):
        return None
    wa, wb = load_file(fa), load_file(fb)
    if wa.keys() != wb.keys():
        return None
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa)


def report(results: list[MethodResult], stale: dict | None, points: int, wall_s: float) -> str:
    lines = [f"Measured {time.strftime('%Y-%m-%d')} on {platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end, by "
             f"`python -m tools.reliability.crash_suite --points {points}` (`make reliability`; "
             f"`--methods sft,dpo` and `--methods rft` may run apart, their results are merged); the last run "
             f"took {wall_s / 60:.1f} min.", "",
             "One modelmill-tiny job per method, killed at each point in turn (each kill is a fresh worker "
             "started then SIGKILLed; the next worker reclaims the job when its 3 s lease expires), then "
             "left to finish. An uninterrupted job with the same seed is the reference.", "",
             "| method | kills (random / mid-save / mid-store-write / staged ckpt / final adapter) | not reached | "
             "status | every step once+ | ckpts complete | not re-run | integrity | max adapter diff | lost |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        k = " / ".join(str(r.kills.get(kind, 0)) for kind in KINDS)
        lines.append(f"| {r.method} | {k} (= {sum(r.kills.values())}) | {sum(r.missed.values())} | {r.status} | "
                     f"{yes(r.steps_ok)} | {yes(r.checkpoints_ok)} | {yes(r.not_rerun)} | {r.integrity} | "
                     f"{'n/a' if r.max_diff is None else f'{r.max_diff:.2e}'} | "
                     f"{'nothing' if not r.problems else '; '.join(r.problems)} |")
    lines += ["", f"Tolerance for the adapter: max |diff| <= {ADAPTER_TOLERANCE:g}. A resumed run restores the "
              "optimizer, scheduler and RNG state from the epoch-end checkpoint, so it repeats the reference "
              "run's arithmetic."]
    if stale is not None:
        lines += ["", "**Stale worker (SIGSTOP).** Worker A was stopped past its lease mid-job; worker B took the "
                  f"job over after {stale['takeover_s']} s; A was continued. Metric steps written twice after A "
                  f"was continued: {stale['duplicate_steps_after_continue']} (A's writes are refused by the "
                  f"lease fence). A logged that it dropped the job {stale['a_dropped_job_after_s']} s after "
                  f"SIGCONT; the job then ended {stale['job_status']} under B."]
    return "\n".join(lines)


def yes(ok: bool) -> str:
    return "yes" if ok else "**no**"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--points", type=int, default=20)
    ap.add_argument("--methods", default="sft,dpo,rft")
    ap.add_argument("--no-stale", action="store_true", help="skip the SIGSTOP case")
    ap.add_argument("--no-write", action="store_true", help="print only; leave RELIABILITY.md alone")
    ap.add_argument("--home", type=Path, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    import tempfile

    home = args.home or Path(tempfile.mkdtemp(prefix="mm-crash-")) / "home"
    t0 = time.monotonic()
    suite = Suite(home, args.seed)
    try:
        results = []
        for m in args.methods.split(","):
            r = suite.run_method(m, args.points)
            print(json.dumps(r.__dict__), flush=True)
            results.append(r)
        stale = None if args.no_stale else suite.stale_worker()
        if stale:
            print(json.dumps(stale), flush=True)
    finally:
        suite.close()
    wall = time.monotonic() - t0
    if not args.no_write:  # merged by method, so the methods can be run (and re-run) separately
        merged = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"methods": {}, "stale": None}
        for r in results:
            merged["methods"][r.method] = {**r.__dict__, "points": args.points, "wall_min": round(wall / 60, 1),
                                           "date": time.strftime("%Y-%m-%d")}
        if stale is not None:
            merged["stale"] = stale
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(merged, indent=1))
        order = [m for m in METHODS if m in merged["methods"]]
        results = [MethodResult(**{k: v for k, v in merged["methods"][m].items()
                                   if k in MethodResult.__dataclass_fields__}) for m in order]
        stale = merged["stale"]
    text = report(results, stale, args.points, wall)
    print(text)
    if not args.no_write:
        write_section("crashes", "Crashes", text, path=RELIABILITY)
    bad = [r for r in results if r.problems] or (stale and (
        stale["duplicate_steps_after_continue"] or stale["a_dropped_job_after_s"] is None
        or stale["job_status"] != "succeeded"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
