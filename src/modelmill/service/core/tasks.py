"""What a background task runs with: a TaskContext, and the Heartbeat that keeps its lease alive.

The worker (service/worker/loop.py) claims a row from a lease queue (store/lease.py) and hands the task a
TaskContext, never itself: the fine-tune task (jobs/runner.FineTuneTask), an eval run
(evals/runner.execute) and a job's before/after evals (jobs/eval_reports.py). Everything a task writes
goes through `ctx.queue`, fenced by `ctx.lease`, so a task that lost its claim can not write.

Tasks that run under their own lease (an eval run, a batch) share their claim and heartbeat setup
here: run_next claims the oldest runnable row and hands it to the task; run_with_heartbeat keeps
the lease alive while the task runs and turns a lost lease into "lost".
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, TypeVar

from modelmill import errors
from modelmill.settings import Settings
from modelmill.service.store import Lease, LeaseQueue, Store

log = logging.getLogger(__name__)

T = TypeVar("T")


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


def run_next(queue: LeaseQueue, settings: Settings, store: Store, owner: str, stop_event: threading.Event,
             execute: Callable[[TaskContext], object]) -> str | None:
    """Claim the oldest runnable row of `queue` for `owner` and run `execute` on it; its id, or None
    if there was none."""
    lease = queue.claim(owner)
    if lease is None:
        return None
    log.info("worker %s claimed %s %s (attempt %d)", owner, queue.table.what, lease.id, lease.attempt)
    execute(TaskContext(store, settings, queue, lease, stop_event))
    return lease.id


def run_with_heartbeat(ctx: TaskContext, body: Callable[[threading.Event], T],
                       lost_on: tuple[type[BaseException], ...] = (errors.FencedOutError,)) -> T | str:
    """Run `body(lost)` while ctx's lease is kept alive (`lost` is set if the heartbeat loses it).
    An error in `lost_on` (the lease was reclaimed, ...) ends it as "lost": the remaining work is
    left to the next claim, which resumes it."""
    lost = threading.Event()
    try:
        with ctx.heartbeat(lost):
            return body(lost)
    except lost_on:
        log.warning("%s: lease lost; its remaining work is left to the next claim", ctx.what)
        return "lost"


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
