"""The fine-tuning methods ModelMill trains, one table entry each.

Both the API (checking a create request) and the worker (validating files, resolving
hyperparameters, training) look a method up here, so a new method (RFT) is one new entry.
The ml modules are imported on first use: they pull in torch, which the API only needs
once it actually checks hyperparameters.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from modelmill import errors

SFT_KEYS = ("n_epochs", "batch_size", "learning_rate_multiplier")


@dataclass(frozen=True)
class Method:
    name: str  # the request's method.type
    data_format: str  # ml.data.validate_file's method for the training and validation files
    hyperparameter_keys: tuple[str, ...]  # what method.<name>.hyperparameters may set
    ml_module: str  # modelmill.ml.<module> holding the three names below
    resolve: str  # (requested: dict, n_train_examples: int) -> dict of resolved values
    config: str  # frozen dataclass: SFTConfig fields (+ the method's own, e.g. beta)
    train: str  # (config, reporter) -> TrainResult
    needs_grader: bool = False  # the request carries method.<name>.grader; the config gets grader + grader_context

    def module(self):
        return importlib.import_module(f"modelmill.ml.{self.ml_module}")

    def resolve_hyperparameters(self, requested: dict, n_train_examples: int) -> dict:
        return getattr(self.module(), self.resolve)(requested, n_train_examples)

    def build_config(self, hp: dict, **common: Any):
        """The method's config from resolved hyperparameters plus the SFTConfig fields in `common`."""
        extra = {k: hp[k] for k in self.hyperparameter_keys if k not in SFT_KEYS}  # already typed by resolve
        return getattr(self.module(), self.config)(
            n_epochs=int(hp["n_epochs"]), batch_size=int(hp["batch_size"]),
            learning_rate_multiplier=float(hp["learning_rate_multiplier"]), **extra, **common)

    @property
    def run(self) -> Callable:
        return getattr(self.module(), self.train)


METHODS: dict[str, Method] = {
    "supervised": Method("supervised", "supervised", SFT_KEYS, "sft",
                         "resolve_sft_hyperparameters", "SFTConfig", "train_sft"),
    "dpo": Method("dpo", "preference", (*SFT_KEYS, "beta"), "dpo",
                  "resolve_dpo_hyperparameters", "DPOConfig", "train_dpo"),
    "reinforcement": Method("reinforcement", "reinforcement",
                            (*SFT_KEYS, "reasoning_effort", "compute_multiplier", "eval_interval", "eval_samples"),
                            "rft", "resolve_rft_hyperparameters", "RFTConfig", "train_rft", needs_grader=True),
}


def get(name: str, param: str = "method.type") -> Method:
    try:
        return METHODS[name]
    except KeyError:
        known = ", ".join(f"'{m}'" for m in METHODS)
        raise errors.InvalidRequestError(f"Fine-tuning method '{name}' is not yet supported; use one of {known}",
                                         param=param, code="unsupported_method") from None
