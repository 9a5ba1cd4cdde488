"""Adapter manifests: the sha256 of every file the platform wrote into an adapter or checkpoint
directory, recorded when the directory is published. service/models/adapters.py checks a directory
against its manifest before anything loads or resumes it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

from modelmill.service.store.db import Database

log = logging.getLogger(__name__)

# Bytes read per hashing step.
CHUNK = 1 << 20


class UnsafeDirectory(ValueError):
    """A directory holding something other than regular files and folders (e.g. a symlink)."""


def hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def digest_dir(path: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under `path`. A symlink anywhere inside is refused:
    it could point a loader at a file the platform never wrote."""
    out = {}
    for p in sorted(Path(path).rglob("*")):
        rel = p.relative_to(path).as_posix()
        if p.is_symlink():
            raise UnsafeDirectory(f"{rel} is a symbolic link")
        if p.is_file():
            out[rel] = hash_file(p)
        elif not p.is_dir():
            raise UnsafeDirectory(f"{rel} is not a regular file")
    return out


class ManifestRepo:
    def __init__(self, db: Database):
        self.db = db

    def record(self, path: Path, job_id: str, files: dict[str, str]) -> None:
        """Record (or replace) the manifest of directory `path` (stored resolved)."""
        self.db.execute("INSERT INTO adapter_manifests (path, job_id, files, created_at) VALUES (?, ?, ?, ?)"
                        " ON CONFLICT (path) DO UPDATE SET job_id = excluded.job_id, files = excluded.files,"
                        " created_at = excluded.created_at",
                        (str(Path(path).resolve()), job_id, json.dumps(files, sort_keys=True), time.time()))

    def get(self, path: Path) -> dict[str, str] | None:
        row = self.db.one("SELECT files FROM adapter_manifests WHERE path = ?", (str(Path(path).resolve()),))
        return None if row is None else json.loads(row["files"])

    def backfill_legacy(self, jobs_dir: Path) -> int:
        """Record manifests, once, for the adapters and checkpoints the store recorded before manifests
        existed (migration 0010), so models trained before the upgrade stay usable. Only directories
        under `jobs_dir` that the jobs or checkpoints tables name are considered. Returns how many."""
        applied = self.db.one("SELECT applied_at FROM schema_migrations WHERE name = '0010_adapter_manifests'")
        if applied is None:
            return 0
        cutoff = applied["applied_at"]
        rows = self.db.all("SELECT id AS job_id, adapter_dir AS path FROM jobs WHERE adapter_dir IS NOT NULL"
                           " AND finished_at <= ? UNION ALL SELECT job_id, path FROM checkpoints WHERE created_at <= ?",
                           (cutoff, cutoff))
        if not rows:
            return 0
        known = {r["path"] for r in self.db.all("SELECT path FROM adapter_manifests")}
        root, n = Path(jobs_dir).resolve(), 0
        for row in rows:
            path = Path(row["path"]).resolve()
            if str(path) in known or not path.is_dir() or not path.is_relative_to(root):
                continue
            try:
                self.record(path, row["job_id"], digest_dir(path))
            except (OSError, UnsafeDirectory) as e:
                log.warning("not recording a manifest for %s: %s", path, e)
                continue
            known.add(str(path))
            n += 1
        if n:
            log.info("recorded manifests for %d adapter/checkpoint directories written before manifests existed", n)
        return n
