"""The worker's ml.report.Reporter: a training run's progress becomes store rows.

Every write goes through the fine-tune task's JobQueue (ctx.queue, store/job_queue.py), fenced by
its lease, so a run that lost its lease (another worker reclaimed the job, or the API took it over)
raises FencedOutError on its next write and stops; should_stop() also answers "cancel" as soon as
the lease is known lost, and "pause" when the worker shuts down (ctx.stop_event).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from modelmill import errors
from modelmill.service.core import metrics as service_metrics
from modelmill.service.jobs import trackers
from modelmill.service.models.registry import checkpoint_model_name
from modelmill.service.schemas.common import finite_numbers
from modelmill.service.store import JobRecord
from modelmill.service.core.tasks import TaskContext

log = logging.getLogger(__name__)


class StoreReporter:
    """job: the job's record when the task starts; its integrations become this attempt's trackers
    (service/jobs/trackers.py), fed by on_step, start_trackers and close_trackers."""

    def __init__(self, ctx: TaskContext, ft_name: str, job: JobRecord | None = None):
        self.store = ctx.store
        self.queue = ctx.queue  # a JobQueue
        self.lease = ctx.lease
        self.ft_name = ft_name
        self.shutdown = ctx.stop_event
        self.clock = ctx.queue.clock
        self.lost = threading.Event()  # set by the heartbeat or a refused write
        self.stop_reason: str | None = None  # why should_stop() last said stop: "cancel" | "pause" | "shutdown"
        self._first_step: tuple[int, float] | None = None  # (step, time) of this attempt's first step
        self._last_step_at: float | None = None  # monotonic time of the previous on_step (the step-time metric)
        self.method = job.method_type if job else ""
        self.trackers = trackers.JobTrackers(job.integrations if job else None, ctx.settings,
                                             lambda message: ctx.store.events.add(ctx.lease.id, "warn", message))

    # -- ml.report.Reporter ------------------------------------------------------------

    def on_event(self, level: str, message: str, data: dict | None = None) -> None:
        self._fenced(self.queue.add_event, self.lease, level, message, data=data)

    def on_step(self, step: int, total_steps: int, metrics: dict[str, float]) -> None:
        data = {"step": step, "total_steps": total_steps, **finite_numbers(metrics)}
        shown = ", ".join(f"{k.replace('_mean_token_accuracy', ' accuracy').replace('_', ' ')}={v:.4f}"
                          for k, v in finite_numbers(metrics).items())
        message = f"Step {step}/{total_steps}" + (f": {shown}" if shown else "")
        self._fenced(self.queue.record_step, self.lease, step, total_steps, message, data,
                     self._estimated_finish(step, total_steps))
        now = time.monotonic()
        if self._last_step_at is not None:
            service_metrics.train_step(self.method, now - self._last_step_at)
        self._last_step_at = now
        self.trackers.on_step(step, finite_numbers(metrics))

    def on_checkpoint(self, step: int, path: Path, metrics: dict[str, float]) -> None:
        from modelmill.service.models import adapters

        metrics = {"step": step, **finite_numbers(metrics)}
        adapters.record(self.store, self.lease.id, Path(path))  # what a resume or a load may trust
        self._fenced(self.queue.add_checkpoint, self.lease, step, Path(path), metrics,
                     checkpoint_model_name(self.ft_name, step))

    def should_stop(self) -> str | None:
        if self.lost.is_set():
            self.stop_reason = "cancel"
            return "cancel"
        try:
            action = self.queue.requested_action(self.lease)
        except errors.FencedOutError:
            self.lost.set()
            self.stop_reason = "cancel"
            return "cancel"
        if action in ("cancel", "pause"):
            self.stop_reason = action
            return action
        if self.shutdown.is_set():
            # The worker is stopping: checkpoint now (a pause) so the next worker resumes here.
            self.stop_reason = "shutdown"
            return "pause"
        return None

    # -- trackers (the job's integrations) ------------------------------------------------

    def start_trackers(self, job: JobRecord) -> None:
        """Open the job's tracker runs with its resolved hyperparameters (the worker calls this as
        training starts)."""
        self.trackers.start(trackers.RunInfo(
            job_id=job.id, model=job.model, base_model=job.base_model, method=job.method_type,
            hyperparameters=dict(job.hyperparameters or {}), training_file=job.training_file,
            validation_file=job.validation_file, seed=job.seed, suffix=job.suffix, fine_tuned_model=job.ft_name))

    def close_trackers(self) -> None:
        """Finish the tracker runs with the job's state as this attempt leaves it (the worker calls this
        once the attempt has ended, whatever the outcome). Never raises."""
        if not self.trackers.running:
            return
        try:
            job = self.store.jobs.get(self.lease.id)
            error = (job.error or {}).get("message") if isinstance(job.error, dict) else None
            self.trackers.close(trackers.Outcome(job.status, job.fine_tuned_model, job.trained_tokens, error))
        except Exception:  # noqa: BLE001 - trackers never fail or hang the worker
            log.exception("closing the trackers of job %s failed", self.lease.id)

    # -- helpers -----------------------------------------------------------------------

    def _fenced(self, write, *args, **kwargs) -> None:
        try:
            write(*args, **kwargs)
        except errors.FencedOutError:
            self.lost.set()
            raise

    def _estimated_finish(self, step: int, total_steps: int) -> float | None:
        """Now plus the remaining steps at this attempt's average step time."""
        now = self.clock()
        if self._first_step is None:
            self._first_step = (step, now)
            return None
        first_step, first_time = self._first_step
        done = step - first_step
        if done <= 0:
            return None
        return now + (now - first_time) / done * max(total_steps - step, 0)
