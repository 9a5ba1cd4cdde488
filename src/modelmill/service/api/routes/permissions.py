"""/v1/fine_tuning/checkpoints/{fine_tuned_model_checkpoint}/permissions: share a fine-tuned model or
checkpoint with other projects (create, list, delete), as OpenAI's checkpoint permissions. Only the
owning project may; for any other the model is not found (service/models/permissions.py).

The model name may hold any character of a base model's name, "/" included (the SDK
percent-encodes it), hence the `path` converters.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Query

from modelmill.settings import Settings
from modelmill.service.models import permissions as sharing
from modelmill.service.api import deps
from modelmill.service.schemas.permissions import CreatePermissionRequest, PermissionDeleted, PermissionList
from modelmill.service.store import Store

router = APIRouter(prefix="/fine_tuning/checkpoints", tags=["fine-tuning"])


@router.post("/{fine_tuned_model_checkpoint:path}/permissions")
def create_permissions(fine_tuned_model_checkpoint: str, body: CreatePermissionRequest,
                       store: Store = Depends(deps.get_store), settings: Settings = Depends(deps.get_settings),
                       project: str = Depends(deps.get_project)) -> dict:
    granted = sharing.grant(store, settings, fine_tuned_model_checkpoint, body.project_ids, project)
    return PermissionList.of(granted).model_dump()


@router.get("/{fine_tuned_model_checkpoint:path}/permissions")
def list_permissions(fine_tuned_model_checkpoint: str, project_id: str | None = None, after: str | None = None,
                     limit: int = Query(10, ge=1, le=10_000), order: Literal["ascending", "descending"] = "descending",
                     store: Store = Depends(deps.get_store), settings: Settings = Depends(deps.get_settings),
                     project: str = Depends(deps.get_project)) -> dict:
    page = sharing.list_permissions(store, settings, fine_tuned_model_checkpoint, project, filter_project=project_id,
                                    after=after, limit=limit, order=order)
    return PermissionList.of(page.items, page.has_more).model_dump()


@router.delete("/{fine_tuned_model_checkpoint:path}/permissions/{permission_id}")
def delete_permission(fine_tuned_model_checkpoint: str, permission_id: str, store: Store = Depends(deps.get_store),
                      settings: Settings = Depends(deps.get_settings),
                      project: str = Depends(deps.get_project)) -> dict:
    revoked = sharing.revoke(store, settings, fine_tuned_model_checkpoint, permission_id, project)
    return PermissionDeleted(id=revoked.id).model_dump()
