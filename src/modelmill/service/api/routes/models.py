"""/v1/models: base models, fine-tuned models and checkpoints, one namespace. A project sees the base
models, its own fine-tuned and checkpoint models, and those shared with it (checkpoint permissions)."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse

from modelmill.settings import Settings
from modelmill.service.models import export as model_export
from modelmill.service.models import registry as model_registry
from modelmill.service.api import deps
from modelmill.service.schemas.models import ModelDeleted, ModelList, ModelObject
from modelmill.service.store import Store

router = APIRouter(prefix="/models", tags=["models"])


@router.get("")
def list_models(store: Store = Depends(deps.get_store), settings: Settings = Depends(deps.get_settings),
                project: str = Depends(deps.get_project)) -> dict:
    served = model_registry.list_served(store, settings, project_id=project)
    return ModelList(data=[ModelObject.of(m) for m in served]).model_dump()


@router.get("/{model:path}/export")
def export_model(model: str, format: str = "adapter", gguf_type: str = "f16", store: Store = Depends(deps.get_store),
                 settings: Settings = Depends(deps.get_settings), project: str = Depends(deps.get_project)):
    """A ModelMill extension: the model as a tar of its adapter, merged weights or GGUF (service/models/export.py).
    Declared before GET /{model:path}, which would otherwise take ".../export" as part of the name."""
    built = model_export.build(store, settings, model, project_id=project, format=format, gguf_type=gguf_type)
    archive = built.archive()
    return StreamingResponse(iter(archive), media_type="application/x-tar", background=archive.cleanup(), headers={
        "Content-Length": str(archive.length), "Content-Disposition": f'attachment; filename="{built.folder}.tar"'})


@router.get("/{model:path}")
def retrieve_model(model: str, store: Store = Depends(deps.get_store), settings: Settings = Depends(deps.get_settings),
                   project: str = Depends(deps.get_project)) -> dict:
    return ModelObject.of(model_registry.resolve(store, settings, model, project_id=project, verify=False)).model_dump()


@router.delete("/{model:path}")
def delete_model(model: str, store: Store = Depends(deps.get_store), settings: Settings = Depends(deps.get_settings),
                 project: str = Depends(deps.get_project)) -> dict:
    return ModelDeleted(id=model_registry.delete(store, settings, model, project_id=project).id).model_dump()
