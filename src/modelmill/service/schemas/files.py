"""Wire models for /v1/files (OpenAI's OpenAIFile, ListFilesResponse, DeleteFileResponse)."""

from __future__ import annotations

from typing import Literal

from modelmill.service.schemas.common import CursorList, Deletion, WireModel, unix
from modelmill.service.store.records import FileRecord


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


class FileList(CursorList[FileObject]):
    pass


class FileDeleted(Deletion):
    id: str
    object: Literal["file"] = "file"
