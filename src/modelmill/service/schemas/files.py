"""Wire models for /v1/files (OpenAI's OpenAIFile, ListFilesResponse, DeleteFileResponse)."""

from __future__ import annotations

from typing import Literal

from modelmill.service.schemas.common import WireModel, listing, unix
from modelmill.service.store.records import FileRecord, Page


class FileObject(WireModel):
    omit_if_none = frozenset({"expires_at", "status_details"})

    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    expires_at: int | None = None
    filename: str
    purpose: str
    status: str
    status_details: str | None = None

    @classmethod
    def of(cls, f: FileRecord) -> "FileObject":
        return cls(id=f.id, bytes=f.bytes, created_at=unix(f.created_at), expires_at=unix(f.expires_at),
                   filename=f.filename, purpose=f.purpose, status=f.status)


class FileList(WireModel):
    object: Literal["list"] = "list"
    data: list[FileObject]
    # OpenAI's schema types these as strings (not nullable); an empty page gets "".
    first_id: str
    last_id: str
    has_more: bool

    @classmethod
    def of(cls, page: Page[FileRecord]) -> "FileList":
        data = [FileObject.of(f) for f in page.items]
        return cls(**listing(data, page.has_more))


class FileDeleted(WireModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True
