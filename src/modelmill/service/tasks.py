"""What a background task runs with: a TaskContext, and the Heartbeat that keeps its lease alive.

The worker (worker.py) claims a row from a lease queue (store/lease.py) and hands the task a
TaskContext, never itself: the fine-tune task (worker.FineTuneTask), an eval run
(evals/runner.execute) and a job's before/after evals (job_evals.py). Everything a task writes
goes through `ctx.queue`, fenced by `ctx.lease`, so a task that lost its claim can not write.
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

from modelmill import errors
from modelmill.settings import Settings
from modelmill.service.store import Lease, LeaseQueue, Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskContext:
    """One claimed piece of background work and what its task may use."""

    store: Store
    settings: Settings
    queue: LeaseQueue  # the queue `lease` came from (a JobQueue, an EvalRunQueue): the task's writes go here
    lease: Lease  # the claim; every write is fenced by it
    stop_event: threading.Event  # set when the worker shuts down: hand the work back at the next safe point

    @property
    def what(self) -> str:
        """The claimed row, for logs: "job ftjob-...", "eval run evalrun_..."."""
        return f"{self.queue.table.what} {self.lease.id}"

    @contextmanager
    def heartbeat(self, lost: threading.Event) -> Iterator[None]:
        """Keep the lease alive while the block runs (every settings.heartbeat_seconds, on its own
        thread, so a long training step never lets it expire); `lost` is set if it is lost."""
        beat = Heartbeat(lambda: self.queue.heartbeat(self.lease), self.settings.heartbeat_seconds, lost, self.what)
        beat.start()
        try:
            yield
        finally:
            beat.stop()


class Heartbeat(threading.Thread):
    """Calls `renew` (a queue's heartbeat for one lease) every `interval` seconds until stopped.
    A FencedOutError means the lease is gone, so `lost` is set and beating stops; any other error
    (a locked database, ...) is logged and retried at the next beat."""

    def __init__(self, renew: Callable[[], None], interval: float, lost: threading.Event, what: str):
        super().__init__(name=f"heartbeat-{what}", daemon=True)
        self.renew, self.interval, self.lost, self.what = renew, interval, lost, what
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            try:
                self.renew()
            except errors.FencedOutError:
                log.warning("lost the lease on %s", self.what)
                self.lost.set()
                return
            except Exception:  # a locked database etc.: try again next beat
                log.exception("heartbeat for %s failed", self.what)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)
