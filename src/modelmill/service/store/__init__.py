"""The store: one SQLite database (WAL) plus uploaded blobs, under settings.home.

    store = open_store(settings)        # creates dirs, applies migrations
    store.files / store.jobs / store.events / store.checkpoints / store.keys / store.evals
    store.projects / store.permissions (tenancy) / store.manifests (what the platform wrote to disk)
"""

from __future__ import annotations

import time
from pathlib import Path

from modelmill.settings import Settings
from modelmill.service.store.db import Database
from modelmill.service.store.evals import EvalRepo
from modelmill.service.store.events import CheckpointRepo, EventRepo
from modelmill.service.store.files import FileRepo
from modelmill.service.store.jobs import JobRepo, NewJob
from modelmill.service.store.keys import KeyRepo
from modelmill.service.store.manifests import ManifestRepo
from modelmill.service.store.projects import PermissionRepo, ProjectRepo
from modelmill.service.store.records import (ApiKeyRecord, CheckpointRecord, EventRecord, FileRecord,
                                             JobRecord, Page)


class Store:
    def __init__(self, db_path: Path, files_dir: Path, *, clock=time.time):
        self.db = Database(db_path)
        self.clock = clock
        self.files = FileRepo(self.db, files_dir)
        self.jobs = JobRepo(self.db, clock)
        self.events = EventRepo(self.db)
        self.checkpoints = CheckpointRepo(self.db)
        self.keys = KeyRepo(self.db)
        self.evals = EvalRepo(self.db, clock)  # evals, their runs and output items
        self.projects = ProjectRepo(self.db)
        self.permissions = PermissionRepo(self.db)  # fine-tuned models shared with other projects
        self.manifests = ManifestRepo(self.db)  # file hashes of every adapter and checkpoint dir written

    def close(self) -> None:
        self.db.close()


def open_store(settings: Settings, *, clock=time.time) -> Store:
    settings.ensure_dirs()
    store = Store(settings.db_path, settings.files_dir, clock=clock)
    store.manifests.backfill_legacy(settings.jobs_dir)  # adapters written before manifests existed
    return store


__all__ = ["Store", "open_store", "NewJob", "Page", "FileRecord", "JobRecord", "EventRecord",
           "CheckpointRecord", "ApiKeyRecord"]
