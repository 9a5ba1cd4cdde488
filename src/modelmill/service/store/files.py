"""Uploaded files: a `files` row plus a blob at files_dir/<file id>.

The client's filename is metadata only; blobs are named by server id, so no client
string ever becomes a path. Uploads spool into a temp blob in the same directory and
are renamed into place once complete, so a blob is either whole or absent.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

from modelmill import errors
from modelmill.service.store.ids import new_id
from modelmill.service.store.db import Database
from modelmill.service.store.pagination import page_rows
from modelmill.service.store.records import DEFAULT_PROJECT_ID, FileRecord, Page, from_row, in_project

# Purposes accepted on upload (OpenAI's CreateFileRequest enum) plus the ones the server writes.
UPLOAD_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
SERVER_PURPOSES = ("fine-tune-results", "batch_output")
MAX_FILENAME_CHARS = 255


class BlobWriter:
    """A temp blob being written; refuses to grow past max_bytes (nothing is kept then).
    param: the request field the bytes came from, named by the 413 ("file"; an upload part's "data")."""

    def __init__(self, files_dir: Path, max_bytes: int, param: str = "file"):
        files_dir.mkdir(parents=True, exist_ok=True)
        self.path = files_dir / f".upload-{uuid.uuid4().hex}.part"
        self.max_bytes = max_bytes
        self.param = param
        self.size = 0
        self._f = open(self.path, "wb")

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.max_bytes:
            self.discard()
            raise too_large(self.max_bytes, self.param)
        self._f.write(data)

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()

    def discard(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)


def too_large(max_bytes: int, param: str = "file") -> errors.PayloadTooLargeError:
    what = "File" if param == "file" else f"'{param}'"
    return errors.PayloadTooLargeError(f"{what} is larger than the maximum upload size of {max_bytes} bytes",
                                       param=param)


class FileRepo:
    def __init__(self, db: Database, files_dir: Path):
        self.db = db
        self.files_dir = Path(files_dir)

    def blob_path(self, file_id: str) -> Path:
        return self.files_dir / file_id

    def writer(self, max_bytes: int, param: str = "file") -> BlobWriter:
        return BlobWriter(self.files_dir, max_bytes, param)

    def add(self, blob: BlobWriter, filename: str, purpose: str, project_id: str = DEFAULT_PROJECT_ID, *,
            expires_after_s: int | None = None) -> FileRecord:
        """Move a completed temp blob into place and record it as `project_id`'s.
        expires_after_s: seconds after its creation the file is deleted (None: kept until deleted)."""
        blob.close()
        file_id = new_id("file-")
        os.replace(blob.path, self.blob_path(file_id))
        try:
            return self._insert(file_id, filename, purpose, blob.size, project_id, expires_after_s)
        except BaseException:
            self.blob_path(file_id).unlink(missing_ok=True)
            raise

    def add_bytes(self, data: bytes, filename: str, purpose: str, project_id: str = DEFAULT_PROJECT_ID) -> FileRecord:
        """Store server-made content (e.g. a job's results file, in the job's project)."""
        blob = self.writer(max_bytes=len(data))
        blob.write(data)
        return self.add(blob, filename, purpose, project_id)

    def _insert(self, file_id: str, filename: str, purpose: str, size: int, project_id: str,
                expires_after_s: int | None = None) -> FileRecord:
        filename = (filename or "file")[:MAX_FILENAME_CHARS]
        now = time.time()
        expires_at = None if expires_after_s is None else now + expires_after_s
        self.db.execute("INSERT INTO files (id, filename, purpose, bytes, status, created_at, project_id, expires_at)"
                        " VALUES (?, ?, ?, ?, 'processed', ?, ?, ?)",
                        (file_id, filename, purpose, size, now, project_id, expires_at))
        return self.get(file_id)

    def get(self, file_id: str, *, param: str = "file_id", project_id: str | None = None) -> FileRecord:
        """The file; with project_id, only if that project owns it (else the same NotFoundError
        as a missing id, so ids of other projects cannot be probed)."""
        sql, params = in_project("SELECT * FROM files WHERE id = ?", [file_id], project_id)
        row = self.db.one(sql, params)
        if row is not None and row["expires_at"] is not None and row["expires_at"] <= time.time():
            self._remove(file_id)  # expired (an Upload's expires_after): gone on access, as at the next sweep
            row = None
        if row is None:
            raise errors.NotFoundError(f"No such File object: {file_id}", param=param)
        return from_row(FileRecord, row)

    def list(self, *, purpose: str | None = None, after: str | None = None, limit: int = 10_000,
             order: str = "desc", project_id: str | None = None) -> Page[FileRecord]:
        if order not in ("asc", "desc"):
            raise errors.InvalidRequestError("order must be 'asc' or 'desc'", param="order")
        where, params = ([], []) if purpose is None else (["purpose = ?"], [purpose])
        scope = ([], []) if project_id is None else (["project_id = ?"], [project_id])
        rows, more = page_rows(self.db, "files", where + scope[0], params + scope[1], after=after, limit=limit,
                               descending=order == "desc", cursor_where=scope)
        return Page([from_row(FileRecord, r) for r in rows], more)

    def delete(self, file_id: str, *, project_id: str | None = None) -> None:
        self.get(file_id, project_id=project_id)
        self._remove(file_id)

    def _remove(self, file_id: str) -> None:
        self.db.execute("DELETE FROM files WHERE id = ?", (file_id,))
        self.blob_path(file_id).unlink(missing_ok=True)

    def sweep_expired(self) -> int:
        """Delete the files whose expires_at has passed (row and blob). Returns how many."""
        rows = self.db.all("SELECT id FROM files WHERE expires_at IS NOT NULL AND expires_at <= ?", (time.time(),))
        for row in rows:
            self._remove(row["id"])
        return len(rows)

    def sweep_partial_uploads(self, older_than_s: float = 3600) -> int:
        """Remove temp blobs left by a crash mid-upload. Returns how many were removed."""
        n, cutoff = 0, time.time() - older_than_s
        for p in self.files_dir.glob(".upload-*.part"):
            try:
                if p.stat().st_mtime < cutoff:
                    p.unlink()
                    n += 1
            except FileNotFoundError:
                pass
        return n
