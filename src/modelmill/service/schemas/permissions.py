"""Wire models for checkpoint permissions (OpenAI's FineTuningCheckpointPermission,
ListFineTuningCheckpointPermissionResponse, DeleteFineTuningCheckpointPermissionResponse and
CreateFineTuningCheckpointPermissionRequest)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from modelmill.service.schemas.common import Deletion, OpenAIRequest, WireModel, listing, unix
from modelmill.service.store.projects import PermissionRecord

# Projects one create request may name.
MAX_PROJECT_IDS = 100


class CreatePermissionRequest(OpenAIRequest):
    project_ids: list[str] = Field(min_length=1, max_length=MAX_PROJECT_IDS)


class PermissionObject(WireModel):
    id: str
    object: Literal["checkpoint.permission"] = "checkpoint.permission"
    created_at: int
    project_id: str

    @classmethod
    def of(cls, p: PermissionRecord) -> "PermissionObject":
        return cls(id=p.id, created_at=unix(p.created_at), project_id=p.project_id)


class PermissionList(WireModel):
    object: Literal["list"] = "list"
    data: list[PermissionObject]
    first_id: str | None
    last_id: str | None
    has_more: bool

    @classmethod
    def of(cls, items: list[PermissionRecord], has_more: bool = False) -> "PermissionList":
        data = [PermissionObject.of(p) for p in items]
        return cls(**listing(data, has_more, empty=None))


class PermissionDeleted(Deletion):
    id: str
    object: Literal["checkpoint.permission"] = "checkpoint.permission"
