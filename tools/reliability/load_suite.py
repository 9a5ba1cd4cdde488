"""Load suite (issue 8): many concurrent clients against one server while a job trains, and four
workers racing for one queue.

1. `clients` threads, each with its own official openai SDK client, send `requests` mixed requests
   (uploads, job creates, lists, retrieves, events, chat completions on modelmill-tiny) while a
   modelmill-tiny job trains on the server's worker. Recorded: every status code, client-side
   latency per kind, "database is locked" in the server's log. Targets: zero 5xx, zero "database is
   locked", p99 of metadata requests (everything but uploads and chat) under 500 ms.
   Where the time goes: the server's event-loop lag during the load (its /metrics histogram, from
   api/loop_lag.py), the loop's stalls and where its thread was (the server logs them at shutdown),
   and each metadata request split into client-before-send / server app / loop-and-wire /
   client-after-headers (where_the_time_goes).
2. `jobs` short jobs are queued, then four worker processes start at once against the same
   MODELMILL_HOME. Each job must be claimed exactly once: it succeeds, its "started" claim happens
   once (jobs.reclaims == 0) and its steps are recorded once.

    python -m tools.reliability.load_suite                       # 50 x 200 in 10 client processes + 4 workers x 12 jobs (make reliability)
    python -m tools.reliability.load_suite --clients 5 --requests 20 --jobs 4 --no-write   # quick
    python -m tools.reliability.load_suite --client-processes 1 --no-write   # all 50 clients as threads of one process
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import random
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import openai  # noqa: E402
from benchmarks_md import write_section  # noqa: E402
from openai import OpenAI  # noqa: E402

from modelmill.local_server import LocalServer, free_port  # noqa: E402
from tools.datasets import short_dataset  # noqa: E402
from tools.reliability.load_timing import (chat_note, loop_lag_buckets, loop_lag_window, pct,  # noqa: E402
                                           server_env_note, stall_places, where_lines, where_the_time_goes)

RELIABILITY = REPO / "RELIABILITY.md"
# kind -> weight in each client's mix
MIX = {"list_files": 12, "retrieve_file": 12, "list_jobs": 12, "retrieve_job": 12, "events": 12,
       "checkpoints": 6, "list_models": 6, "upload": 8, "create_job": 4, "chat": 16}
METADATA = {"list_files", "retrieve_file", "list_jobs", "retrieve_job", "events", "checkpoints", "list_models",
            "create_job"}
P99_TARGET_MS = 500.0


class LiveServer(LocalServer):
    """modelmill.local_server's server, its output in a log file of its own beside `home`."""

    def __init__(self, home: Path, worker: bool, env: dict | None = None, extra_args: tuple[str, ...] = ()):
        port = free_port()
        super().__init__(home, worker=worker, env=env, args=extra_args, port=port,
                         log=home.parent / f"server-{port}.log")

    def client(self, on_response=None) -> OpenAI:
        """on_response(httpx.Response): called with every response (the load clients read the
        server's own time for the request, `openai-processing-ms`, from it)."""
        http = openai.DefaultHttpxClient(event_hooks={"response": [on_response]} if on_response else None)
        return OpenAI(base_url=self.base_url, api_key="load", max_retries=0, timeout=120, http_client=http)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30.0) -> None:
        super().stop(timeout)


def tiny_job(client: OpenAI, file_id: str, n_epochs: int, seed: int = 3):
    return client.fine_tuning.jobs.create(
        training_file=file_id, model="modelmill-tiny", seed=seed, metadata={"eval": "false"},
        method={"type": "supervised", "supervised": {"hyperparameters": {
            "n_epochs": n_epochs, "batch_size": 4, "learning_rate_multiplier": 2.0}}})


# -- 1. concurrent clients ------------------------------------------------------------------------


