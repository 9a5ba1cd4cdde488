"""/v1/files: upload (streamed, size-capped), list, retrieve, delete, content."""

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


@router.post("/files")
async def create_file(request: Request) -> dict:
    store: Store = deps.store(request)
    upload = await receive_upload(request, store.files, deps.settings(request).max_upload_bytes)
    try:
        if upload.blob is None:
            raise errors.InvalidRequestError("Missing required parameter: 'file'", param="file",
                                             code="missing_required_parameter")
        purpose = upload.fields.get("purpose")
        if not purpose:
            raise errors.InvalidRequestError("Missing required parameter: 'purpose'", param="purpose",
                                             code="missing_required_parameter")
        if purpose not in UPLOAD_PURPOSES:
            raise errors.InvalidRequestError(f"Invalid purpose '{purpose}'; expected one of "
                                             f"{', '.join(UPLOAD_PURPOSES)}", param="purpose", code="invalid_value")
        record = await run_in_threadpool(store.files.add, upload.blob, upload.filename, purpose)
    except BaseException:
        if upload.blob is not None:
            upload.blob.discard()
        raise
    return FileObject.of(record).model_dump()


@router.get("/files")
def list_files(purpose: str | None = None, after: str | None = None, limit: int = Query(10_000, ge=1, le=10_000),
               order: Literal["asc", "desc"] = "desc", store: Store = Depends(deps.store)) -> dict:
    return FileList.of(store.files.list(purpose=purpose, after=after, limit=limit, order=order)).model_dump()


@router.get("/files/{file_id}")
def retrieve_file(file_id: str, store: Store = Depends(deps.store)) -> dict:
    return FileObject.of(store.files.get(file_id)).model_dump()


@router.delete("/files/{file_id}")
def delete_file(file_id: str, store: Store = Depends(deps.store)) -> dict:
    store.files.delete(file_id)
    return FileDeleted(id=file_id).model_dump()


@router.get("/files/{file_id}/content")
def file_content(file_id: str, store: Store = Depends(deps.store)) -> FileResponse:
    record = store.files.get(file_id)
    return FileResponse(store.files.blob_path(file_id), media_type="application/octet-stream",
                        filename=record.filename)
