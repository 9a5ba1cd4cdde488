"""What every LoRA training method shares: the checkpoint layout on disk, the trainer <-> reporter
bridge (metrics, validation, stop requests, atomic checkpoint publishing) and the run/finish story.

Every function here takes the method's config as a run_config.RunConfig (the fields all methods
share); how a RunConfig becomes TRL / PEFT arguments (schedule, precision, LoRA) is in run_config.py.
sft.py, dpo.py and rft/ each build their TRL trainer and a `ReporterHooks` subclass that says which
metrics to send and how to read them from the trainer's logs; `run_trainer` does the rest.

Output directory layout (the same for every method):
    output_dir/.staging/        the trainer writes checkpoint-<N> here; anything left here is
                                half-written and is deleted at start
    output_dir/checkpoints/step-<N>/   complete checkpoints (renamed from .staging): a PEFT adapter
                                dir (adapter_model.safetensors + adapter_config.json) plus the
                                optimizer, scheduler, RNG and trainer_state.json to resume from
    output_dir/adapter/         the final adapter, present once the run succeeded (written as
                                .adapter-<random> first, then renamed)
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from modelmill.errors import DataValidationError, ModelMillError, TrainingError
from modelmill.faults import crash_point
from modelmill.ml.report import Reporter
from modelmill.ml.run_config import RunConfig
from modelmill.ml.types import TrainResult

# The PEFT adapter a run trains (PEFT's default name). TRL's DPOTrainer may add a frozen "ref"
# copy next to it; only this one is ever saved as the run's result.
TRAINED_ADAPTER = "default"
# What PEFT's save_pretrained writes for one adapter (safetensors only): the final adapter's files.
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json", "README.md")


def barrier() -> None:
    """Wait for every rank of a multi-process run (no-op in one process)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def eval_datasets(config: RunConfig, valid_ds) -> dict | None:
    """"valid" is one batch (the cheap every-N-steps signal); "full_valid" is the whole file."""
    if valid_ds is None:
        return None
    return {"valid": valid_ds.select(range(min(config.batch_size, len(valid_ds)))), "full_valid": valid_ds}


def finish_trainer_setup(trainer, callback):
    """The reporter is the trainer's only output; the callback needs the trainer to evaluate."""
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    fsdp_plugin = getattr(trainer.accelerator.state, "fsdp_plugin", None)
    if fsdp_plugin is not None:  # PEFT's documented FSDP recipe: its own auto-wrap policy for LoRA models
        from peft.utils.other import fsdp_auto_wrap_policy

        fsdp_plugin.auto_wrap_policy = fsdp_auto_wrap_policy(trainer.model)
    callback.trainer = trainer
    return trainer


def train(config: RunConfig, reporter: Reporter, *, load_dataset, hooks_cls: type[ReporterHooks], build_trainer,
          describe, example_lengths, rows_per_example: int = 1) -> TrainResult:
    """The story every method shares: plan precision, memory and the sequence limit (plan_run, one
    event), load the model (plus init_adapter) and the data, find the checkpoint to resume from,
    seed, build the method's TRL trainer, train.

    load_dataset(path, label, tokenizer, config, reporter) -> Dataset;
    build_trainer(config, model, tokenizer, train_ds, valid_ds, callback) -> trainer;
    describe(train_ds) -> the "Training on ..." event message;
    example_lengths, rows_per_example: see plan_run.
    """
    from transformers import set_seed

    from modelmill.ml import models

    output_dir = Path(config.output_dir)
    config, plan = plan_run(config, models.load_tokenizer(config.base_dir), example_lengths, rows_per_example)
    reporter.on_event("info", *plan.event())
    model, tokenizer = models.load_model(config.base_dir, config.init_adapter, trainable=True, dtype=plan.dtype,
                                         quantization=plan.quantization)
    train_ds = load_dataset(config.train_path, "training", tokenizer, config, reporter)
    valid_ds = load_dataset(config.valid_path, "validation", tokenizer, config, reporter) \
        if config.valid_path else None
    resume_from = prepare_output_dir(output_dir)
    set_seed(config.seed)  # before the trainer wraps the model: LoRA init is random
    callback = reporter_callback(hooks_cls, reporter, config, has_valid=valid_ds is not None)
    trainer = build_trainer(config, model, tokenizer, train_ds, valid_ds, callback)
    reporter.on_event("info", describe(train_ds))
    return run_trainer(trainer, callback, output_dir, reporter, resume_from, config.torch_threads)