def load(server: LiveServer, clients: int, per_client: int, seed: int, processes: int = 1,
         cold_chat: bool = False) -> dict:
    """`clients` client threads, spread over `processes` client processes (1: all in this one), each
    sending `per_client` requests of MIX while a job trains. Why several processes: the SDK's parsing
    is Python, and 50 threads in one process queue for one GIL (a files.list of 800 files costs the
    client ~45 ms of CPU, 4x the server's), which real clients, each its own process, don't.
    Unless cold_chat, one chat completion loads the chat model before the clients start: that first
    load (imports, weights: seconds of the GIL) stalls the event loop once in a server's life, and
    inside the window it alone can fill the p99 (50 requests in flight, the slowest 1% is ~77); its
    time is reported as first_chat_ms."""
    admin = server.client()
    train = admin.files.create(file=("load-train.jsonl", short_dataset(32)), purpose="fine-tune")
    trainer = tiny_job(admin, train.id, n_epochs=50)  # keeps the worker training throughout (50 is the cap)
    while admin.fine_tuning.jobs.retrieve(trainer.id).status != "running":
        time.sleep(0.2)
    first_chat_ms = None
    if not cold_chat:
        started = time.perf_counter()
        admin.chat.completions.create(model="modelmill-tiny", max_tokens=1, messages=[{"role": "user", "content": "hi"}])
        first_chat_ms = round((time.perf_counter() - started) * 1000)
    work = Work(server.base_url, train.id, trainer.id, per_client, seed)
    lag_before = loop_lag_buckets(server.base_url)
    if processes <= 1:
        results = client_group(work, list(range(clients)), threading.Barrier(clients))
    else:
        results = _in_processes(work, clients, processes)
    wall = max(r[7] for r in results) - min(r[6] for r in results)  # first request sent to last answered
    lag = loop_lag_window(lag_before, loop_lag_buckets(server.base_url))
    latencies: dict[str, list[float]] = defaultdict(list)
    server_ms: dict[str, list[float]] = defaultdict(list)  # openai-processing-ms of the same requests
    statuses: Counter = Counter()
    errors: list[str] = []
    created_jobs: list[str] = []
    for kind, ms, srv, code, err, job_id, *_ in results:
        latencies[kind].append(ms)
        if srv is not None:
            server_ms[kind].append(srv)
        statuses[code] += 1
        if err:
            errors.append(f"{kind}: {err}")
        if job_id:
            created_jobs.append(job_id)
    trainer_status = admin.fine_tuning.jobs.retrieve(trainer.id).status
    for job_id in [trainer.id, *created_jobs]:  # leave nothing running for the next part
        try:
            admin.fine_tuning.jobs.cancel(job_id)
        except openai.APIStatusError:
            pass
    meta = sorted(ms for kind, values in latencies.items() if kind in METADATA for ms in values)
    split = where_the_time_goes([r for r in results if r[0] in METADATA and r[3] == 200])
    meta_server = sorted(ms for kind, values in server_ms.items() if kind in METADATA for ms in values)
    log = server.log_text()
    return {"clients": clients, "requests": sum(statuses.values()), "wall_s": round(wall, 1),
            "statuses": dict(statuses), "server_errors": sum(n for c, n in statuses.items() if c >= 500 or c == 0),
            "db_locked": log.count("database is locked"), "errors": errors[:10],
            "trainer_status_during": trainer_status,
            "per_kind": {k: {"n": len(v), "p50_ms": pct(v, 50), "p99_ms": pct(v, 99), "max_ms": round(max(v), 1),
                             "server_p50_ms": pct(server_ms[k], 50), "server_p99_ms": pct(server_ms[k], 99)}
                         for k, v in sorted(latencies.items())},
            "metadata_server_p50_ms": pct(meta_server, 50), "metadata_server_p99_ms": pct(meta_server, 99),
            "metadata_p50_ms": pct(meta, 50), "metadata_p99_ms": pct(meta, 99), "metadata_n": len(meta),
            "client_processes": processes, "loop_lag": lag, "split": split, "first_chat_ms": first_chat_ms}


@dataclass(frozen=True)
class Work:
    """What every load client needs (picklable: it goes to the client processes)."""
    base_url: str
    train_id: str
    trainer_id: str
    per_client: int
    seed: int


def client_group(work: Work, indices: list[int], start) -> list[tuple]:
    """Run the clients `indices` on threads of this process (all waiting on `start`, a Barrier for
    every client of every process); their results: (kind, client ms, server ms or None, status,
    error or None, created job id or None, started at, answered at, response headers received at or None,
    handed to httpx to send at or None) per request (perf_counter seconds: CLOCK_MONOTONIC on Linux, one clock for every process)."""
    results: list[tuple] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        mine = one_client(work, i, start)
        with lock:
            results.extend(mine)

    threads = [threading.Thread(target=one, args=(i,)) for i in indices]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def one_client(work: Work, i: int, start) -> list[tuple]:
    rng = random.Random(work.seed * 1000 + i)
    # (server ms, when the headers arrived): httpx calls response hooks once the status line and
    # headers are in, before it reads the body and before the SDK parses it into objects. sent: when
    # the SDK had built the request and httpx was about to send it (its request hook).
    seen: list[tuple[float, float]] = []
    sent: list[float] = []
    http = openai.DefaultHttpxClient(event_hooks={
        "request": [lambda r: sent.append(time.perf_counter())],
        "response": [lambda r: seen.append((float(r.headers.get("openai-processing-ms", "nan")), time.perf_counter()))]})
    client = OpenAI(base_url=work.base_url, api_key="load", max_retries=0, timeout=120, http_client=http)
    small = short_dataset(10, seed=7)
    kinds = rng.choices(list(MIX), weights=list(MIX.values()), k=work.per_client)
    out = []
    start.wait()
    for kind in kinds:
        seen.clear()
        sent.clear()
        t0 = time.perf_counter()
        code, err, job_id = 200, None, None
        try:
            job_id = _request(client, kind, work, i, small, rng)
        except openai.APIStatusError as e:
            code, err = e.status_code, str(e)[:200]
        except Exception as e:  # noqa: BLE001 - a connection error counts against the server too
            code, err = 0, f"{type(e).__name__}: {e}"[:200]
        t1 = time.perf_counter()
        srv, headers_at = seen[-1] if seen else (None, None)
        out.append((kind, (t1 - t0) * 1000, srv, code, err, job_id, t0, t1, headers_at, sent[-1] if sent else None))
    return out


