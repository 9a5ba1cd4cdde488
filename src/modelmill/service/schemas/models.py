"""Wire models for /v1/models (OpenAI's Model, ListModelsResponse, DeleteModelResponse)."""

from __future__ import annotations

from typing import Literal

from modelmill.service.models.registry import ServedModel
from modelmill.service.schemas.common import Deletion, WireModel


class ModelObject(WireModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str

    @classmethod
    def of(cls, m: ServedModel) -> "ModelObject":
        return cls(id=m.id, created=m.created, owned_by=m.owned_by)


class ModelList(WireModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]


class ModelDeleted(Deletion):
    id: str
    object: Literal["model"] = "model"
