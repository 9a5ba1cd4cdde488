"""Creating a fine-tuning job: check the request against the store, then queue it.

Only what can be checked at once is checked here (the model exists, the files exist and
are fine-tune files, the method is supported). Reading every line of the files is the
worker's first step, so a large upload never holds up the request.
"""

from __future__ import annotations

import secrets

from modelmill import errors
from modelmill.settings import Settings
from modelmill.service import model_registry
from modelmill.service.ids import new_id
from modelmill.service.schemas.jobs import CreateJobRequest
from modelmill.service.store import JobRecord, NewJob, Store

SUPPORTED_METHODS = ("supervised",)


def create_job(store: Store, settings: Settings, req: CreateJobRequest) -> JobRecord:
    method_type, hyperparameters = _method(req)
    base_model, init_adapter = _training_model(store, settings, req.model)
    _check_file(store, req.training_file, "training_file")
    if req.validation_file:
        _check_file(store, req.validation_file, "validation_file")
    if req.suffix is not None and not set(req.suffix) <= model_registry.SUFFIX_CHARS:
        raise errors.InvalidRequestError("suffix may contain only letters, digits, '-', '_' and '.'",
                                         param="suffix", code="invalid_suffix")
    _check_hyperparameters(hyperparameters)
    job_id = new_id("ftjob-")
    return store.jobs.create(NewJob(
        id=job_id, model=req.model, base_model=base_model, init_adapter=init_adapter,
        training_file=req.training_file, validation_file=req.validation_file, suffix=req.suffix,
        seed=req.seed if req.seed is not None else secrets.randbelow(2**31),
        metadata=req.metadata, integrations=req.integrations, method_type=method_type,
        hyperparameters=hyperparameters,
        ft_name=model_registry.fine_tuned_model_name(base_model, settings.owner, req.suffix, job_id)))


def _method(req: CreateJobRequest) -> tuple[str, dict]:
    """(method type, requested hyperparameters). `method` wins over the legacy top-level field."""
    if req.method is None:
        hp = req.hyperparameters
        return "supervised", (hp.model_dump(include={"n_epochs", "batch_size", "learning_rate_multiplier"})
                              if hp else _auto())
    if req.method.type not in SUPPORTED_METHODS:
        raise errors.InvalidRequestError(
            f"Fine-tuning method '{req.method.type}' is not yet supported; use 'supervised'",
            param="method.type", code="unsupported_method")
    hp = req.method.supervised.hyperparameters if req.method.supervised else None
    hp = hp or req.hyperparameters
    return req.method.type, (hp.model_dump(include={"n_epochs", "batch_size", "learning_rate_multiplier"})
                             if hp else _auto())


def _check_hyperparameters(requested: dict) -> None:
    """Explicit values must be ones training accepts; "auto" is resolved later, once the
    worker has counted the examples (sft.resolve_sft_hyperparameters is cheap to import)."""
    from modelmill.ml import sft

    sft.resolve_sft_hyperparameters(requested, n_train_examples=100)


def _auto() -> dict:
    return {"n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto"}


def _training_model(store: Store, settings: Settings, name: str) -> tuple[str, str | None]:
    """(base model, adapter to continue from). An ft: or checkpoint model continues its adapter."""
    try:
        served = model_registry.resolve(store, settings, name)
    except errors.NotFoundError:
        raise errors.InvalidRequestError(f"Model {name} is not available for fine-tuning or does not exist",
                                         param="model", code="model_not_available") from None
    return served.base_model, (str(served.adapter_dir) if served.adapter_dir else None)


def _check_file(store: Store, file_id: str, param: str) -> None:
    try:
        f = store.files.get(file_id, param=param)
    except errors.NotFoundError:
        raise errors.InvalidRequestError(f"invalid {param}: {file_id} does not exist", param=param,
                                         code="file_not_found") from None
    if f.purpose != "fine-tune":
        raise errors.InvalidRequestError(f"invalid {param}: {file_id} has purpose '{f.purpose}';"
                                         " upload it with purpose 'fine-tune'", param=param,
                                         code="invalid_file_purpose")
