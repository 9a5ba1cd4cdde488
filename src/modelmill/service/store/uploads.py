"""Uploads (OpenAI's Uploads API): a file sent as parts, then assembled into a normal File.

    upload = store.uploads.create(NewUpload(...), project_id)          # status "pending"
    part = store.uploads.add_part(upload.id, blob, project_id)         # a received temp blob, moved into place
    upload = store.uploads.complete(upload.id, [part.id, ...], md5, project_id)  # -> "completed", file_id set
    store.uploads.cancel(upload.id, project_id)                        # -> "cancelled", parts removed
    store.uploads.sweep()                                              # periodic: expire, remove leftovers

Part blobs live at files_dir/.uploads/<upload id>/<part id> (server ids only, never a client string),
on the files' filesystem so a received temp blob is renamed into place, never copied. A part is
streamed to disk as it arrives (api/uploads.py), and completion copies the parts in order into a
temp blob in fixed-size chunks while hashing them: no part, and no file, is ever held in memory.

Once an upload leaves "pending" (completed, cancelled, expired) its parts are removed: at once
by complete and cancel, on access for one found past its expiry, and by sweep() for the rest;
sweep() also removes any part directory whose upload is no longer pending (a part that landed
while its upload was being cancelled), so nothing outlives its upload for long.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from modelmill import errors
from modelmill.service.store.ids import new_id
from modelmill.service.store.db import Database
from modelmill.service.store.files import FileRepo

# OpenAI's limits (API reference, "Add upload part" and "Create upload"): each part at most 64 MB
# (the SDK's DEFAULT_PART_SIZE is 64 MiB, so MiB), an upload at most 8 GB, expiring an hour after creation.
MAX_PART_BYTES = 64 * 1024 * 1024
MAX_UPLOAD_BYTES = 8 * 1024 * 1024 * 1024
UPLOAD_TTL_S = 3600
# expires_after.seconds bounds for the File made (OpenAI's FileExpirationAfter): 1 hour to 30 days.
MIN_FILE_TTL_S, MAX_FILE_TTL_S = 3600, 30 * 24 * 3600
COPY_CHUNK_BYTES = 1024 * 1024  # completion copies parts into the file this much at a time
PENDING = "pending"


@dataclass(frozen=True)
class NewUpload:
    filename: str
    purpose: str
    bytes: int
    mime_type: str
    file_expires_after: int | None  # expires_after.seconds for the File made, None: kept until deleted


@dataclass(frozen=True)
class UploadRecord:
    id: str
    project_id: str
    filename: str
    purpose: str
    bytes: int
    mime_type: str
    file_expires_after: int | None
    status: str
    created_at: float
    expires_at: float
    file_id: str | None


@dataclass(frozen=True)
class PartRecord:
    id: str
    upload_id: str
    bytes: int
    created_at: float


class UploadRepo:
    def __init__(self, db: Database, files: FileRepo, clock=time.time):
        self.db, self.files, self.clock = db, files, clock
        self.root = files.files_dir / ".uploads"

    def parts_dir(self, upload_id: str) -> Path:
        return self.root / upload_id

    def create(self, new: NewUpload, project_id: str) -> UploadRecord:
        upload_id, now = new_id("upload_"), self.clock()
        self.db.execute("INSERT INTO uploads (id, project_id, filename, purpose, bytes, mime_type, file_expires_after,"
                        " status, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (upload_id, project_id, new.filename, new.purpose, new.bytes, new.mime_type,
                         new.file_expires_after, PENDING, now, now + UPLOAD_TTL_S))
        return self.get(upload_id, project_id)

    def get(self, upload_id: str, project_id: str) -> UploadRecord:
        """The upload as `project_id` sees it (another project's is not found), expired first if its
        hour has passed (its parts removed then)."""
        upload = self._row(upload_id, project_id)
        if upload.status == PENDING and upload.expires_at <= self.clock():
            self._expire([upload.id])
            upload = self._row(upload_id, project_id)
        return upload

    def add_part(self, upload_id: str, blob, project_id: str) -> PartRecord:
        """Record a received temp blob (files.BlobWriter, closed) as a part of a pending upload and move
        it into the upload's directory. The blob is discarded if the upload can't take it."""
        part_id, now = new_id("part_"), self.clock()
        target = self.parts_dir(upload_id) / part_id
        try:
            self.pending(upload_id, project_id, param="upload_id")
            with self.db.transaction() as c:
                self._lock_pending(c, upload_id, "upload_id")
                stored = c.execute("SELECT COALESCE(SUM(bytes), 0) AS n FROM upload_parts WHERE upload_id = ?",
                                   (upload_id,)).fetchone()["n"]
                if stored + blob.size > MAX_UPLOAD_BYTES:
                    raise errors.InvalidRequestError(
                        f"Upload {upload_id} already holds {stored} bytes of parts; this part would take it past "
                        f"the maximum of {MAX_UPLOAD_BYTES} bytes", param="data", code="upload_too_large")
                c.execute("INSERT INTO upload_parts (id, upload_id, bytes, created_at) VALUES (?, ?, ?, ?)",
                          (part_id, upload_id, blob.size, now))
                # Renamed inside the transaction: on SQLite it holds the write lock, on Postgres the upload's
                # row lock, so a cancel or expiry can't clean the directory between the check and the move.
                target.parent.mkdir(parents=True, exist_ok=True)
                blob.path.rename(target)
        except BaseException:
            blob.discard()
            target.unlink(missing_ok=True)  # moved, but the row did not commit
            raise
        return PartRecord(part_id, upload_id, blob.size, now)

    def pending(self, upload_id: str, project_id: str, *, param: str) -> UploadRecord:
        """The upload, if it can still take parts or be completed; else a 409 saying what it is."""
        upload = self.get(upload_id, project_id)
        if upload.status != PENDING:
            raise errors.ConflictError(f"Upload {upload_id} is {upload.status}; only a pending upload can take "
                                       "parts or be completed", param=param)
        return upload

    def complete(self, upload_id: str, part_ids: list[str], md5: str | None, project_id: str) -> UploadRecord:
        """Assemble the parts in `part_ids` order into a new File and mark the upload completed."""
        upload = self.pending(upload_id, project_id, param="upload_id")
        parts = self._check_parts(upload, part_ids)
        blob, f = self.files.writer(upload.bytes, "part_ids"), None
        try:
            digest = self._assemble(upload, parts, blob)
            if md5 is not None and digest != md5.lower():
                raise errors.InvalidRequestError(f"md5 mismatch: the assembled parts hash to {digest}, not {md5}",
                                                 param="md5", code="md5_mismatch")
            with self.db.transaction() as c:
                self._lock_pending(c, upload_id, "upload_id")
                f = self.files.add(blob, upload.filename, upload.purpose, project_id,
                                   expires_after_s=upload.file_expires_after)
                c.execute("UPDATE uploads SET status = 'completed', file_id = ? WHERE id = ?", (f.id, upload_id))
        except BaseException:
            blob.discard()
            if f is not None:  # the file was moved into place but the transaction did not commit
                self.files.blob_path(f.id).unlink(missing_ok=True)
            raise
        self._clean([upload_id])
        return self.get(upload_id, project_id)

    def cancel(self, upload_id: str, project_id: str) -> UploadRecord:
        upload = self.get(upload_id, project_id)
        with self.db.transaction() as c:
            if c.execute("UPDATE uploads SET status = 'cancelled' WHERE id = ? AND status = ?",
                         (upload.id, PENDING)).rowcount != 1:
                raise errors.ConflictError(f"Upload {upload_id} is {self._row(upload_id, project_id).status}; "
                                           "only a pending upload can be cancelled", param="upload_id")
        self._clean([upload_id])
        return self.get(upload_id, project_id)

    def sweep(self) -> int:
        """Expire pending uploads past their hour and remove every part directory whose upload is no
        longer pending (or is unknown). Returns how many directories were removed."""
        due = [r["id"] for r in self.db.all("SELECT id FROM uploads WHERE status = ? AND expires_at <= ?",
                                            (PENDING, self.clock()))]
        if due:
            self._expire(due)
        if not self.root.is_dir():
            return 0
        names = [p.name for p in self.root.iterdir()]
        pending: set[str] = set()
        for i in range(0, len(names), 500):  # well under SQLite's limit on bound parameters
            batch = names[i:i + 500]
            marks = ", ".join("?" for _ in batch)
            pending |= {r["id"] for r in self.db.all(f"SELECT id FROM uploads WHERE status = ? AND id IN ({marks})",
                                                     (PENDING, *batch))}
        leftovers = [n for n in names if n not in pending]
        self._clean(leftovers)
        return len(leftovers)

    # -- internals -------------------------------------------------------------------------------

    def _row(self, upload_id: str, project_id: str) -> UploadRecord:
        row = self.db.one("SELECT * FROM uploads WHERE id = ? AND project_id = ?", (upload_id, project_id))
        if row is None:
            raise errors.NotFoundError(f"No such Upload object: {upload_id}", param="upload_id")
        return _record(UploadRecord, row)

    def _lock_pending(self, c, upload_id: str, param: str) -> None:
        """Inside a transaction: hold the upload's row and check it is still pending and unexpired."""
        row = c.execute("SELECT status, expires_at FROM uploads WHERE id = ?" + self.db.row_lock,
                        (upload_id,)).fetchone()
        if row["status"] != PENDING or row["expires_at"] <= self.clock():
            status = row["status"] if row["status"] != PENDING else "expired"
            raise errors.ConflictError(f"Upload {upload_id} is {status}; only a pending upload can take parts "
                                       "or be completed", param=param)

    def _check_parts(self, upload: UploadRecord, part_ids: list[str]) -> list[PartRecord]:
        """The parts named, in order: each once, each this upload's, summing to upload.bytes."""
        seen: set[str] = set()
        for i, part_id in enumerate(part_ids):
            if part_id in seen:
                raise errors.InvalidRequestError(f"part_ids[{i}]: part {part_id} is listed more than once",
                                                 param="part_ids", code="duplicate_part")
            seen.add(part_id)
        rows = self.db.all("SELECT * FROM upload_parts WHERE upload_id = ?", (upload.id,))
        mine = {r["id"]: _record(PartRecord, r) for r in rows}
        for i, part_id in enumerate(part_ids):
            if part_id not in mine:
                raise errors.InvalidRequestError(f"part_ids[{i}]: {part_id} is not a part of upload {upload.id}",
                                                 param="part_ids", code="invalid_part")
        total = sum(mine[p].bytes for p in part_ids)
        if total != upload.bytes:
            raise errors.InvalidRequestError(
                f"The parts listed in part_ids hold {total} bytes, but the upload was created with "
                f"bytes={upload.bytes}", param="part_ids", code="bytes_mismatch")
        return [mine[p] for p in part_ids]

    def _assemble(self, upload: UploadRecord, parts: list[PartRecord], blob) -> str:
        """Copy the parts, in order, into `blob` (chunk by chunk), returning the md5 hex digest."""
        md5 = hashlib.md5(usedforsecurity=False)
        for part in parts:
            path = self.parts_dir(upload.id) / part.id
            try:
                f = open(path, "rb")
            except FileNotFoundError:  # removed by a cancel or sweep racing this completion
                raise errors.ConflictError(f"Part {part.id} of upload {upload.id} is gone (the upload was cancelled "
                                           "or expired)", param="part_ids") from None
            with f:
                while chunk := f.read(COPY_CHUNK_BYTES):
                    md5.update(chunk)
                    blob.write(chunk)
        blob.close()
        return md5.hexdigest()

    def _expire(self, upload_ids: list[str]) -> None:
        for upload_id in upload_ids:
            self.db.execute("UPDATE uploads SET status = 'expired' WHERE id = ? AND status = ?", (upload_id, PENDING))
        self._clean(upload_ids)

    def _clean(self, upload_ids: list[str]) -> None:
        """Remove the parts of uploads that are no longer pending: their rows and their directory."""
        for upload_id in upload_ids:
            self.db.execute("DELETE FROM upload_parts WHERE upload_id = ? AND upload_id IN"
                            " (SELECT id FROM uploads WHERE status <> ?)", (upload_id, PENDING))
            shutil.rmtree(self.parts_dir(upload_id), ignore_errors=True)


def _record(cls, row):
    names = cls.__dataclass_fields__
    return cls(**{k: row[k] for k in row.keys() if k in names})