def _request(client: OpenAI, kind: str, work: Work, i: int, small: bytes, rng: random.Random) -> str | None:
    """Send one request of `kind`; the id of the job it created, if any."""
    if kind == "list_files":
        client.files.list()
    elif kind == "retrieve_file":
        client.files.retrieve(work.train_id)
    elif kind == "list_jobs":
        client.fine_tuning.jobs.list(limit=20)
    elif kind == "retrieve_job":
        client.fine_tuning.jobs.retrieve(work.trainer_id)
    elif kind == "events":
        client.fine_tuning.jobs.list_events(work.trainer_id, limit=50)
    elif kind == "checkpoints":
        client.fine_tuning.jobs.checkpoints.list(work.trainer_id)
    elif kind == "list_models":
        client.models.list()
    elif kind == "upload":
        client.files.create(file=(f"c{i}.jsonl", small), purpose="fine-tune")
    elif kind == "create_job":
        return tiny_job(client, work.train_id, n_epochs=1).id
    elif kind == "chat":
        client.chat.completions.create(model="modelmill-tiny", max_tokens=8, temperature=0,
                                       messages=[{"role": "user", "content": f"hello {rng.random()}"}])
    return None


def _in_processes(work: Work, clients: int, processes: int) -> list[tuple]:
    """client_group in `processes` spawned processes, the clients dealt round-robin, all released at once."""
    ctx = multiprocessing.get_context("spawn")
    start, queue = ctx.Barrier(clients), ctx.Queue()
    groups = [list(range(clients))[k::processes] for k in range(processes)]
    procs = [ctx.Process(target=_process_main, args=(work, g, start, queue)) for g in groups if g]
    for p in procs:
        p.start()
    results = []
    for _ in procs:
        results.extend(queue.get())
    for p in procs:
        p.join()
    return results


def _process_main(work: Work, indices: list[int], start, queue) -> None:
    queue.put(client_group(work, indices, start))


# -- 2. four workers, one queue -------------------------------------------------------------------


