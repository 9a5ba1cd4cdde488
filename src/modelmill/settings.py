"""One frozen Settings, read once at the edge (env vars / CLI flags) and passed down."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    return int(raw) if raw not in (None, "") else default


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    return float(raw) if raw not in (None, "") else default


@dataclass(frozen=True)
class Settings:
    # Data directory: SQLite db, uploaded file blobs, converted base models, job outputs.
    home: Path = field(default_factory=lambda: Path.home() / ".modelmill")
    # Address the API binds to. A non-loopback host requires at least one API key.
    host: str = "127.0.0.1"
    # TCP port of the API; 0 means "pick a free port" (used by the demo and tests).
    port: int = 8000
    # Upload cap in bytes, enforced while the body streams in (413 past it).
    max_upload_bytes: int = 512 * 1024 * 1024
    # Seconds a worker's claim on a job stays valid without a heartbeat.
    lease_seconds: float = 30.0
    # Seconds between worker heartbeats (must be well under lease_seconds).
    heartbeat_seconds: float = 5.0
    # Seconds an idle worker sleeps between polls of the queue.
    poll_seconds: float = 0.5
    # Organisation name written into fine-tuned model ids: ft:<base>:<owner>:<suffix>:<id>.
    owner: str = "modelmill"
    # Default base model for `jobs create` when none is given.
    default_model: str = "SmolLM2-135M-Instruct"
    # Run an in-process worker alongside the API in `modelmill serve`.
    run_worker: bool = True
    # Maximum number of loaded (base, adapter) pairs kept in the chat model cache.
    model_cache_size: int = 4

    @property
    def db_path(self) -> Path:
        return self.home / "modelmill.db"

    @property
    def files_dir(self) -> Path:
        return self.home / "files"

    @property
    def jobs_dir(self) -> Path:
        return self.home / "jobs"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    def ensure_dirs(self) -> "Settings":
        for d in (self.home, self.files_dir, self.jobs_dir, self.models_dir):
            d.mkdir(parents=True, exist_ok=True)
        return self

    def with_(self, **changes) -> "Settings":
        return replace(self, **changes)

    @classmethod
    def from_env(cls, **overrides) -> "Settings":
        """Read MODELMILL_* environment variables; keyword overrides (from CLI flags) win."""
        s = cls(
            home=Path(os.environ.get("MODELMILL_HOME") or Path.home() / ".modelmill").expanduser(),
            host=os.environ.get("MODELMILL_HOST", "127.0.0.1"),
            port=_env_int("MODELMILL_PORT", 8000),
            max_upload_bytes=_env_int("MODELMILL_MAX_UPLOAD_BYTES", 512 * 1024 * 1024),
            lease_seconds=_env_float("MODELMILL_LEASE_SECONDS", 30.0),
            heartbeat_seconds=_env_float("MODELMILL_HEARTBEAT_SECONDS", 5.0),
            owner=os.environ.get("MODELMILL_OWNER", "modelmill"),
        )
        overrides = {k: v for k, v in overrides.items() if v is not None}
        if "home" in overrides:
            overrides["home"] = Path(overrides["home"]).expanduser()
        return replace(s, **overrides)
