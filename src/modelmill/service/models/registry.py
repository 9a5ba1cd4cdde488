"""Which model names the service serves and trains from, and what each one loads.

Three kinds share one namespace:
- base models: ml.models' registry (built-ins plus `modelmill models add`);
- fine-tuned models: `ft:<base>:<owner>:<suffix>:<job id short>`, from succeeded jobs;
- checkpoints: `<fine-tuned name>:ckpt-step-<N>`, from the checkpoints table.
Fine-tuned and checkpoint names are looked up in the store, never parsed, so a base
model name may contain any character.

Projects: base models are visible to every project; a fine-tuned or checkpoint model to the
project of the job that made it, and to each project it was shared with (a checkpoint
permission). For any other project it does not exist: the same NotFoundError as a name that
was never used. Only the owning project may delete a model or manage its permissions.
Resolving a model to use it checks its adapter directory first (service/models/adapters.py).
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


def resolve(store: Store, settings: Settings, name: str, *, param: str = "model", project_id: str | None = None,
            shared: bool = True, verify: bool = True) -> ServedModel:
    """The model called `name`, or NotFoundError (code model_not_found).

    project_id: resolve as that project sees it (None: every model, for the platform's own use).
    shared: also models shared with project_id (False: only its own, for managing them).
    verify: check the adapter directory is one the platform wrote, unchanged (to load it).
    """
    from modelmill.ml import models

    if not name.startswith("ft:") and models.is_base_model(settings.home, name):
        return _base(settings, name)
    served = None
    job = store.jobs.by_fine_tuned_model(name)
    if job is not None and job.adapter_dir and _visible(store, job, name, project_id, shared):
        served = ServedModel(name, "fine_tuned", job.base_model, Path(job.adapter_dir), int(job.finished_at or 0),
                             settings.owner, job.id)
    ckpt = store.checkpoints.by_model_name(name) if served is None else None
    if ckpt is not None and Path(ckpt.path).exists():
        job = store.jobs.get(ckpt.job_id)
        if _visible(store, job, name, project_id, shared):
            served = ServedModel(name, "checkpoint", job.base_model, Path(ckpt.path), int(ckpt.created_at),
                                 settings.owner, ckpt.job_id)
    if served is None:
        raise errors.NotFoundError(f"The model '{name}' does not exist", param=param, code="model_not_found")
    if verify:
        from modelmill.service.models import adapters

        checked = adapters.verify(store, settings, served.adapter_dir, what=f"the adapter of model '{name}'")
        served = ServedModel(served.id, served.kind, served.base_model, checked, served.created, served.owned_by,
                             served.job_id)
    return served


def _visible(store: Store, job, name: str, project_id: str | None, shared: bool) -> bool:
    if project_id is None or job.project_id == project_id:
        return True
    return shared and store.permissions.allows(name, project_id)


def list_served(store: Store, settings: Settings, project_id: str | None = None) -> list[ServedModel]:
    """Base models, then the fine-tuned and checkpoint models project_id owns or was shared
    (every one when project_id is None)."""
    from modelmill.ml import models

    out = [ServedModel(m.name, "base", m.name, None, int(m.created), "system")
           for m in models.list_models(settings.home)]
    given = store.permissions.shared_with(project_id) if project_id is not None else set()

    def visible(job, name: str) -> bool:
        return project_id is None or job.project_id == project_id or name in given

    for job in store.jobs.fine_tuned_models():
        if visible(job, job.fine_tuned_model):
            out.append(ServedModel(job.fine_tuned_model, "fine_tuned", job.base_model, Path(job.adapter_dir or ""),
                                   int(job.finished_at or 0), settings.owner, job.id))
    jobs: dict = {}
    for ckpt in store.checkpoints.all_models():
        if Path(ckpt.path).exists():
            job = jobs.get(ckpt.job_id) or jobs.setdefault(ckpt.job_id, store.jobs.get(ckpt.job_id))
            if visible(job, ckpt.fine_tuned_model_checkpoint):
                out.append(ServedModel(ckpt.fine_tuned_model_checkpoint, "checkpoint", job.base_model, Path(ckpt.path),
                                       int(ckpt.created_at), settings.owner, ckpt.job_id))
    return out


def delete(store: Store, settings: Settings, name: str, project_id: str | None = None) -> ServedModel:
    """Delete a fine-tuned model: its final adapter goes; the job and its checkpoints stay.
    Only its own project may (for any other, shared or not, it does not exist)."""
    served = resolve(store, settings, name, project_id=project_id, shared=False, verify=False)
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