def trainable_rows(rows: list, label: str, max_seq_len: int, reporter: Reporter) -> list:
    """The tokenized SFT rows (text or vision: each has .labels and .truncated) that keep at least one
    assistant token to train on. Says in a warn event how many were truncated and how many were skipped;
    raises TrainingError when none is left. `label`: "training" or "validation"."""
    n_truncated = sum(r.truncated for r in rows)
    kept = [r for r in rows if any(t != -100 for t in r.labels)]
    if n_truncated:
        reporter.on_event("warn", f"{n_truncated} of {len(rows)} {label} examples were longer than "
                                  f"{max_seq_len} tokens and were truncated",
                          {"file": label, "truncated_examples": n_truncated, "max_seq_len": max_seq_len})
    if len(kept) < len(rows):
        reporter.on_event("warn", f"{len(rows) - len(kept)} {label} examples have no assistant tokens to train on "
                                  f"within {max_seq_len} tokens and were skipped",
                          {"file": label, "skipped_examples": len(rows) - len(kept)})
    if not kept:
        raise TrainingError(f"no {label} example has assistant tokens to train on")
    return kept


def plan_run(config: RunConfig, tokenizer, example_lengths, rows_per_example: int = 1):
    """(config with max_seq_len, quantization and gradient_checkpointing resolved, its memory.MemoryPlan).

    example_lengths(path, tokenizer, config) -> [memory.ExampleLength] counts each example of a file
    as the method's training sees it; rows_per_example is the sequences one example puts through the
    model in a step (DPO 2, RFT its group size). Raises DataValidationError (param training_file or
    validation_file, one LineProblem per example) when an example is longer than the limit and
    config.truncation is False; InvalidRequestError from memory.plan_memory for a bad request.
    The worker calls this while validating a job's files, and train() again, with the same result.
    """
    from modelmill.ml import data, memory

    files = [("training_file", config.train_path)] + ([("validation_file", config.valid_path)]
                                                       if config.valid_path else [])
    lengths = {param: example_lengths(Path(path), tokenizer, config) for param, path in files}
    request = memory.MemoryRequest(
        batch_size=config.batch_size, rows_per_example=rows_per_example,
        longest_example=max((x.tokens for found in lengths.values() for x in found), default=None),
        max_seq_len=config.max_seq_len, quantization=config.quantization, quantization_from=config.quantization_from,
        gradient_checkpointing=config.gradient_checkpointing,
        lora_r=config.lora_r)
    plan = memory.plan_memory(memory.model_shape(config.base_dir), memory.detect_device(), request)
    for param, found in lengths.items():
        problems = [] if config.truncation else memory.over_limit(found, plan.max_seq_len)
        if problems:
            what = "training" if param == "training_file" else "validation"
            raise DataValidationError(
                f"{len(problems)} {what} example(s) longer than the max sequence length of {plan.max_seq_len} "
                f"tokens ({plan.max_seq_len_why}): {data.format_problems(problems)}. Shorten them, raise the "
                f"limit (job metadata modelmill.max_seq_len), or allow truncation (modelmill.truncation: allow)",
                problems, param=param, code=f"invalid_{param}")
    return replace(config, max_seq_len=plan.max_seq_len, quantization=plan.quantization,
                   gradient_checkpointing=plan.gradient_checkpointing), plan


