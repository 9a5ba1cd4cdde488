"""Which model names the service serves and trains from, and what each one loads.

Three kinds share one namespace:
- base models: ml.models' registry (built-ins plus `modelmill models add`);
- fine-tuned models: `ft:<base>:<owner>:<suffix>:<job id short>`, from succeeded jobs;
- checkpoints: `<fine-tuned name>:ckpt-step-<N>`, from the checkpoints table.
Fine-tuned and checkpoint names are looked up in the store, never parsed, so a base
model name may contain any character.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from modelmill import errors
from modelmill.settings import Settings
from modelmill.service.store import Store

# Characters allowed in a job suffix (it becomes part of a colon-separated model name).
SUFFIX_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


def fine_tuned_model_name(base: str, owner: str, suffix: str | None, job_id: str) -> str:
    short = job_id.split("-", 1)[-1][:8]
    return f"ft:{base}:{owner}:{suffix or ''}:{short}"


def checkpoint_model_name(fine_tuned_name: str, step: int) -> str:
    return f"{fine_tuned_name}:ckpt-step-{step}"


@dataclass(frozen=True)
class ServedModel:
    id: str
    kind: str  # "base" | "fine_tuned" | "checkpoint"
    base_model: str
    adapter_dir: Path | None  # None for base models
    created: int
    owned_by: str
    job_id: str | None = None


def resolve(store: Store, settings: Settings, name: str, *, param: str = "model") -> ServedModel:
    """The model called `name`, or NotFoundError (code model_not_found)."""
    from modelmill.ml import models

    if not name.startswith("ft:") and models.is_base_model(settings.home, name):
        return _base(settings, name)
    job = store.jobs.by_fine_tuned_model(name)
    if job is not None and job.adapter_dir:
        return ServedModel(name, "fine_tuned", job.base_model, Path(job.adapter_dir), int(job.finished_at or 0),
                           settings.owner, job.id)
    ckpt = store.checkpoints.by_model_name(name)
    if ckpt is not None and Path(ckpt.path).exists():
        base = store.jobs.get(ckpt.job_id).base_model
        return ServedModel(name, "checkpoint", base, Path(ckpt.path), int(ckpt.created_at), settings.owner,
                           ckpt.job_id)
    raise errors.NotFoundError(f"The model '{name}' does not exist", param=param, code="model_not_found")


def list_served(store: Store, settings: Settings) -> list[ServedModel]:
    from modelmill.ml import models

    out = [ServedModel(m.name, "base", m.name, None, int(m.created), "system")
           for m in models.list_models(settings.home)]
    for job in store.jobs.fine_tuned_models():
        out.append(ServedModel(job.fine_tuned_model, "fine_tuned", job.base_model, Path(job.adapter_dir or ""),
                               int(job.finished_at or 0), settings.owner, job.id))
    for ckpt in store.checkpoints.all_models():
        if Path(ckpt.path).exists():
            base = store.jobs.get(ckpt.job_id).base_model
            out.append(ServedModel(ckpt.fine_tuned_model_checkpoint, "checkpoint", base, Path(ckpt.path),
                                   int(ckpt.created_at), settings.owner, ckpt.job_id))
    return out


def delete(store: Store, settings: Settings, name: str) -> ServedModel:
    """Delete a fine-tuned model: its final adapter goes; the job and its checkpoints stay."""
    served = resolve(store, settings, name)
    if served.kind != "fine_tuned":
        raise errors.InvalidRequestError(f"Only fine-tuned models can be deleted; '{name}' is a {served.kind}"
                                         " model", param="model", code="model_not_deletable")
    store.jobs.mark_model_deleted(served.job_id)
    import shutil

    if served.adapter_dir is not None:
        shutil.rmtree(served.adapter_dir, ignore_errors=True)
    return served


def model_ref(settings: Settings, served: ServedModel):
    """The ml.types.ModelRef that sampling loads for `served` (converts the base once if needed)."""
    from modelmill.ml import models
    from modelmill.ml.types import ModelRef

    return ModelRef(base_dir=models.ensure_base(settings.home, served.base_model), adapter_dir=served.adapter_dir)


def _base(settings: Settings, name: str) -> ServedModel:
    from modelmill.ml import models

    for m in models.list_models(settings.home):
        if m.name == name:
            return ServedModel(name, "base", name, None, int(m.created), "system")
    return ServedModel(name, "base", name, None, 0, "system")