def race(home: Path, n_jobs: int, n_workers: int = 4) -> dict:
    server = LiveServer(home, worker=False, env={"MODELMILL_LEASE_SECONDS": "10"})
    try:
        client = server.client()
        train = client.files.create(file=("race.jsonl", short_dataset(16)), purpose="fine-tune")
        jobs = [tiny_job(client, train.id, n_epochs=1, seed=i).id for i in range(n_jobs)]
        workers = [server.start_worker(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(n_workers)]
        t0 = time.monotonic()
        try:
            while any(client.fine_tuning.jobs.retrieve(j).status not in ("succeeded", "failed", "cancelled")
                      for j in jobs):
                if time.monotonic() - t0 > 900:
                    raise TimeoutError("the racing workers did not finish")
                time.sleep(0.5)
        finally:
            for w in workers:
                w.terminate()
            for w in workers:
                w.wait()
        wall = time.monotonic() - t0
        con = sqlite3.connect(home / "modelmill.db")
        rows = con.execute(f"SELECT id, status, reclaims FROM jobs WHERE id IN ({','.join('?' * len(jobs))})",
                           jobs).fetchall()
        steps_twice = 0
        for job_id in jobs:
            steps = [json.loads(d)["step"] for (d,) in con.execute(
                "SELECT data FROM events WHERE job_id = ? AND type = 'metrics'", (job_id,))]
            steps_twice += len(steps) - len(set(steps))
        claim_msgs = {job_id: con.execute("SELECT COUNT(*) FROM events WHERE job_id = ? AND message LIKE ?",
                                          (job_id, "Fine-tuning job started%")).fetchone()[0] for job_id in jobs}
        integrity = con.execute("PRAGMA integrity_check").fetchone()[0]
        con.close()
        return {"jobs": n_jobs, "workers": n_workers, "wall_s": round(wall, 1),
                "succeeded": sum(1 for r in rows if r[1] == "succeeded"),
                "reclaimed": sum(1 for r in rows if r[2]), "steps_twice": steps_twice,
                "claimed_once": sum(1 for n in claim_msgs.values() if n == 1), "integrity": integrity}
    finally:
        server.stop()


def report(ld: dict, rc: dict, args) -> str:
    met = ld["server_errors"] == 0 and ld["db_locked"] == 0 and ld["metadata_p99_ms"] < P99_TARGET_MS
    procs = f" --client-processes {args.client_processes}" \
        + (" --cold-chat" if args.cold_chat else "")
    lines = [f"Measured {time.strftime('%Y-%m-%d')} on {platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} CPUs, by `python -m tools.reliability.load_suite --clients {args.clients} "
             f"--requests {args.requests} --jobs {args.jobs}{procs}` (`make reliability`). Clients, server and worker "
             f"share the machine; the clients are threads of {args.client_processes} process(es)"
             f"{server_env_note()}.", "",
             f"**{ld['clients']} concurrent clients x {args.requests} mixed requests** ({ld['requests']} in all, "
             f"{ld['wall_s']} s) while a modelmill-tiny job trained (status during the run: "
             f"{ld['trainer_status_during']}; {chat_note(ld)}). Status codes: {ld['statuses']}. 5xx or dropped connections: "
             f"{ld['server_errors']}. \"database is locked\" in the server log: {ld['db_locked']}. Metadata requests "
             f"(n={ld['metadata_n']}): p50 {ld['metadata_p50_ms']} ms, **p99 {ld['metadata_p99_ms']} ms** "
             f"(target < {P99_TARGET_MS:.0f} ms: {'met' if met else 'missed'}).", "",
             f"The server's own time for the same metadata requests (its `openai-processing-ms` header: from "
             f"the application receiving the request to the start of its response): p50 "
             f"{ld['metadata_server_p50_ms']} ms, p99 {ld['metadata_server_p99_ms']} ms.", "",
             "| kind | n | p50 ms | p99 ms | max ms | server p50 ms | server p99 ms |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for kind, s in ld["per_kind"].items():
        lines.append(f"| {kind} | {s['n']} | {s['p50_ms']} | {s['p99_ms']} | {s['max_ms']} | {s['server_p50_ms']} | "
                     f"{s['server_p99_ms']} |")
    for paragraph in where_lines(ld):
        lines += ["", paragraph]
    if ld["errors"]:
        lines += ["", "Errors seen: " + "; ".join(ld["errors"])]
    lines += ["", f"**{rc['workers']} workers racing for {rc['jobs']} queued jobs** ({rc['wall_s']} s): "
              f"{rc['succeeded']}/{rc['jobs']} succeeded, claimed exactly once {rc['claimed_once']}/{rc['jobs']}, "
              f"reclaimed {rc['reclaimed']}, steps recorded twice {rc['steps_twice']}, integrity_check "
              f"{rc['integrity']}."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--jobs", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    # 10 by default: 50 real clients are 50 processes (or hosts), not 50 threads behind one GIL. With all
    # 50 as threads of one process (--client-processes 1) the slowest 1% of metadata requests spent 487 of
    # their 774 ms in the client after the response headers (RELIABILITY.md, "Load"): the load generator
    # measured itself. 10 processes of 5 threads keep that under 30 ms on 2 cores.
    ap.add_argument("--client-processes", type=int, default=10,
                    help="spread the clients over this many processes (1: threads of this one)")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--cold-chat", action="store_true",
                    help="no chat before the clients start: the chat model's first load falls inside the window")
    ap.add_argument("--worker-process", action="store_true",
                    help="serve --worker-process: the training worker in a child process, not an API thread")
    args = ap.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="mm-load-"))
    (root / "a").mkdir()
    (root / "b").mkdir()
    server = LiveServer(root / "a" / "home", worker=True,
                        extra_args=("--worker-process",) if args.worker_process else ())
    try:
        ld = load(server, args.clients, args.requests, args.seed, processes=args.client_processes,
                  cold_chat=args.cold_chat)
    finally:
        server.stop()
    ld["loop_stalls"] = stall_places(server.log_text())  # logged at the server's shutdown
    print(json.dumps(ld), flush=True)
    rc = race(root / "b" / "home", args.jobs)
    print(json.dumps(rc), flush=True)
    text = report(ld, rc, args)
    print(text)
    if not args.no_write:
        write_section("load", "Load", text, path=RELIABILITY)
    ok = (ld["server_errors"] == 0 and ld["db_locked"] == 0 and rc["claimed_once"] == rc["succeeded"] == rc["jobs"]
          and rc["steps_twice"] == 0)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
