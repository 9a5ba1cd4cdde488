"""What every LoRA training method shares: the run/finish story (plan precision, memory and the
sequence limit; load; resume; train; publish the final adapter).

Every function here takes the method's config as a run_config.RunConfig (the fields all methods
share); how a RunConfig becomes TRL / PEFT arguments (schedule, precision, LoRA) is in run_config.py.
sft.py, dpo.py and rft/ each build their TRL trainer and a `trainer_hooks.ReporterHooks` subclass that
says which metrics to send and how to read them from the trainer's logs; `run_trainer` does the rest.
The output directory layout and its atomic writes are in checkpoints.py; the trainer <-> reporter
bridge (metrics, validation, stop requests, checkpoint publishing) is in trainer_hooks.py.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from modelmill.errors import DataValidationError, ModelMillError, TrainingError
from modelmill.ml.checkpoints import (copy_adapter_atomically, disk_full, disk_full_error, prepare_output_dir,
                                      save_adapter_atomically, step_of)
from modelmill.ml.report import Reporter
from modelmill.ml.run_config import RunConfig
from modelmill.ml.trainer_hooks import ReporterHooks, reporter_callback
from modelmill.ml.types import TrainResult


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
