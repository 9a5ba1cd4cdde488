"""Experiment trackers for a job's `integrations`: W&B (OpenAI's "wandb") and MLflow (a ModelMill extension).

The worker's StoreReporter (service/jobs/reporter.py) hands them what it writes to the store: the resolved
hyperparameters when training starts, each step's metrics, and the outcome with the fine-tuned
model's name. Only rank 0's reports reach the StoreReporter (ml/distributed.py forwards them), so a
job over several ranks makes one run. docs/operations.md ("Integrations") is the user's view.

A tracker never fails the job or slows it down:
- its calls run on one background thread per job, so a slow or unreachable tracker server never
  holds up a training step;
- its first error (not installed, bad project or entity, server down) switches it off for the rest
  of the attempt and adds one warn event to the job naming it; the job goes on.

A run is keyed by the job id, so a job that pauses and resumes, or whose worker dies, continues the
same W&B run (resume="allow") or MLflow run (found by its modelmill.job_id tag).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable, Protocol

from modelmill.settings import Settings

log = logging.getLogger(__name__)

# Seconds close() waits for a job's trackers to send what is queued and finish their runs.
CLOSE_TIMEOUT_S = 60.0
# MLflow run status for each way an attempt ends; paused / re-queued jobs come back to the same run.
MLFLOW_STATUS = {"succeeded": "FINISHED", "failed": "FAILED", "cancelled": "KILLED"}


@dataclass(frozen=True)
class RunInfo:
    """What a tracker records about the job when training starts."""

    job_id: str
    model: str  # as requested (a base model or an ft: model to continue)
    base_model: str
    method: str
    hyperparameters: dict  # resolved
    training_file: str
    validation_file: str | None
    seed: int
    suffix: str | None
    fine_tuned_model: str  # the name the model gets if the job succeeds


@dataclass(frozen=True)
class Outcome:
    """How the attempt ended: the job's status then (a paused or re-queued job is not over)."""

    status: str
    fine_tuned_model: str | None
    trained_tokens: int | None
    error: str | None


class Tracker(Protocol):
    def start(self, info: RunInfo) -> None: ...
    def log_metrics(self, step: int, metrics: dict[str, float]) -> None: ...
    def finish(self, outcome: Outcome) -> None: ...


class WandbTracker:
    """A W&B run through the `wandb` library. Its mode (online, offline) and key come from wandb's own
    environment (WANDB_API_KEY, WANDB_MODE, WANDB_BASE_URL); run files go to WANDB_DIR, else
    MODELMILL_HOME/trackers."""

    def __init__(self, spec: dict, settings: Settings):
        self.spec, self.settings, self.run = spec, settings, None

    def start(self, info: RunInfo) -> None:
        import wandb

        # Process-wide and silent: without a key, wandb otherwise asks for one on the server's terminal
        # (when it has one) and waits for an answer; silent, it raises UsageError, which becomes the warn event.
        wandb.setup(settings=wandb.Settings(silent=True))
        # WANDB_DIR is wandb's own variable (not a ModelMill setting): an operator's choice is honoured.
        directory = os.environ.get("WANDB_DIR") or str(self.settings.home / "trackers")
        os.makedirs(directory, exist_ok=True)
        tags = [*(self.spec.get("tags") or []), "modelmill/finetune", f"modelmill/{info.base_model}"[:64],
                f"modelmill/{info.job_id}"[:64]]
        self.run = wandb.init(
            project=self.spec["project"], entity=self.spec.get("entity"), name=self.spec.get("name") or info.job_id,
            id=info.job_id, resume="allow", tags=tags, dir=directory, reinit="create_new", job_type="fine-tune",
            config=_config(info),
            # A server process: wandb must not capture its console, sample its system stats, record its
            # pip freeze or git state, or print to its terminal.
            settings=wandb.Settings(console="off", x_disable_stats=True, x_save_requirements=False,
                                    disable_git=True, save_code=False, silent=True))

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(dict(metrics), step=step)

    def finish(self, outcome: Outcome) -> None:
        self.run.summary.update({"status": outcome.status, "fine_tuned_model": outcome.fine_tuned_model,
                                 "trained_tokens": outcome.trained_tokens})
        if outcome.fine_tuned_model:
            self.run.config.update({"fine_tuned_model": outcome.fine_tuned_model}, allow_val_change=True)
        # Offline, wandb-core (its own process) may write the run file's records a moment after this returns.
        self.run.finish(exit_code=1 if outcome.status == "failed" else 0)


