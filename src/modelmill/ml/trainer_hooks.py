"""The trainer <-> reporter bridge every method shares: metrics, validation, stop requests (cancel,
pause, early stopping) and checkpoint publishing, hooked into a transformers Trainer as callbacks.

sft.py, dpo.py and rft/ each subclass ReporterHooks to say which metrics to send and how to read them
from the trainer's logs; trainer_common.run_trainer runs the trainer with it.
"""

from __future__ import annotations

from pathlib import Path

from modelmill.ml.checkpoints import publish_checkpoint
from modelmill.ml.report import Reporter
from modelmill.ml.run_config import RunConfig


def barrier() -> None:
    """Wait for every rank of a multi-process run (no-op in one process)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def epoch_complete(state) -> bool:
    return state.epoch is not None and abs(state.epoch - round(state.epoch)) < 1e-9


def reporter_callback(hooks_cls: type[ReporterHooks], reporter: Reporter, config: RunConfig, has_valid: bool):
    """A TrainerCallback running `hooks_cls` (transformers is imported lazily, so importing
    this module stays cheap for the API process, which only resolves hyperparameters).

    `config` is the method's own config (hooks_cls reads its method fields, e.g. eval_every_steps).
    """
    from transformers import TrainerCallback

    class ReporterCallback(hooks_cls, TrainerCallback):
        pass

    return ReporterCallback(reporter, config, has_valid)


class ReporterHooks:
    """Metrics, validation, stop requests and checkpoint publishing, hooked into the trainer.

    A method subclasses this and sets METRIC_NAMES (the reporter's metric names, in order),
    train_metrics (a train log -> metrics) and eval_metrics (evaluate()'s result -> metrics).

    Hook order within one optimizer step (transformers Trainer): on_step_end -> on_log (train
    loss) -> save + on_save when asked; at an epoch's end: on_epoch_end -> save + on_save.
    A step's metrics are collected in `pending` and sent as one reporter.on_step when the
    next step begins, a checkpoint is saved, or the epoch ends (after full validation).
    """

    METRIC_NAMES: tuple[str, ...] = ()
    # The validation metric that ranks checkpoints, for early stopping and final_model "best":
    # (name, higher is better). SFT and DPO: the loss over the whole validation file at each epoch end.
    SELECT_BY: tuple[str, bool] = ("full_valid_loss", False)

    def train_metrics(self, logs: dict) -> dict[str, float]:
        """The train_* metrics in one trainer log that has a "loss"."""
        raise NotImplementedError

    def eval_metrics(self, name: str, metrics: dict) -> dict[str, float]:
        """The `name`_* metrics ("valid" or "full_valid") from trainer.evaluate(metric_key_prefix=name)."""
        raise NotImplementedError

    def batch_eval_every(self) -> int:
        """Optimizer steps between evaluations of one validation batch ("valid"); 0 = only the full
        validation set at epoch ends. SFT and DPO: their config's eval_every_steps; a config without
        that field evaluates at epoch ends only (RFT overrides on_step_end with its own eval_interval)."""
        return getattr(self.config, "eval_every_steps", 0)

    def __init__(self, reporter: Reporter, config: RunConfig, has_valid: bool):
        self.reporter, self.config, self.has_valid = reporter, config, has_valid
        self.trainer = None  # set once the trainer exists (it evaluates for us)
        self.stop: str | None = None  # "cancel" | "pause" once the reporter asked
        self.pending: dict[str, float] = {}
        self.pending_step: int | None = None
        self.last_metrics: dict[str, float] = {}

    def on_step_begin(self, args, state, control, **kwargs):
        self._flush(state)

    def on_step_end(self, args, state, control, **kwargs):
        self.stop = self.reporter.should_stop()
        if self.stop in ("cancel", "pause"):
            control.should_training_stop = True
            # A pause checkpoint is written now, unless the epoch just ended (on_epoch_end saves then).
            control.should_save = self.stop == "pause" and not epoch_complete(state)
        every = self.batch_eval_every()
        if self.has_valid and every > 0 and state.global_step % every == 0 and self.stop != "cancel":
            should_log = control.should_log  # evaluate() logs, which clears the flag for this step's train log
            self._add(state, self._evaluate("valid"))
            control.should_log = should_log

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self._add(state, self.train_metrics(logs))

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.stop == "cancel" or not epoch_complete(state):
            return
        if self.has_valid:
            self._add(state, self._evaluate("full_valid"))
            self.stop_early_if_stalled(state, control)
        self._flush(state)
        control.should_save = True

    def on_save(self, args, state, control, **kwargs):
        self._flush(state)
        if self.reporter.should_stop() == "cancel":
            # Cancelled, or (in the service) the lease was lost while this save ran: a worker that no
            # longer owns the job must not publish into the directory the new owner resumes from.
            # The staged save is left in .staging, which the next start deletes.
            self.stop = "cancel"
            return
        barrier()  # every rank has written its part of the staged checkpoint (its RNG state)
        if not state.is_world_process_zero:  # rank 0 alone publishes and reports (ml/distributed.py)
            return
        path = publish_checkpoint(Path(self.config.output_dir), state.global_step, self.config.keep_checkpoints,
                                  protect=self.protected_steps(state))
        self.reporter.on_checkpoint(state.global_step, path, dict(self.last_metrics))

    def on_train_end(self, args, state, control, **kwargs):
        self._flush(state)

    # -- early stopping and the best checkpoint (config.early_stopping_patience, config.final_model)

    def evaluations(self, state) -> list[tuple[int, float]]:
        """(step, value) of each SELECT_BY evaluation so far, oldest first. The trainer's log history is
        saved with every checkpoint, so a resumed run still knows the evaluations before the crash."""
        name = self.SELECT_BY[0]
        found = {}
        for entry in state.log_history:
            value = entry.get(name)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and "step" in entry:
                found[int(entry["step"])] = float(value)  # a step evaluated again after a resume: the newer
        return sorted(found.items())

    def best_evaluation(self, state) -> tuple[int, float] | None:
        """(step, value) of the best evaluation (the earliest on ties), or None before the first."""
        higher = self.SELECT_BY[1]
        best = None
        for step, value in self.evaluations(state):
            if best is None or (value > best[1] if higher else value < best[1]):
                best = (step, value)
        return best

    def protected_steps(self, state) -> tuple[int, ...]:
        """Checkpoint steps pruning must keep: the best one, when the run may return it."""
        if self.config.final_model != "best" and not self.config.early_stopping_patience:
            return ()
        best = self.best_evaluation(state)
        return (best[0],) if best else ()

    def stop_early_if_stalled(self, state, control) -> None:
        """After an evaluation: stop training when SELECT_BY has not improved for early_stopping_patience
        evaluations in a row (the checkpoint of this step is still written)."""
        patience = self.config.early_stopping_patience
        best = self.best_evaluation(state)
        if not patience or best is None or state.global_step >= state.max_steps:
            return
        since = sum(1 for step, _ in self.evaluations(state) if step > best[0])
        if since >= patience:
            control.should_training_stop = True
            name = self.SELECT_BY[0]
            self.reporter.on_event(
                "info", f"Stopped early at step {state.global_step} of {state.max_steps}: {name} has not improved "
                        f"for {since} evaluation(s) (best {best[1]:.4f} at step {best[0]})",
                {"early_stopped_step": state.global_step, "best_step": best[0], name: best[1]})

    def _evaluate(self, name: str) -> dict[str, float]:
        metrics = self.trainer.evaluate(eval_dataset=name, metric_key_prefix=name)
        self.trainer.model.train()  # evaluate() leaves eval mode; the step's train log needs train mode
        return self.eval_metrics(name, metrics)

    def _add(self, state, metrics: dict[str, float]) -> None:
        if self.pending_step not in (None, state.global_step):
            self._flush(state)
        self.pending_step = state.global_step
        self.pending.update(metrics)

    def _flush(self, state) -> None:
        if self.pending_step is None:
            return
        metrics = {k: float(self.pending[k]) for k in self.METRIC_NAMES if k in self.pending}
        self.reporter.on_step(self.pending_step, state.max_steps, metrics)
        self.last_metrics = metrics
        self.pending, self.pending_step = {}, None