def run_trainer(trainer, callback: ReporterHooks, output_dir: Path, reporter: Reporter,
                resume_from: Path | None, torch_threads: int | None) -> TrainResult:
    """Train (resuming from `resume_from`), then return the TrainResult; see sft.train_sft."""
    if resume_from is not None:
        reporter.on_event("info", f"Resuming from checkpoint at step {step_of(resume_from)}",
                          {"step": step_of(resume_from)})
    try:
        with torch_threads_set(torch_threads):
            trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    except ModelMillError:
        raise
    except Exception as e:  # OOM, NaNs, a broken checkpoint: the caller gets one typed error
        step = trainer.state.global_step
        if disk_full(e, output_dir):
            raise disk_full_error(output_dir, f"training (step {step})") from e
        raise TrainingError(f"training failed at step {step}: {e}") from e
    shutil.rmtree(output_dir / ".staging", ignore_errors=True)  # every checkpoint in it has been published
    state = trainer.state
    tokens, steps = int(state.num_input_tokens_seen), int(state.global_step)
    if callback.stop in ("cancel", "pause"):
        status = "cancelled" if callback.stop == "cancel" else "paused"
        return TrainResult(status=status, adapter_dir=None, trained_tokens=tokens, steps=steps)
    try:
        if not trainer.is_world_process_zero():  # rank 0 alone writes the adapter (ml/distributed.py)
            return TrainResult(status="succeeded", adapter_dir=None, trained_tokens=tokens, steps=steps)
        adapter_dir = final_adapter(trainer, callback, output_dir, reporter)
    except Exception as e:
        if disk_full(e, output_dir):
            raise disk_full_error(output_dir, "saving the final adapter") from e
        raise
    return TrainResult(status="succeeded", adapter_dir=adapter_dir, trained_tokens=tokens, steps=steps)


# Below this much free space on the output filesystem, a failed write is taken as "disk full":
# torch.save reports ENOSPC as a bare RuntimeError ("file write failed") with no errno to test.
DISK_FULL_FREE_BYTES = 1 << 20
_DISK_FULL_TEXT = ("no space left on device", "storagefull", "disk quota exceeded")


