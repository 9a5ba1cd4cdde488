"""What the store hands back: frozen records, one per table, with JSON columns decoded.

The wire shapes (service/schemas) are built from these; the store knows nothing of HTTP.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")

# Statuses a job can be in. "paused" is ModelMill's documented extension of OpenAI's enum.
ACTIVE_STATUSES = ("validating_files", "queued", "running")
TERMINAL_STATUSES = ("succeeded", "failed", "cancelled")
ALL_STATUSES = ACTIVE_STATUSES + ("paused",) + TERMINAL_STATUSES
# The project that rows made before projects existed belong to, and that keyless (loopback) requests act in.
DEFAULT_PROJECT_ID = "proj_default"


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    has_more: bool


@dataclass(frozen=True)
class FileRecord:
    id: str
    filename: str
    purpose: str
    bytes: int
    status: str
    created_at: float
    expires_at: float | None
    project_id: str = DEFAULT_PROJECT_ID


@dataclass(frozen=True, kw_only=True)
class Leased:
    """The lease columns every row on the lease spine (store/lease.py) carries: jobs, eval runs, batches.

    A mixin for the records of those tables. Keyword-only, so a record's own fields keep their
    order and need no defaults (the store builds records by name: from_row).
    """

    lease_owner: str | None = None
    lease_token: int = 0  # the fencing token: bumped on every claim
    lease_expires_at: float | None = None
    attempts: int = 0
    reclaims: int = 0

    def lease_live(self, now: float) -> bool:
        """Whether a worker holds this row now (an expired lease is up for reclaim)."""
        return self.lease_owner is not None and (self.lease_expires_at or 0) >= now


@dataclass(frozen=True)
class JobRecord(Leased):
    id: str
    created_at: float
    model: str
    base_model: str
    init_adapter: str | None
    training_file: str
    validation_file: str | None
    suffix: str | None
    seed: int
    metadata: dict | None
    integrations: list | None
    method_type: str
    hyperparameters: dict
    hyperparameters_resolved: bool
    ft_name: str
    status: str
    requested_action: str | None
    error: dict | None
    fine_tuned_model: str | None
    adapter_dir: str | None
    model_deleted_at: float | None
    finished_at: float | None
    started_at: float | None
    trained_tokens: int | None
    total_steps: int | None
    step: int | None
    estimated_finish: float | None
    result_files: list[str] = field(default_factory=list)
    grader: dict | None = None  # the reinforcement method's grader; None for other methods
    environment: dict | None = None  # agentic RFT's method.reinforcement.environment; None otherwise
    updated_at: float = 0.0
    project_id: str = DEFAULT_PROJECT_ID


@dataclass(frozen=True)
class EventRecord:
    id: str
    job_id: str
    created_at: float
    level: str
    type: str
    message: str
    data: dict | None


@dataclass(frozen=True)
class CheckpointRecord:
    id: str
    job_id: str
    created_at: float
    step_number: int
    metrics: dict
    path: str
    fine_tuned_model_checkpoint: str


@dataclass(frozen=True)
class ApiKeyRecord:
    id: str
    name: str
    prefix: str
    created_at: float
    last_used_at: float | None
    project_id: str = DEFAULT_PROJECT_ID


_JSON_COLUMNS = {"metadata", "integrations", "hyperparameters", "error", "data", "metrics", "result_files", "grader",
                 "environment"}
_BOOL_COLUMNS = {"hyperparameters_resolved"}


def from_row(cls: type[T], row: sqlite3.Row) -> T:
    """Build a record from a row, decoding JSON columns and dropping columns it doesn't name."""
    names = cls.__dataclass_fields__  # type: ignore[attr-defined]
    values = {}
    for key in row.keys():
        if key not in names:
            continue
        v = row[key]
        if key in _JSON_COLUMNS and v is not None:
            v = json.loads(v)
        elif key in _BOOL_COLUMNS:
            v = bool(v)
        values[key] = v
    return cls(**values)


def to_json(value) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def in_project(sql: str, params: list, project_id: str | None) -> tuple[str, list]:
    """`sql` (which ends in its WHERE clause) narrowed to the rows that project_id owns; as it is for
    None (the worker's and the admin's reads, across projects)."""
    if project_id is None:
        return sql, params
    return sql + " AND project_id = ?", params + [project_id]