class MlflowTracker:
    """An MLflow run in the experiment the integration names, at the server's MODELMILL_MLFLOW_TRACKING_URI,
    through MlflowClient (explicit run ids: no process-global active run shared between jobs)."""

    def __init__(self, spec: dict, settings: Settings):
        self.spec, self.settings = spec, settings
        self.client, self.run_id = None, None

    def start(self, info: RunInfo) -> None:
        from mlflow import MlflowClient
        from mlflow.entities import Param

        self.client = MlflowClient(tracking_uri=self.settings.mlflow_tracking_uri)
        name = self.spec.get("experiment_name") or "modelmill"
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
        # Job ids are letters, digits and '-' (service/store/ids.py), safe inside the filter's quotes.
        found = self.client.search_runs([experiment_id], f"tags.`modelmill.job_id` = '{info.job_id}'", max_results=1)
        if found:  # a resumed job: same run, params already logged (MLflow params can not change)
            self.run_id = found[0].info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
            return
        tags = {**(self.spec.get("tags") or {}), "modelmill.job_id": info.job_id,
                "modelmill.base_model": info.base_model, "modelmill.method": info.method}
        run = self.client.create_run(experiment_id, run_name=self.spec.get("run_name") or info.job_id, tags=tags)
        self.run_id = run.info.run_id
        params = [Param(k, str(v)[:6000]) for k, v in _flat(_config(info)).items() if v is not None]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now_ms = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now_ms, step) for k, v in metrics.items()])

    def finish(self, outcome: Outcome) -> None:
        self.client.set_tag(self.run_id, "modelmill.status", outcome.status)
        if outcome.fine_tuned_model:
            self.client.set_tag(self.run_id, "fine_tuned_model", outcome.fine_tuned_model)
        if outcome.trained_tokens is not None:
            self.client.log_metric(self.run_id, "trained_tokens", float(outcome.trained_tokens))
        self.client.set_terminated(self.run_id, MLFLOW_STATUS.get(outcome.status, "SCHEDULED"))


# type -> tracker class: the one place a new tracker registers (schemas/jobs.py's Integration union
# names the request shape of each).
TRACKERS: dict[str, Callable[[dict, Settings], Tracker]] = {"wandb": WandbTracker, "mlflow": MlflowTracker}
TITLES = {"wandb": "W&B", "mlflow": "MLflow"}


def _config(info: RunInfo) -> dict:
    return {"job_id": info.job_id, "model": info.model, "base_model": info.base_model, "method": info.method,
            "hyperparameters": dict(info.hyperparameters), "training_file": info.training_file,
            "validation_file": info.validation_file, "seed": info.seed, "suffix": info.suffix,
            "fine_tuned_model": info.fine_tuned_model}


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


class JobTrackers:
    """One job attempt's trackers, fed from the training thread and run on their own thread.

    warn(message) records a warn event on the job (it is called from the trackers' thread)."""

    def __init__(self, integrations: list | None, settings: Settings, warn: Callable[[str], None]):
        self.warn = warn
        self.active: list[tuple[str, Tracker]] = []
        for i, spec in enumerate(integrations or []):
            kind = spec.get("type") if isinstance(spec, dict) else None
            make = TRACKERS.get(kind)
            if make is None:  # stored before create refused unknown types: say so rather than ignore it
                warn(f"integrations[{i}]: unknown integration type {kind!r}; it was ignored")
                continue
            self.active.append((kind, make(spec.get(kind) or {}, settings)))
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        """Whether start() opened runs that close() must finish."""
        return self._thread is not None

    def start(self, info: RunInfo) -> None:
        if not self.active or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name=f"trackers-{info.job_id}", daemon=True)
        self._thread.start()
        self._queue.put(("start", info))

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        if self._thread is not None and metrics:
            self._queue.put(("log_metrics", step, dict(metrics)))

    def close(self, outcome: Outcome) -> None:
        """Finish the runs and wait (at most CLOSE_TIMEOUT_S) for the thread to send everything."""
        if self._thread is None:
            return
        self._queue.put(("finish", outcome))
        self._queue.put(None)
        self._thread.join(CLOSE_TIMEOUT_S)
        if self._thread.is_alive():
            names = ", ".join(TITLES[kind] for kind, _ in self.active)
            self.warn(f"Integrations ({names}) were still sending after {CLOSE_TIMEOUT_S:.0f} s when the job ended; "
                      "what they had not sent is lost")
        self._thread = None

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            method, *args = item
            for entry in list(self.active):
                kind, tracker = entry
                try:
                    getattr(tracker, method)(*args)
                except Exception as e:  # noqa: BLE001 - a tracker's failure is the job's warning, never its error
                    log.warning("%s integration failed in %s", kind, method, exc_info=True)
                    self.active.remove(entry)
                    hint = " (install it: pip install 'modelmill[trackers]')" if isinstance(e, ImportError) else ""
                    self._warn(f"The {TITLES[kind]} integration failed and is off for the rest of this run "
                               f"({method}): {type(e).__name__}: {str(e)[:500]}{hint}")

    def _warn(self, message: str) -> None:
        try:
            self.warn(message)
        except Exception:  # noqa: BLE001 - the store refused the event: the log has it
            log.exception("could not record the integration warning %r", message)
