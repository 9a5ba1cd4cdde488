"""Prometheus metrics: the named metric objects the service records into, and GET /metrics' body.

Two kinds (docs/operations.md, "Prometheus metrics", lists each one):
- Read from the store at scrape time by StoreCollector: jobs by status and method, trained tokens,
  the depth and oldest age of each lease queue. They count every worker's work, on any machine,
  and survive restarts; nothing is kept in process memory.
- Recorded by this process as work happens (prometheus_client's default registry): chat latency
  and tokens, sampler batch sizes, grader calls and errors, training step time, webhook deliveries.
  A `modelmill worker` in another process records its own; with PROMETHEUS_MULTIPROC_DIR set for
  every process of a machine, /metrics adds them all up (prometheus_client's multiprocess mode).

Recording helpers below never raise into the caller's work.
"""

from __future__ import annotations

import logging
import os

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from modelmill.ml import observers

log = logging.getLogger(__name__)

# -- recorded in process -----------------------------------------------------------------------

CHAT_SECONDS = Histogram(
    "modelmill_chat_request_seconds", "Chat completion time, from generation start to the last token",
    ["stream"], buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))
CHAT_TOKENS = Counter("modelmill_chat_tokens", "Tokens of chat completions, by kind (prompt, completion)", ["kind"])
SAMPLER_BATCH_REQUESTS = Histogram(
    "modelmill_sampler_batch_requests", "Requests decoded together in one batch of the local sampler",
    buckets=(1, 2, 4, 8, 16, 32, 64))
SAMPLER_BATCH_ROWS = Histogram(
    "modelmill_sampler_batch_rows", "Sequences (prompts x choices) decoded together in one batch of the local sampler",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
GRADER_SAMPLES = Counter("modelmill_grader_samples", "Samples graded (graders/run, eval runs, RFT rewards)", ["type"])
GRADER_ERRORS = Counter("modelmill_grader_errors", "Graded samples whose result carries an error", ["type"])
GRADER_SECONDS = Histogram("modelmill_grader_call_seconds", "Wall time of one grading call (one or more samples)",
                           ["type"], buckets=(0.001, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 120))
TRAIN_STEP_SECONDS = Histogram(
    "modelmill_train_step_seconds", "Seconds between a job's consecutive optimizer steps on this worker",
    ["method"], buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))
# Fine buckets around the API's latency budget (metadata p99 < 500 ms): the load suite reads p99 from them.
EVENT_LOOP_LAG = Histogram(
    "modelmill_event_loop_lag_seconds",
    "How late the API's event loop woke from a 10 ms sleep (api/loop_lag.py): the wait every request's "
    "accept, HTTP parsing and async handling had at that moment", buckets=(
        0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10))
WEBHOOK_DELIVERIES = Counter(
    "modelmill_webhook_delivery_attempts", "Webhook delivery attempts, by outcome (delivered, retry, failed)",
    ["outcome"])


def chat_done(stream: bool, seconds: float, prompt_tokens: int, completion_tokens: int) -> None:
    """One chat completion (or finished stream) with its usage."""
    try:
        CHAT_SECONDS.labels(stream=str(bool(stream)).lower()).observe(seconds)
        CHAT_TOKENS.labels(kind="prompt").inc(max(0, int(prompt_tokens)))
        CHAT_TOKENS.labels(kind="completion").inc(max(0, int(completion_tokens)))
    except Exception:  # noqa: BLE001 - metrics never break a request
        log.exception("recording chat metrics failed")


def train_step(method: str, seconds: float) -> None:
    try:
        TRAIN_STEP_SECONDS.labels(method=method or "unknown").observe(seconds)
    except Exception:  # noqa: BLE001
        log.exception("recording the step time failed")


def loop_lag(seconds: float) -> None:
    try:
        EVENT_LOOP_LAG.observe(max(0.0, seconds))
    except Exception:  # noqa: BLE001
        log.exception("recording the event loop lag failed")


