"""Wake-up latency of an idle worker: from a job's creation to the worker marking it running, on
Postgres (LISTEN/NOTIFY) against SQLite (data_version read every 20 ms) in the same run.

    python bench/bench_pg_wakeup.py [--jobs 50] [--database-url postgresql://...] [--json out.json]

Without --database-url a throwaway cluster is started (tools/pg_cluster.py; Debian's postgresql).
Per dialect, a worker runs in its own process: the real Worker (service/worker/loop.py: its run loop,
_idle, the store's wait_for_change), with poll_seconds=30 so only a change notice can wake it in
time, and with run_once cut down to claim -> mark running (started_at) -> finish, so what is timed
is the queue, not training. The parent creates one job at a time through the store (as the API
does), then waits for it to finish and for the worker to be idle again (a random 50-150 ms).
Latency = the job's started_at (the worker's time.time()) - time.time() just before the create
(same machine, same clock). Target: under 1 s on Postgres.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tools.pg_cluster, when run as a script

TARGET_S = 1.0
POLL_SECONDS = 30.0  # the worker's periodic claim: far above any latency measured, so it never helps


def child(home: str, database_url: str | None) -> None:
    """The worker process: the real Worker with a run_once that only claims and marks running."""
    from modelmill.service.worker import loop as worker_module
    from modelmill.settings import Settings

    class ClaimOnlyWorker(worker_module.Worker):
        def run_once(self) -> str | None:
            lease = self.queue.claim(self.id)
            if lease is None:
                return None
            self.queue.update(lease, status="running", started_at=time.time())
            self.queue.finish(lease, "succeeded")
            return lease.id

    worker_module.warm_up = lambda: None  # the training stack is not used here: don't spend a minute importing it
    settings = Settings(home=Path(home), poll_seconds=POLL_SECONDS, database_url=database_url).ensure_dirs()
    print("ready", flush=True)
    ClaimOnlyWorker(settings).run()


def new_job(i: int):
    from modelmill.service.store import NewJob

    return NewJob(id=f"ftjob-bench{i:04d}", model="modelmill-tiny", base_model="modelmill-tiny", init_adapter=None,
                  training_file="file-x", validation_file=None, suffix=None, seed=0, metadata=None,
                  integrations=None, method_type="supervised", hyperparameters={},
                  ft_name=f"ft:modelmill-tiny:bench::{i}")


def measure(dialect: str, n_jobs: int, database_url: str | None) -> dict:
    from modelmill.service.store import open_store
    from modelmill.settings import Settings

    home = tempfile.mkdtemp(prefix=f"modelmill-wakeup-{dialect}-")
    settings = Settings(home=Path(home), database_url=database_url).ensure_dirs()
    store = open_store(settings)
    proc = subprocess.Popen([sys.executable, __file__, "--child", "--home", home]
                            + (["--database-url", database_url] if database_url else []),
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        latencies = []
        for i in range(n_jobs + 1):  # job 0 warms up (the worker's first claim, its listener)
            time.sleep(random.uniform(0.05, 0.15))  # the worker is idle again, waiting
            t0 = time.time()
            store.jobs.create(new_job(i))
            deadline = time.monotonic() + 60
            while (job := store.jobs.get(f"ftjob-bench{i:04d}")).status != "succeeded":
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"{dialect}: job {i} was not run (status {job.status})")
                time.sleep(0.002)
            if i:
                latencies.append(job.started_at - t0)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        store.close()
        shutil.rmtree(home, ignore_errors=True)
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(round(0.99 * (len(latencies) - 1))))]
    return {"dialect": dialect, "jobs": len(latencies), "median_ms": round(1000 * statistics.median(latencies), 1),
            "p99_ms": round(1000 * p99, 1), "max_ms": round(1000 * latencies[-1], 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=50)
    ap.add_argument("--database-url", help="a Postgres to use (default: start a throwaway cluster)")
    ap.add_argument("--json", help="write the figures here too")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--home", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.home, args.database_url)
        return 0

    cluster = None
    url = args.database_url
    if url is None:
        from tools.pg_cluster import PgCluster

        cluster = PgCluster.start()
        url = cluster.create_database()
    try:
        rows = [measure("sqlite", args.jobs, None), measure("postgres", args.jobs, url)]
    finally:
        if cluster is not None:
            cluster.stop()
    print(f"queued -> running with an idle worker (poll_seconds={POLL_SECONDS:g}), {args.jobs} jobs each:")
    for r in rows:
        print(f"  {r['dialect']:9s} median {r['median_ms']:7.1f} ms   p99 {r['p99_ms']:7.1f} ms   max {r['max_ms']:7.1f} ms")
    pg = rows[1]
    ok = pg["p99_ms"] < 1000 * TARGET_S
    print(f"target: Postgres under {TARGET_S:g} s: {'met' if ok else 'MISSED'} (p99 {pg['p99_ms']} ms);"
          f" ratio SQLite/Postgres median {rows[0]['median_ms'] / max(pg['median_ms'], 0.1):.2f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"target_s": TARGET_S, "results": rows}, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
