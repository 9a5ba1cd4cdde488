"""Checkpoint permissions: a project shares one of its fine-tuned models (or checkpoints) with
other projects, which may then sample it, evaluate it, train on top of it and see it in their
model lists (model_registry resolves shared names). Revoking a permission takes that away.

Only the owning project manages a model's permissions. For any other project, shared with or not,
the model does not exist here: the same 404 (model_not_found) as a name that was never used.
"""

from __future__ import annotations

from modelmill import errors
from modelmill.settings import Settings
from modelmill.service.models import registry as model_registry
from modelmill.service.store import Store
from modelmill.service.store.projects import PermissionRecord
from modelmill.service.store.records import Page

PARAM = "fine_tuned_model_checkpoint"


def owned_model(store: Store, settings: Settings, name: str, project_id: str) -> model_registry.ServedModel:
    """The fine-tuned or checkpoint model `name` if `project_id` owns it; NotFoundError otherwise."""
    served = model_registry.resolve(store, settings, name, param=PARAM, project_id=project_id, shared=False,
                                    verify=False)
    if served.kind == "base":
        raise errors.InvalidRequestError(f"'{name}' is a base model, which every project can use already; only "
                                         "fine-tuned models and their checkpoints are shared", param=PARAM,
                                         code="invalid_value")
    return served


def grant(store: Store, settings: Settings, name: str, project_ids: list[str],
          project_id: str) -> list[PermissionRecord]:
    """Share `name` (owned by project_id) with each of project_ids; an existing permission is kept as it is."""
    served = owned_model(store, settings, name, project_id)
    wanted = []
    for i, target in enumerate(project_ids):
        param = f"project_ids[{i}]"
        if not target.strip():
            raise errors.InvalidRequestError(f"{param} must be a project id", param=param, code="invalid_value")
        if target == project_id:
            raise errors.InvalidRequestError(f"{param} is the project that owns '{name}'; it has access already",
                                             param=param, code="invalid_value")
        if store.projects.get(target) is None:
            raise errors.InvalidRequestError(f"{param}: no project with id '{target}'", param=param,
                                             code="project_not_found")
        if target not in wanted:
            wanted.append(target)
    return store.permissions.grant(name, served.job_id, wanted)


def list_permissions(store: Store, settings: Settings, name: str, project_id: str, *, filter_project: str | None,
                     after: str | None, limit: int, order: str) -> Page[PermissionRecord]:
    owned_model(store, settings, name, project_id)
    return store.permissions.list(name, project_id=filter_project, after=after, limit=limit,
                                  descending=order == "descending")


def revoke(store: Store, settings: Settings, name: str, permission_id: str, project_id: str) -> PermissionRecord:
    owned_model(store, settings, name, project_id)
    return store.permissions.delete(name, permission_id)
