"""The store: one SQLite database (WAL) plus uploaded blobs, under settings.home; or, with
MODELMILL_DATABASE_URL set, the same tables in Postgres (pg.py) and the blobs still under settings.home.

    store = open_store(settings)        # creates dirs, applies migrations
    store.files / store.jobs / store.events / store.checkpoints / store.keys / store.evals
    store.projects / store.permissions (tenancy) / store.manifests (what the platform wrote to disk)
    store.stored_completions / store.responses (stored chat completions and Responses, per project)
    store.uploads (the Uploads API: files sent as parts, uploads.py)
    store.webhooks (webhook endpoints, the events outbox, deliveries and attempts: webhooks.py)

Background work is claimed through the lease queue (lease.py): JobQueue (job_queue.py) and
EvalRunQueue (run_queue.py) are LeaseQueues on the jobs and eval_runs tables, DeliveryQueue
(webhook_queue.py) on webhook_deliveries. Every SQL
statement ModelMill runs lives in this package.
"""

from __future__ import annotations

from pathlib import Path

from modelmill.settings import Settings
from modelmill.service.store.batches import BatchQueue, BatchRepo
from modelmill.service.store.db import Database
from modelmill.service.store.evals import EvalRepo
from modelmill.service.store.events import CheckpointRepo, EventRepo
from modelmill.service.store.files import FileRepo
from modelmill.service.store.job_queue import JobQueue
from modelmill.service.store.jobs import JobRepo, NewJob
from modelmill.service.store.keys import KeyRepo
from modelmill.service.store.lease import Lease, LeaseQueue, LeaseTable
from modelmill.service.store.manifests import ManifestRepo
from modelmill.service.store.projects import PermissionRepo, ProjectRepo
from modelmill.service.store.records import (ApiKeyRecord, CheckpointRecord, EventRecord, FileRecord,
                                             JobRecord, Page)
from modelmill.service.store.run_queue import EvalRunQueue
from modelmill.service.store.stored import ResponseRepo, StoredCompletionRepo
from modelmill.service.store.uploads import UploadRepo
from modelmill.service.store.webhook_queue import DeliveryQueue
from modelmill.service.store.webhooks import WebhookRepo


def open_database(db_path: Path, database_url: str | None = None):
    """SQLite at db_path (the embedded default), or Postgres when database_url is set (store/pg.py).
    Both apply their migrations on open; an unreachable Postgres is an errors.ConfigurationError."""
    if not database_url:
        return Database(db_path)
    from modelmill.service.store.pg import PostgresDatabase  # psycopg only when Postgres is asked for

    return PostgresDatabase(database_url)


class Store:
    def __init__(self, db_path: Path, files_dir: Path, *, clock=None, database_url: str | None = None):
        self.db = open_database(db_path, database_url)
        # The clock rows and leases are stamped with: the database's own (db.now: Postgres's clock, so
        # workers on other machines agree; this machine's for SQLite), unless a test injects one.
        clock = clock or self.db.now
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
        self.stored_completions = StoredCompletionRepo(self.db, clock)  # chat completions made with store: true
        self.responses = ResponseRepo(self.db, clock)  # /v1/responses objects (stored unless store: false)
        self.batches = BatchRepo(self.db, clock)  # the Batch API's batches (batches.py)
        self.uploads = UploadRepo(self.db, self.files, clock)  # /v1/uploads: files sent as parts (uploads.py)
        self.webhooks = WebhookRepo(self.db, clock)  # webhook endpoints, the events outbox, deliveries (webhooks.py)

    def job_queue(self, lease_seconds: float, *, clock=None) -> JobQueue:
        """The lease queue workers claim fine-tuning jobs from (job_queue.py), on the store's clock
        unless `clock` is given."""
        return JobQueue(self.db, lease_seconds, clock=clock or self.clock)

    def eval_run_queue(self, lease_seconds: float, *, clock=None) -> EvalRunQueue:
        """The lease queue workers claim eval runs from (run_queue.py), on the store's clock unless
        `clock` is given."""
        return EvalRunQueue(self.db, lease_seconds, clock=clock or self.clock)

    def webhook_queue(self, lease_seconds: float, *, clock=None) -> DeliveryQueue:
        """The lease queue workers claim webhook deliveries from (webhook_queue.py)."""
        return DeliveryQueue(self.db, lease_seconds, clock=clock or self.clock)

    def batch_queue(self, lease_seconds: float, *, clock=None) -> BatchQueue:
        """The lease queue workers claim batches from (batches.py), on the store's clock unless
        `clock` is given."""
        return BatchQueue(self.db, lease_seconds, clock=clock or self.clock)

    def close(self) -> None:
        self.db.close()


def open_store(settings: Settings, *, clock=None) -> Store:
    """The store of `settings`: SQLite under settings.home, or Postgres at settings.database_url
    (MODELMILL_DATABASE_URL). Blobs and job outputs stay under settings.home either way."""
    settings.ensure_dirs()
    store = Store(settings.db_path, settings.files_dir, clock=clock, database_url=settings.database_url)
    store.manifests.backfill_legacy(settings.jobs_dir)  # adapters written before manifests existed
    return store


__all__ = ["Store", "open_store", "NewJob", "Page", "FileRecord", "JobRecord", "EventRecord",
           "CheckpointRecord", "ApiKeyRecord", "Lease", "LeaseQueue", "LeaseTable", "JobQueue", "EvalRunQueue"]
