"""Wire models for /v1/uploads (OpenAI's CreateUploadRequest, CompleteUploadRequest, Upload, UploadPart)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from modelmill.service.schemas.common import OpenAIRequest, WireModel, unix
from modelmill.service.schemas.files import FileObject
from modelmill.service.store.files import MAX_FILENAME_CHARS
from modelmill.service.store.records import FileRecord
from modelmill.service.store.uploads import (MAX_FILE_TTL_S, MAX_UPLOAD_BYTES, MIN_FILE_TTL_S, PartRecord,
                                             UploadRecord)


class ExpiresAfter(OpenAIRequest):
    """OpenAI's FileExpirationAfter: the File made on completion is deleted `seconds` after its creation."""

    anchor: Literal["created_at"]
    seconds: int = Field(strict=True, ge=MIN_FILE_TTL_S, le=MAX_FILE_TTL_S)


class CreateUploadRequest(OpenAIRequest):
    filename: str = Field(min_length=1, max_length=MAX_FILENAME_CHARS)
    purpose: str  # checked as /v1/files checks it (routes/files.check_purpose)
    bytes: int = Field(strict=True, ge=0, le=MAX_UPLOAD_BYTES)
    mime_type: str = Field(min_length=1, max_length=255)  # recorded; the File is typed by its purpose
    expires_after: ExpiresAfter | None = None


class CompleteUploadRequest(OpenAIRequest):
    part_ids: list[str]
    md5: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{32}$")


class UploadObject(WireModel):
    omit_if_none = frozenset({"file"})  # OpenAI's pending and cancelled uploads carry no `file`

    id: str
    object: Literal["upload"] = "upload"
    bytes: int
    created_at: int
    expires_at: int
    filename: str
    purpose: str
    status: Literal["pending", "completed", "cancelled", "expired"]
    file: FileObject | None = None

    @classmethod
    def of(cls, u: UploadRecord, file: FileRecord | None = None) -> "UploadObject":
        return cls(id=u.id, bytes=u.bytes, created_at=unix(u.created_at), expires_at=unix(u.expires_at),
                   filename=u.filename, purpose=u.purpose, status=u.status,
                   file=FileObject.of(file) if file is not None else None)


class UploadPartObject(WireModel):
    id: str
    object: Literal["upload.part"] = "upload.part"
    created_at: int
    upload_id: str

    @classmethod
    def of(cls, p: PartRecord) -> "UploadPartObject":
        return cls(id=p.id, created_at=unix(p.created_at), upload_id=p.upload_id)
