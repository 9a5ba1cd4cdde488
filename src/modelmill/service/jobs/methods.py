"""The fine-tuning methods ModelMill trains, one table entry each.

Both the API (checking a create request) and the worker (validating files, resolving
hyperparameters, training) look a method up here, so a new method is one new entry.

Each entry names its ml functions directly (ml.sft, ml.dpo, ml.rft), but imports its module
only when they are first used (`Method.ml`), not when this module is imported: ml.rft imports
torch and transformers (through ml.rft.rollouts), about 4 s on a 2-core machine, which every API
start would pay, and which an API creating a supervised job never needs (ml.sft and ml.dpo
import no torch). The import of one method's module is per entry, so checking a supervised
job's hyperparameters never imports ml.rft. Racing the worker's warm-up on that first import
is safe: ml.sampling and ml.rft.rollouts import torch under modelmill.ml's import lock (tests/ml/test_import_race.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from modelmill import errors

SFT_KEYS = ("n_epochs", "batch_size", "learning_rate_multiplier")


@dataclass(frozen=True)
class MethodML:
    """A method's entry points in its ml module."""

    resolve: Callable[[dict, int], dict]  # (requested hyperparameters, n_train_examples) -> resolved values
    config: type  # frozen dataclass: run_config.RunConfig fields (+ the method's own, e.g. beta)
    train: Callable  # (config, reporter) -> TrainResult


def _sft() -> MethodML:
    from modelmill.ml import sft

    return MethodML(sft.resolve_sft_hyperparameters, sft.SFTConfig, sft.train_sft)


def _dpo() -> MethodML:
    from modelmill.ml import dpo

    return MethodML(dpo.resolve_dpo_hyperparameters, dpo.DPOConfig, dpo.train_dpo)


def _rft() -> MethodML:
    from modelmill.ml import rft  # imports torch: see the module docstring

    return MethodML(rft.resolve_rft_hyperparameters, rft.RFTConfig, rft.train_rft)


@dataclass(frozen=True)
class Method:
    name: str  # the request's method.type
    data_format: str  # ml.data.validate_file's method for the training and validation files
    hyperparameter_keys: tuple[str, ...]  # what method.<name>.hyperparameters may set
    load: Callable[[], MethodML]  # imports the method's ml module (first call only) -> its functions
    needs_grader: bool = False  # the request carries method.<name>.grader; the config gets grader + grader_context

    @property
    def ml(self) -> MethodML:
        return self.load()

    def resolve_hyperparameters(self, requested: dict, n_train_examples: int) -> dict:
        return self.ml.resolve(requested, n_train_examples)

    def build_config(self, hp: dict, **common: Any):
        """The method's config from resolved hyperparameters plus the RunConfig fields in `common`."""
        extra = {k: hp[k] for k in self.hyperparameter_keys if k not in SFT_KEYS}  # already typed by resolve
        return self.ml.config(n_epochs=int(hp["n_epochs"]), batch_size=int(hp["batch_size"]),
                              learning_rate_multiplier=float(hp["learning_rate_multiplier"]), **extra, **common)

    @property
    def run(self) -> Callable:
        return self.ml.train


METHODS: dict[str, Method] = {
    "supervised": Method("supervised", "supervised", SFT_KEYS, _sft),
    "dpo": Method("dpo", "preference", (*SFT_KEYS, "beta"), _dpo),
    "reinforcement": Method("reinforcement", "reinforcement",
                            (*SFT_KEYS, "reasoning_effort", "compute_multiplier", "eval_interval", "eval_samples"),
                            _rft, needs_grader=True),
}


def get(name: str, param: str = "method.type") -> Method:
    try:
        return METHODS[name]
    except KeyError:
        known = ", ".join(f"'{m}'" for m in METHODS)
        raise errors.InvalidRequestError(f"Fine-tuning method '{name}' is not yet supported; use one of {known}",
                                         param=param, code="unsupported_method") from None