def webhook_delivery(outcome: str) -> None:
    """One delivery attempt's outcome: "delivered" (2xx), "retry" (will be tried again), "failed" (gave up)."""
    try:
        WEBHOOK_DELIVERIES.labels(outcome=outcome).inc()
    except Exception:  # noqa: BLE001
        log.exception("recording a webhook delivery failed")


def _batch(requests: int, rows: int) -> None:
    SAMPLER_BATCH_REQUESTS.observe(requests)
    SAMPLER_BATCH_ROWS.observe(rows)


def _graded(grader_type: str, samples: int, errors: int, seconds: float) -> None:
    GRADER_SAMPLES.labels(type=grader_type).inc(samples)
    if errors:
        GRADER_ERRORS.labels(type=grader_type).inc(errors)
    GRADER_SECONDS.labels(type=grader_type).observe(seconds)


# Registered once, when this module is first imported (by the API, the job reporter or the chat path).
if _batch not in observers.BATCH:
    observers.BATCH.append(_batch)
if _graded not in observers.GRADE:
    observers.GRADE.append(_graded)


# -- read from the store at scrape time --------------------------------------------------------------


def _lease_tables() -> dict[str, object]:
    """The lease queues whose depth is reported, by label. Batches and webhook deliveries join when
    their tables exist in this build (store/batches.py, store/webhook_queue.py)."""
    from modelmill.service.store.job_queue import JOBS
    from modelmill.service.store.run_queue import EVAL_RUNS

    tables = {"fine_tuning_jobs": JOBS, "eval_runs": EVAL_RUNS}
    for label, module, name in (("batches", "modelmill.service.store.batches", "BATCHES"),
                                ("webhook_deliveries", "modelmill.service.store.webhook_queue", "WEBHOOK_DELIVERIES")):
        try:
            tables[label] = getattr(__import__(module, fromlist=[name]), name)
        except (ImportError, AttributeError):
            pass
    return tables


class StoreCollector:
    """A prometheus_client custom collector over the store: each scrape runs a few GROUP BY reads."""

    def __init__(self, store):
        self.store = store

    def describe(self):
        return []  # no fixed description: keeps registering cheap (no query at register time)

    def collect(self):
        from modelmill.service.store import stats
        from modelmill.service.store.records import ALL_STATUSES

        db = self.store.db
        jobs = GaugeMetricFamily("modelmill_jobs", "Fine-tuning jobs by status and method (all projects)",
                                 labels=["status", "method"])
        counts = {(status, method): n for status, method, n in stats.jobs_by_status_and_method(db)}
        methods = sorted({m for _, m in counts} | {"supervised"})
        for method in methods:  # every status shows, zero included, so a rate or alert never sees a gap
            for status in ALL_STATUSES:
                jobs.add_metric([status, method], counts.get((status, method), 0))
        yield jobs
        tokens = CounterMetricFamily("modelmill_trained_tokens", "Tokens trained by jobs that ended (all projects)",
                                     labels=["method"])
        for method, n in stats.trained_tokens_by_method(db):
            tokens.add_metric([method], n)
        yield tokens
        depth = GaugeMetricFamily("modelmill_queue_depth", "Rows waiting for a worker (no live lease), per queue",
                                  labels=["queue"])
        age = GaugeMetricFamily("modelmill_queue_oldest_age_seconds",
                                "Seconds since the oldest waiting row of a queue last changed (0: none waits)",
                                labels=["queue"])
        for label, table in _lease_tables().items():
            q = stats.queue(db, table)
            depth.add_metric([label], q.waiting)
            age.add_metric([label], q.oldest_age_s)
        yield depth
        yield age


def render(store) -> tuple[bytes, str]:
    """GET /metrics' body and content type: this process's metrics (or, in multiprocess mode, every
    process's on this machine) followed by the store's."""
    # prometheus_client's own variable (set by metrics_dir.py or the operator), not a ModelMill setting.
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        local = CollectorRegistry()
        multiprocess.MultiProcessCollector(local)
    else:
        local = REGISTRY
    from_store = CollectorRegistry(auto_describe=False)
    from_store.register(StoreCollector(store))
    return generate_latest(local) + generate_latest(from_store), CONTENT_TYPE_LATEST
