"""/v1/files: upload (streamed, size-capped), list, retrieve, delete, content; all in the caller's project."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from modelmill import errors
from modelmill.service.api import deps
from modelmill.service.api.uploads import receive_upload
from modelmill.service.schemas.files import FileDeleted, FileList, FileObject
from modelmill.service.store import Store
from modelmill.service.store.files import UPLOAD_PURPOSES

router = APIRouter(tags=["files"])

# The upload body is parsed by hand (uploads.py streams it under a size cap), so FastAPI cannot
# see it; this is what OpenAI's CreateFileRequest documents, written out for the OpenAPI document.
UPLOAD_BODY = {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file", "purpose"], "properties": {
        "file": {"type": "string", "format": "binary"},
        "purpose": {"type": "string", "enum": list(UPLOAD_PURPOSES)}}}}}}
CONTENT_RESPONSE = {200: {"description": "The file's bytes, as uploaded",
                          "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}


@router.post("/files", openapi_extra={"requestBody": UPLOAD_BODY})
async def create_file(request: Request) -> dict:
    store: Store = deps.store(request)
    upload = await receive_upload(request, store.files, deps.settings(request).max_upload_bytes)
    try:
        if upload.blob is None:
            raise errors.InvalidRequestError("Missing required parameter: 'file'", param="file",
                                             code="missing_required_parameter")
        _check_fields(upload.fields)
        purpose = upload.fields.get("purpose")
        check_purpose(purpose)
        record = await run_in_threadpool(store.files.add, upload.blob, upload.filename, purpose,
                                         deps.project(request))
    except BaseException:
        if upload.blob is not None:
            upload.blob.discard()
        raise
    return FileObject.of(record).model_dump()


def check_purpose(purpose: str | None) -> None:
    """A file's purpose as OpenAI accepts it on upload (also /v1/uploads, routes/uploads.py)."""
    if not purpose:
        raise errors.InvalidRequestError("Missing required parameter: 'purpose'", param="purpose",
                                         code="missing_required_parameter")
    if purpose not in UPLOAD_PURPOSES:
        raise errors.InvalidRequestError(f"Invalid purpose '{purpose}'; expected one of "
                                         f"{', '.join(UPLOAD_PURPOSES)}", param="purpose", code="invalid_value")


def _check_fields(fields: dict) -> None:
    """The upload's form fields besides `file`: OpenAI's are purpose and expires_after (files here
    do not expire, so that one is refused by name); anything else gets OpenAI's unknown-field 400."""
    unsupported = [k for k in fields if k == "expires_after" or k.startswith("expires_after[")]
    if unsupported:
        raise errors.InvalidRequestError("expires_after is not supported by ModelMill: uploaded files are kept "
                                         "until deleted", param=unsupported[0], code="unsupported_parameter")
    errors.reject_unknown_fields(fields, ("purpose",))


@router.get("/files")
def list_files(purpose: str | None = None, after: str | None = None, limit: int = Query(10_000, ge=1, le=10_000),
               order: Literal["asc", "desc"] = "desc", store: Store = Depends(deps.get_store),
               project: str = Depends(deps.get_project)) -> dict:
    page = store.files.list(purpose=purpose, after=after, limit=limit, order=order, project_id=project)
    return FileList.of(page).model_dump()


@router.get("/files/{file_id}")
def retrieve_file(file_id: str, store: Store = Depends(deps.get_store),
                  project: str = Depends(deps.get_project)) -> dict:
    return FileObject.of(store.files.get(file_id, project_id=project)).model_dump()


@router.delete("/files/{file_id}")
def delete_file(file_id: str, store: Store = Depends(deps.get_store), project: str = Depends(deps.get_project)) -> dict:
    store.files.delete(file_id, project_id=project)
    return FileDeleted(id=file_id).model_dump()


@router.get("/files/{file_id}/content", response_class=FileResponse, responses=CONTENT_RESPONSE)
def file_content(file_id: str, store: Store = Depends(deps.get_store),
                 project: str = Depends(deps.get_project)) -> FileResponse:
    record = store.files.get(file_id, project_id=project)
    return FileResponse(store.files.blob_path(file_id), media_type="application/octet-stream",
                        filename=record.filename)