def disk_full(exc: BaseException, output_dir: Path) -> bool:
    """True when `exc` (or an exception it chains) is ENOSPC/EDQUOT, or the output filesystem is
    (nearly) full after the failure."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(text in str(seen).lower() for text in _DISK_FULL_TEXT):
            return True
        seen = seen.__cause__ or seen.__context__
    try:
        return shutil.disk_usage(output_dir).free < DISK_FULL_FREE_BYTES
    except OSError:
        return False


def disk_full_error(output_dir: Path, during: str) -> TrainingError:
    """Free the half-written save and say what is left: the checkpoints before it are complete
    (each was published by rename), so the newest one stays usable."""
    shutil.rmtree(output_dir / ".staging", ignore_errors=True)
    for tmp in output_dir.glob(".adapter-*"):
        shutil.rmtree(tmp, ignore_errors=True)
    done = checkpoints(output_dir)
    kept = (f"The checkpoints saved before it are intact; the newest is step {step_of(done[-1])}."
            if done else "No checkpoint had been saved yet.")
    return TrainingError(f"No space left on device while {during}: the job's output disk is full. {kept} "
                         "Free some space and start a new job.", code="disk_full")


@contextlib.contextmanager
def torch_threads_set(n: int | None) -> Iterator[None]:
    """Use n torch CPU threads inside the block (None = leave torch's setting)."""
    import torch

    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------- checkpoints on disk


def prepare_output_dir(output_dir: Path) -> Path | None:
    """Delete half-written state and return the newest complete checkpoint, if any.

    .staging only ever holds unfinished work. A step-<N> dir is complete by construction
    (created by rename), but one missing its adapter or trainer state is removed too.
    """
    shutil.rmtree(output_dir / ".staging", ignore_errors=True)
    leftovers = [*output_dir.glob(".adapter-*"), *output_dir.glob(".old-*"), *output_dir.glob("checkpoints/.old-*")]
    for tmp in leftovers:  # an unfinished adapter save, or a replaced dir not yet deleted
        shutil.rmtree(tmp, ignore_errors=True)
    (output_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    for path in checkpoints(output_dir):
        if not ((path / "trainer_state.json").is_file() and (path / "adapter_model.safetensors").is_file()):
            shutil.rmtree(path, ignore_errors=True)
    done = checkpoints(output_dir)
    return done[-1] if done else None


def checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints (step-<N> dirs, only ever created by rename), oldest first."""
    found = [p for p in (output_dir / "checkpoints").glob("step-*")
             if p.is_dir() and p.name.removeprefix("step-").isdigit()]
    return sorted(found, key=step_of)


def step_of(checkpoint: Path) -> int:
    return int(checkpoint.name.removeprefix("step-"))


def publish_checkpoint(output_dir: Path, step: int, keep: int, protect: tuple[int, ...] = ()) -> Path:
    """Rename the trainer's finished .staging/checkpoint-<step> to checkpoints/step-<step>; prune old ones.

    The newest `keep` are kept, plus the steps in `protect` (RFT keeps its best-validated checkpoint).
    """
    src = output_dir / ".staging" / f"checkpoint-{step}"
    dst = output_dir / "checkpoints" / f"step-{step}"
    crash_point("checkpoint_publish")  # staged in full, not yet published
    rename_over(src, dst)
    for old in checkpoints(output_dir)[:-keep] if keep > 0 else []:
        if step_of(old) not in protect:
            shutil.rmtree(old, ignore_errors=True)
    return dst


def final_adapter(trainer, callback: ReporterHooks, output_dir: Path, reporter: Reporter) -> Path:
    """Publish output_dir/adapter: the last step's adapter, or with config.final_model "best" the best
    evaluated checkpoint's (one event says which, and why)."""
    steps, name = trainer.state.global_step, callback.SELECT_BY[0]
    best = callback.best_evaluation(trainer.state) if callback.config.final_model == "best" else None
    if best is None or best[0] == steps:
        if callback.config.final_model == "best":
            why = "no validation evaluation" if best is None else f"it has the best {name}, {best[1]:.4f}"
            reporter.on_event("info", f"fine_tuned_model is the last step, {steps} ({why})",
                              {"final_model_step": steps})
        return save_adapter_atomically(trainer.model, output_dir)
    checkpoint = output_dir / "checkpoints" / f"step-{best[0]}"
    if not (checkpoint / "adapter_model.safetensors").is_file():  # pruned by an older run's rules
        reporter.on_event("warn", f"The best checkpoint (step {best[0]}) is gone; fine_tuned_model is the last "
                                  f"step, {steps}", {"final_model_step": steps})
        return save_adapter_atomically(trainer.model, output_dir)
    reporter.on_event("info", f"fine_tuned_model is the checkpoint of step {best[0]} ({name} {best[1]:.4f}); "
                              f"the last step was {steps}", {"final_model_step": best[0], name: best[1]})
    return copy_adapter_atomically(checkpoint, output_dir)


def copy_adapter_atomically(checkpoint: Path, output_dir: Path) -> Path:
    """output_dir/adapter from a published checkpoint's adapter files (what save_pretrained wrote there)."""
    tmp = output_dir / f".adapter-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    for name in ADAPTER_FILES:
        if (checkpoint / name).is_file():
            shutil.copy2(checkpoint / name, tmp / name)
    final = output_dir / "adapter"
    crash_point("adapter_publish")
    rename_over(tmp, final)
    return final


def save_adapter_atomically(model, output_dir: Path) -> Path:
    """Save the trained adapter alone (never DPO's frozen "ref" copy) to output_dir/adapter."""
    tmp = output_dir / f".adapter-{uuid.uuid4().hex[:8]}"
    model.save_pretrained(tmp, safe_serialization=True, selected_adapters=[TRAINED_ADAPTER])
    final = output_dir / "adapter"
    crash_point("adapter_publish")  # written in full, not yet renamed into place
    rename_over(tmp, final)
    return final


def rename_over(src: Path, dst: Path) -> None:
    """Atomically put src at dst; an existing dst (same step written again) is moved aside first."""
    if dst.exists():
        aside = dst.with_name(f".old-{dst.name}-{uuid.uuid4().hex[:8]}")
        os.rename(dst, aside)
        shutil.rmtree(aside, ignore_errors=True)
    os.rename(src, dst)


# ---------------------------------------------------------------- the trainer <-> reporter bridge


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
        validation set at epoch ends. SFT and DPO: their config's eval_every_steps (RFT overrides
        on_step_end with its own eval_interval)."""
        raise NotImplementedError

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
