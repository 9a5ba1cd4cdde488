"""`modelmill serve --worker-process`: the worker runs as a child process of the API. A job trains to
`succeeded` through it, and the child goes when the API goes, even when the API is SIGKILLed."""

from __future__ import annotations

import os
import signal
import time

import httpx
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from modelmill.local_server import LocalServer

from tools.datasets import short_dataset


def children_of(pid: int) -> list[int]:
    path = f"/proc/{pid}/task/{pid}/children"
    return [int(p) for p in open(path).read().split()] if os.path.exists(path) else []


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_job_succeeds_through_a_worker_process_that_dies_with_the_api(tmp_path):
    server = LocalServer(tmp_path / "home", args=["--worker-process"], log_level="warning")
    proc, base_url = server.proc, server.base_url
    try:
        workers = children_of(proc.pid)
        assert len(workers) == 1
        cmdline = open(f"/proc/{workers[0]}/cmdline").read().split("\0")
        assert cmdline[1:4] == ["-m", "modelmill.cli", "worker"]

        client = OpenAI(base_url=base_url, api_key="test-key", max_retries=0)
        train = client.files.create(file=("t.jsonl", short_dataset(12)), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(training_file=train.id, model="modelmill-tiny", seed=1,
                                             metadata={"eval": "false"},
                                             method={"type": "supervised", "supervised": {"hyperparameters": {
                                                 "n_epochs": 1, "batch_size": 4}}})
        deadline = time.monotonic() + 240
        while (job := client.fine_tuning.jobs.retrieve(job.id)).status not in ("succeeded", "failed", "cancelled"):
            assert time.monotonic() < deadline, job.status
            time.sleep(0.5)
        assert job.status == "succeeded", job.error
        assert job.fine_tuned_model and job.trained_tokens > 0
        # The child's step times reach the API's /metrics (multiprocess mode, service/core/metrics_dir.py):
        # 12 examples in batches of 4 are 3 steps, each timed but the first.
        scraped = httpx.get(base_url.removesuffix("/v1") + "/metrics", timeout=30).text
        [count] = [s.value for f in text_string_to_metric_families(scraped) for s in f.samples
                   if s.name == "modelmill_train_step_seconds_count" and s.labels == {"method": "supervised"}]
        assert count == 2

        os.kill(proc.pid, signal.SIGKILL)  # no clean shutdown: the worker must still go
        proc.wait(timeout=10)
        deadline = time.monotonic() + 60
        while alive(workers[0]):
            assert time.monotonic() < deadline, "the worker outlived the API process"
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            proc.kill()
