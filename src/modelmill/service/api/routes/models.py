"""/v1/models: base models, fine-tuned models and checkpoints, one namespace. A project sees the base
models, its own fine-tuned and checkpoint models, and those shared with it (checkpoint permissions)."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from modelmill.settings import Settings
from modelmill.service import model_registry
from modelmill.service.api import deps
from modelmill.service.schemas.models import ModelDeleted, ModelList, ModelObject
from modelmill.service.store import Store

router = APIRouter(prefix="/models", tags=["models"])


@router.get("")
def list_models(store: Store = Depends(deps.store), settings: Settings = Depends(deps.settings),
                project: str = Depends(deps.project)) -> dict:
    served = model_registry.list_served(store, settings, project_id=project)
    return ModelList(data=[ModelObject.of(m) for m in served]).model_dump()


@router.get("/{model:path}")
def retrieve_model(model: str, store: Store = Depends(deps.store), settings: Settings = Depends(deps.settings),
                   project: str = Depends(deps.project)) -> dict:
    return ModelObject.of(model_registry.resolve(store, settings, model, project_id=project, verify=False)).model_dump()


@router.delete("/{model:path}")
def delete_model(model: str, store: Store = Depends(deps.store), settings: Settings = Depends(deps.settings),
                 project: str = Depends(deps.project)) -> dict:
    return ModelDeleted(id=model_registry.delete(store, settings, model, project_id=project).id).model_dump()
