"""Run one claimed batch: read its input file -> answer each line through the batched sampler ->
record the answers as they come -> finalize (service/batches/requests.finalize writes the output files).

The worker calls run_next_batch when no training job or eval run is runnable (service/worker/loop.py). The
batch is held under its own lease (store/batches.py, a BatchQueue) with a heartbeat thread, like an
eval run. Lines are answered by up to CONCURRENCY threads at once, each calling the endpoint's own
code (service/batches/lines.answer -> chat.complete); their generate() calls reach the process's one
Sampler together, and its batcher (ml/batching.py) decodes them in shared batches, so a batch runs
at the sampler's batched throughput, not one request at a time.

Answers are recorded every RECORD_EVERY_S (one fenced transaction: the result rows, the request
counts, and any stored completion or response a line asked for), so request_counts stay current
and a worker that dies loses at most those seconds of work: the next claim skips every line already
recorded, and a line is never answered twice. Between recordings the task checks for cancel (the
lines in flight are stopped at their next decoding step and left out), the worker shutting down
(the batch is handed back), the lease and the completion window (an expired batch ends `expired`).

A batch is low-priority work: the worker claims one only when no fine-tuning job or eval run is
waiting, and hands a running batch back (the lines in flight are left for later) as soon as one is,
so a 50,000-line batch never holds a training job up for more than a moment.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Iterator

from modelmill import errors
from modelmill.faults import crash_point
from modelmill.settings import Settings
from modelmill.service.batches import lines as batch_lines
from modelmill.service.batches import requests as batches
from modelmill.service.core import tasks
from modelmill.service.models.sampler import shared_sampler
from modelmill.service.store import Store
from modelmill.service.store.batches import BatchRecord, LineResult
from modelmill.service.store.job_queue import JOBS
from modelmill.service.store.run_queue import EVAL_RUNS
from modelmill.service.core.tasks import TaskContext

log = logging.getLogger(__name__)

CONCURRENCY = 32  # lines in flight at once: ml/batching.py's DEFAULT_MAX_ROWS, so they can fill one batch
RECORD_EVERY_S = 0.5  # answered lines are recorded (and stop requests checked) this often
MAX_RECLAIMS = 3  # a batch whose worker died this many times in a row without progress is failed
FIRST = (JOBS, EVAL_RUNS)  # work a batch makes way for: its worker hands it back when one is waiting


def run_next_batch(settings: Settings, store: Store, owner: str, stop_event: threading.Event) -> str | None:
    """Claim and run the oldest runnable batch; its id, or None if there was none."""
    return tasks.run_next(store.batch_queue(settings.lease_seconds), settings, store, owner, stop_event, execute)


def execute(ctx: TaskContext) -> str:
    """Run the claimed batch (ctx.lease, from a BatchQueue) to its end; the status it ended in,
    "handed back" (the worker is stopping, or a job is waiting), or "lost" (the lease was lost:
    its remaining lines are left to the next claim)."""
    return tasks.run_with_heartbeat(ctx, lambda lost: _Execution(ctx, lost).run())


class _Execution:
    def __init__(self, ctx: TaskContext, lost: threading.Event):
        self.ctx, self.store, self.settings, self.queue, self.lease = (ctx, ctx.store, ctx.settings, ctx.queue,
                                                                        ctx.lease)
        self.lost = lost
        self.cancel = threading.Event()  # set to stop the lines in flight (cancel, shutdown, expiry)

    def run(self) -> str:
        batch = self.store.batches.by_id(self.lease.id)
        if batch.status == "cancelling" or batch.requested_action == "cancel":
            return batches.finalize(self.store, self.queue, self.lease, "cancelled")
        if batch.status == "finalizing":  # its worker died while writing the files
            return batches.finalize(self.store, self.queue, self.lease, "completed")
        if batch.reclaims > MAX_RECLAIMS:
            return batches.fail(self.store, self.queue, self.lease, "worker_lost", f"The batch's worker stopped "
                                f"unexpectedly {batch.reclaims} times in a row (out of memory?); giving up")
        if self.queue.clock() > batch.expires_at:
            return batches.finalize(self.store, self.queue, self.lease, "expired")
        path = self.store.files.blob_path(batch.input_file_id)
        if not path.exists():
            return batches.fail(self.store, self.queue, self.lease, "file_not_found",
                                f"The input file {batch.input_file_id} no longer exists", "input_file_id")
        self.queue.start(self.lease)
        try:
            outcome = self._answer(batch, self._todo(batch))
        except errors.FencedOutError:
            raise
        except Exception as e:  # noqa: BLE001 - a failure outside any one line fails the batch
            if self.lost.is_set():
                raise errors.FencedOutError(str(e)) from e
            log.exception("batch %s failed", batch.id)
            return batches.fail(self.store, self.queue, self.lease, "internal_error", f"{type(e).__name__}: {e}")
        if outcome in ("shutdown", "yield"):
            self.queue.hand_back(self.lease)  # the next claim resumes it
            return "handed back"
        return batches.finalize(self.store, self.queue, self.lease, outcome)

    def _todo(self, batch: BatchRecord) -> Iterator[tuple[batch_lines.Line, object]]:
        """(line, its Prepared or LineError) for every line not answered yet, read lazily."""
        done = self.queue.answered_lines(batch.id)
        preparer = batch_lines.Preparer(self.store, self.settings, batch.endpoint, batch.project_id)
        for number, text in batch_lines.read_lines(self.store.files.blob_path(batch.input_file_id)):
            if number in done:
                continue
            try:
                line = batch_lines.parse(number, text, batch.endpoint)
            except batch_lines.LineError as e:  # checked at create: only a changed file gets here
                yield batch_lines.Line(number, f"line-{number}", {}), e
                continue
            try:
                prepared = preparer.prepare(line)
            except batch_lines.LineError as e:  # e.g. its model was deleted since the batch was created
                prepared = e
            except Exception as e:  # noqa: BLE001 - a bug preparing one line is that line's error, not the batch's
                log.exception("batch %s: preparing line %d failed", batch.id, number)
                prepared = batch_lines.LineError("internal_error", f"The server had an error while processing this "
                                                 f"request: {type(e).__name__}", None, 500)
            yield line, prepared

    def _answer(self, batch: BatchRecord, todo) -> str:
        """Answer every line in `todo`; "completed", or why it stopped early ("cancelled", "expired",
        "shutdown", "yield"). Lines stopped early are not recorded: the next claim (or the error file) has them."""
        sampler = shared_sampler(self.settings)
        inflight: dict[Future, batch_lines.Line] = {}
        pending: list = []  # (LineResult, keep) answered since the last recording
        last_record, todo = time.monotonic(), iter(todo)
        exhausted = False  # every line has been submitted
        with ThreadPoolExecutor(CONCURRENCY, thread_name_prefix=f"batch-{batch.id[-6:]}") as pool:
            def fill() -> None:
                nonlocal exhausted
                for line, prepared in todo:
                    inflight[pool.submit(batch_lines.answer, prepared, line, sampler, self.settings,
                                         self.cancel)] = line
                    if len(inflight) >= CONCURRENCY:
                        return
                exhausted = True

            try:
                fill()
                while inflight:
                    done, _ = wait(list(inflight), timeout=RECORD_EVERY_S, return_when=FIRST_COMPLETED)
                    for future in done:
                        del inflight[future]
                        pending.append(future.result())
                    if time.monotonic() - last_record >= RECORD_EVERY_S or not inflight:
                        stop = self._stop_reason(batch)
                        if stop == "yield" and exhausted and not inflight:
                            stop = None  # nothing left to run: finish rather than make way
                        if stop:
                            self.cancel.set()  # the lines in flight end at their next decoding step
                            self._record(batch, pending)  # answered before the stop: kept
                            return stop
                        self._record(batch, pending)
                        pending, last_record = [], time.monotonic()
                    fill()
                self._record(batch, pending)
            finally:
                self.cancel.set()  # whatever ended the loop, nothing keeps generating for this batch
        return "completed"

    def _record(self, batch: BatchRecord, answered: list[tuple[LineResult, object]]) -> None:
        """Record the answered lines, and what they asked to store, in one fenced transaction."""
        if not answered:
            return
        with self.queue.fenced(self.lease) as c:
            self.queue.record_in(c, self.lease, [r for r, _ in answered])
            for _, keep in answered:
                if keep is not None:  # a stored completion / response: the store's writes join `c` (same thread)
                    keep(self.store, batch.project_id)
            crash_point("batch_record")  # the crash tests' "killed while recording answers" (modelmill/faults.py)
        answered.clear()

    def _stop_reason(self, batch: BatchRecord) -> str | None:
        if self.lost.is_set():
            raise errors.FencedOutError(f"Lost the lease on batch {self.lease.id}")
        if self.queue.requested_action(self.lease) == "cancel":
            return "cancelled"
        if self.ctx.stop_event.is_set():
            return "shutdown"
        if self.queue.work_waiting(FIRST):
            return "yield"
        if self.queue.clock() > batch.expires_at:
            return "expired"
        return None
