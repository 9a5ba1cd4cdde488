"""The worker: claim the next runnable task -> run it -> repeat, until told to stop.

Run it as its own process (`modelmill worker`, which calls run_worker) or as a thread of
`modelmill serve`. Any number of workers may share one MODELMILL_HOME: work is claimed under a
lease (store/lease.py). The Worker only claims and dispatches, in this order: a fine-tuning job
(a JobQueue; it runs as service/jobs/runner.py's FineTuneTask), else an eval run
(service/evals/runner.py), else a batch (service/batches/runner.py). Each gets a TaskContext
(service/core/tasks.py), never the worker. Webhook deliveries go out on threads of their own
(service/webhooks/outbox.py).
A job's first step should come seconds after it is created (bench/bench_first_step.py): the
worker imports the training stack when it starts, not on its first job (warm_up), and an idle
worker claims a new job as soon as the database changes, not at its next poll (Worker._idle).
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import socket
import threading
import time
import uuid

from modelmill.settings import Settings
from modelmill.service.jobs.runner import FineTuneTask
from modelmill.service.store import Store, open_store
from modelmill.service.core.tasks import TaskContext

log = logging.getLogger(__name__)


class Worker:
    def __init__(self, settings: Settings, store: Store | None = None, *, worker_id: str | None = None,
                 stop_event: threading.Event | None = None, clock=None):
        self.settings = settings
        self.store = store or open_store(settings)
        # clock None: the store's (the database's clock on Postgres), so leases agree across machines.
        self.queue = self.store.job_queue(settings.lease_seconds, clock=clock)
        self.id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.stop_event = stop_event or threading.Event()
        self.clock = self.queue.clock

    def run(self) -> None:
        """Process jobs until stop_event is set. Webhook deliveries go out meanwhile, on threads of
        their own (service/webhooks/outbox.py), so a long job never holds an event up."""
        from modelmill.service.webhooks import outbox as webhooks

        senders = webhooks.start_dispatchers(self.settings, self.store, self.id, self.stop_event)
        warm_up(self.settings)
        log.info("worker %s polling %s", self.id,
                 "the Postgres store (MODELMILL_DATABASE_URL)" if self.settings.database_url else self.settings.db_path)
        while not self.stop_event.is_set():
            version = self.queue.data_version()  # before the claim: a job added during it still wakes us
            try:
                did = self.run_once()
            except Exception:  # a bug in one job must not kill the worker
                log.exception("worker %s: unexpected error", self.id)
                did = None
            if did is None:
                self._idle(version)
        for sender in senders:  # each stops within one attempt (its timeout) of stop_event
            sender.join(timeout=5)

    def _idle(self, version: int | None = None) -> None:
        """Wait for work: until poll_seconds pass, stop_event is set, or the database changes
        (Database.wait_for_change): on SQLite another connection's commit moves data_version, read
        every few ms without a lock; on Postgres a trigger NOTIFYs when a job or eval run becomes
        claimable. Either way a new job (the API creating or resuming one, in this process or
        another) is claimed within milliseconds; the full claim still runs every poll_seconds."""
        if version is None:
            version = self.queue.data_version()
        self.queue.db.wait_for_change(version, self.settings.poll_seconds, self.stop_event)

    def run_once(self) -> str | None:
        """Claim and process one job; return its id, or None if nothing was runnable."""
        lease = self.queue.claim(self.id)
        if lease is None:  # no training job: an eval run (service/evals/runner.py), else a batch (batches/runner.py)
            from modelmill.service.batches.runner import run_next_batch
            from modelmill.service.evals.runner import run_next_eval

            return (run_next_eval(self.settings, self.store, self.id, self.stop_event)
                    or run_next_batch(self.settings, self.store, self.id, self.stop_event))
        log.info("worker %s claimed %s (attempt %d)", self.id, lease.id, lease.attempt)
        FineTuneTask(TaskContext(self.store, self.settings, self.queue, lease, self.stop_event)).run()
        return lease.id


# What warm_up imports: the training stack (trl is a lazy module: its SFT trainer is named), under
# the ML import lock (third-party modules only, see modelmill.ml), then ModelMill's own modules.
WARM_MODULES = ("peft", "datasets", "trl.trainer.sft_trainer")
WARM_OWN_MODULES = ("modelmill.ml.models", "modelmill.ml.sft")


def warm_up(settings: Settings | None = None) -> None:
    """Import the training stack when a worker process starts (Worker.run calls this once), not
    when its first job does: torch, transformers, peft, datasets and TRL's SFTTrainer take ~10 s
    to import on a 2-core CPU, which would otherwise sit between the first job's creation and its
    first step. A failed import is only logged: the job that needs the module reports the error.
    settings: the worker's, whose python-grader sandbox bounds are logged (None: the defaults).

    Not done here, on purpose: gc.freeze() after the imports. It makes the full gc.collect() that
    transformers' Trainer.train() runs before step 1 cheap (0.5-0.8 s saved per job on a loaded
    2-core machine), but with the imported objects frozen CPython's full-collection heuristic
    fires far more often during training: a tiny-model job of 48 steps reached its first
    checkpoint in 109-126 s instead of 69-86 s (tests/e2e/test_crash.py's job, same machine).
    """
    from modelmill.ml import import_ml_stack

    started = time.monotonic()
    try:
        import_ml_stack(WARM_MODULES)  # torch, transformers and these, under the lock request threads take too
        for module in WARM_OWN_MODULES:
            importlib.import_module(module)
    except Exception:  # noqa: BLE001 - a broken install shows up as the first job's error instead
        log.exception("worker warm-up: importing the training stack failed")
    try:  # say at start-up how python graders are bounded here (cgroup v2 / v1 / rlimit), not at the first one
        from modelmill.ml.graders import sandbox
        from modelmill.service.graders.requests import sandbox_config

        log.info("python grader sandbox: %s", sandbox.bounds.plan(sandbox_config(settings or Settings())).describe())
    except Exception:  # noqa: BLE001 - a bad MODELMILL_SANDBOX_* shows up as the first grader's error instead
        log.exception("worker warm-up: checking the python grader sandbox's bounds failed")
    log.info("worker warmed up in %.1f s", time.monotonic() - started)


def run_worker(settings: Settings, stop_event: threading.Event | None = None) -> None:
    """Run a worker until stop_event is set (or forever): the body of `modelmill worker`.

    On the main thread, the first SIGTERM/SIGINT stops it gracefully: a running job is
    checkpointed and re-queued for the next worker. A second signal exits at once.
    """
    settings.ensure_dirs()
    from modelmill.ml.graders import resources

    resources.set_cache_home(settings.home)  # graders' WordNet cache under this worker's home
    stop_event = stop_event or threading.Event()
    restore = _stop_on_signals(stop_event)
    worker = Worker(settings, stop_event=stop_event)
    try:
        worker.run()
    finally:
        restore()
        worker.store.close()


def _stop_on_signals(stop_event: threading.Event):
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

    def handler(signum, frame):
        log.warning("stopping the worker; send the signal again to exit now")
        for sig in previous:
            signal.signal(sig, signal.SIG_DFL if sig == signal.SIGTERM else signal.default_int_handler)
        stop_event.set()

    for sig in previous:
        signal.signal(sig, handler)

    def restore():
        for sig, h in previous.items():
            signal.signal(sig, h)
    return restore
