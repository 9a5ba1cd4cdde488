"""/v1/uploads: create an Upload, add parts (streamed to disk), complete it into a File, or cancel it;
all in the caller's project. The storage rules are store/uploads.py's."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from modelmill import errors
from modelmill.service.api import deps
from modelmill.service.api.routes.files import check_purpose
from modelmill.service.api.uploads import drain, receive_upload
from modelmill.service.schemas.uploads import (CompleteUploadRequest, CreateUploadRequest, UploadObject,
                                               UploadPartObject)
from modelmill.service.store import Store
from modelmill.service.store.uploads import MAX_PART_BYTES, NewUpload, UploadRecord

router = APIRouter(tags=["uploads"])

# The part's body is parsed by hand (api/uploads.py streams it to disk), so FastAPI cannot see it;
# this is OpenAI's AddUploadPartRequest, written out for the OpenAPI document.
PART_BODY = {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["data"], "properties": {"data": {"type": "string", "format": "binary"}}}}}}


@router.post("/uploads")
def create_upload(body: CreateUploadRequest, store: Store = Depends(deps.get_store),
                  project: str = Depends(deps.get_project)) -> dict:
    check_purpose(body.purpose)
    new = NewUpload(filename=body.filename, purpose=body.purpose, bytes=body.bytes, mime_type=body.mime_type,
                    file_expires_after=body.expires_after.seconds if body.expires_after else None)
    return _wire(store, store.uploads.create(new, project))


@router.post("/uploads/{upload_id}/parts", openapi_extra={"requestBody": PART_BODY})
async def add_upload_part(upload_id: str, request: Request) -> dict:
    store: Store = deps.store(request)
    project = deps.project(request)
    try:  # refuse before reading a byte of the part when the upload can't take it
        upload = await run_in_threadpool(store.uploads.pending, upload_id, project, param="upload_id")
    except errors.ModelMillError:
        await drain(request)
        raise
    limit = min(MAX_PART_BYTES, upload.bytes)
    try:
        part = await receive_upload(request, store.files, limit, field="data")
    except errors.PayloadTooLargeError:
        raise errors.PayloadTooLargeError(
            f"The part is larger than {limit} bytes: a part holds at most {MAX_PART_BYTES} bytes (64 MiB) and "
            f"never more than the upload's bytes ({upload.bytes})", param="data") from None
    try:
        if part.blob is None:
            raise errors.InvalidRequestError("Missing required parameter: 'data'", param="data",
                                             code="missing_required_parameter")
        errors.reject_unknown_fields(part.fields, ())
        if part.blob.size == 0:
            raise errors.InvalidRequestError("Invalid 'data': the part is empty", param="data", code="empty_part")
    except BaseException:
        if part.blob is not None:
            part.blob.discard()
        raise
    record = await run_in_threadpool(store.uploads.add_part, upload_id, part.blob, project)
    return UploadPartObject.of(record).model_dump()


@router.post("/uploads/{upload_id}/complete")
def complete_upload(upload_id: str, body: CompleteUploadRequest, store: Store = Depends(deps.get_store),
                    project: str = Depends(deps.get_project)) -> dict:
    return _wire(store, store.uploads.complete(upload_id, body.part_ids, body.md5, project))


@router.post("/uploads/{upload_id}/cancel")
def cancel_upload(upload_id: str, store: Store = Depends(deps.get_store),
                  project: str = Depends(deps.get_project)) -> dict:
    return _wire(store, store.uploads.cancel(upload_id, project))


def _wire(store: Store, upload: UploadRecord) -> dict:
    """The Upload object; a completed one carries its File (unless that File has since been deleted)."""
    file = None
    if upload.file_id is not None:
        try:
            file = store.files.get(upload.file_id, project_id=upload.project_id)
        except errors.NotFoundError:
            pass
    return UploadObject.of(upload, file).model_dump()
