"""A training file's report for the dashboard: ml.data's validation plus token-length statistics
(ml/file_stats.py counts the tokens; this module picks the method, model and limit, and caches).

    report = FileReports(settings, store).get(file_id, method=None, model=None, project_id=None)

- method: the query's, else the data format of the newest job that uses the file, else detected
  from the file's first object (preference / reinforcement / supervised).
- model: whose tokenizer counts tokens: the query's, else the base model of the newest job that
  uses the file, else settings.default_model (the built-ins share SmolLM2's tokenizer).
- the max sequence length shown (and counted against): the newest job's metadata
  "modelmill.max_seq_len" if it sets one, else the model's default limit, ml/memory.plan_memory's for
  this server's device and the job's batch size (1 without a job): see docs/models.md.
Uploaded files never change, so a report is cached per (file id, method, tokenizer, limit) in memory
and under home/cache/dashboard/, and computed once.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

from modelmill import errors
from modelmill.ml.file_stats import ImageCounter, detect_method, length_stats, load_tokenizer, token_lengths
from modelmill.settings import Settings
from modelmill.service.store import Store

REPORT_VERSION = 4  # bump when the cached report's shape changes


class FileReports:
    def __init__(self, settings: Settings, store: Store):
        self.settings, self.store = settings, store
        self.cache_dir = settings.home / "cache" / "dashboard"
        self._memory: dict[str, dict] = {}
        self._lock = threading.Lock()
        self._tokenizers: dict[str, object] = {}
        self._limits: dict[tuple, tuple[int, str]] = {}

    def get(self, file_id: str, method: str | None = None, model: str | None = None, *,
            project_id: str | None = None) -> dict:
        """The report of a file of project_id (None: any project); its tokenizer's model as that project sees it."""
        record = self.store.files.get(file_id, project_id=project_id)
        out = {"file": {"id": record.id, "filename": record.filename, "purpose": record.purpose,
                        "bytes": record.bytes, "created_at": record.created_at}}
        if record.purpose != "fine-tune":
            return {**out, "validated": False, "reason": f"only fine-tune files are validated (this one is "
                                                         f"{record.purpose})"}
        job = self.store.jobs.newest_using_file(file_id)
        method = method or (_data_format(job.method_type) if job else None) or detect_method(self._path(file_id))
        model = model or (job.base_model if job else None) or self.settings.default_model
        limit = self._limit(job, model, project_id)
        key = hashlib.sha256(json.dumps([REPORT_VERSION, file_id, method, model, limit]).encode()).hexdigest()[:32]
        cached = self._memory.get(key) or self._read_disk(key)
        if cached is None:
            cached = self._compute(file_id, method, model, project_id, limit)
            self._write_disk(key, cached)
        self._memory[key] = cached
        return {**out, "validated": True, **cached}

    def tokens_per_epoch(self, file_id: str) -> int | None:
        """Total tokens of a file from any report already computed (never computes one)."""
        for report in list(self._memory.values()):
            if report.get("file_id") == file_id and report.get("tokens"):
                return report["tokens"]["total"]
        return None

    # -- computing ---------------------------------------------------------------------

    def _compute(self, file_id: str, method: str, model: str, project_id: str | None,
                 limit: tuple[int, str]) -> dict:
        from modelmill.ml import data, vision

        path = self._path(file_id)
        tokenizer, base = self._tokenizer(model, project_id)
        # A vision base reads image parts (and the report counts them); a text-only one refuses them.
        policy = vision.ImagePolicy(hosts=self.settings.image_hosts) \
            if vision.is_vision_base(self.settings.home, base) else None
        report = data.validate_file(path, method, keep_examples=False, images=policy)
        bad_lines = {p.line for p in report.problems if p.line}
        counter = ImageCounter(vision.load_processor(self.settings.home / "models" / base), policy) if policy else None
        lengths, sampled = token_lengths(path, tokenizer, skip_lines=bad_lines, images=counter)
        return {**({"images": counter.stats()} if counter else {}),"file_id": file_id, "method": method, "tokenizer_model": base, "n_lines": report.n_lines,
                "ok": report.ok, "problems": [{"line": p.line, "field": p.field, "code": p.code,
                                               "message": p.message} for p in report.problems],
                "max_seq_len": {"tokens": limit[0], "why": limit[1]},
                "tokens": length_stats(lengths, sampled=sampled, max_seq_len=limit[0])}

    def _limit(self, job, model: str, project_id: str | None) -> tuple[int, str]:
        """(max sequence length, why) for the report: see the module docstring."""
        from modelmill.service.models import registry as model_registry
        from modelmill.service.jobs.requests import META_MAX_SEQ_LEN

        base = model_registry.resolve(self.store, self.settings, model, project_id=project_id, verify=False).base_model
        asked = (job.metadata or {}).get(META_MAX_SEQ_LEN) if job else None
        if asked is not None and asked.strip().isdigit():
            return int(asked), f"set by job {job.id}'s metadata {META_MAX_SEQ_LEN}"
        batch = (job.hyperparameters or {}).get("batch_size") if job else None
        batch = batch if isinstance(batch, int) and not isinstance(batch, bool) else 1
        with self._lock:
            if (base, batch) not in self._limits:
                self._limits[(base, batch)] = _default_limit(self.settings, base, batch)
            return self._limits[(base, batch)]

    def _tokenizer(self, model: str, project_id: str | None):
        """(tokenizer, base model name) for `model` (a base, ft: or checkpoint name); loaded once."""
        from modelmill.service.models import registry as model_registry

        base = model_registry.resolve(self.store, self.settings, model, project_id=project_id, verify=False).base_model
        with self._lock:
            if base not in self._tokenizers:
                self._tokenizers[base] = load_tokenizer(self.settings.home, base)
            return self._tokenizers[base], base

    def _path(self, file_id: str) -> Path:
        return self.store.files.blob_path(file_id)

    def _read_disk(self, key: str) -> dict | None:
        try:
            return json.loads((self.cache_dir / f"{key}.json").read_text())
        except (OSError, ValueError):
            return None

    def _write_disk(self, key: str, report: dict) -> None:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.cache_dir / f".{key}.{threading.get_ident()}.tmp"
        tmp.write_text(json.dumps(report))
        tmp.replace(self.cache_dir / f"{key}.json")


def _default_limit(settings: Settings, base: str, batch_size: int) -> tuple[int, str]:
    """The limit a job on `base` gets without a request: ml/memory.plan_memory on this process's device."""
    from modelmill.ml import import_ml_stack, memory, models

    import_ml_stack()  # detect_device imports torch; not alongside the worker's warm-up (see modelmill.ml)
    plan = memory.plan_memory(memory.model_shape(models.ensure_base(settings.home, base)), memory.detect_device(),
                              memory.MemoryRequest(batch_size=batch_size))
    return plan.max_seq_len, f"{base}'s default for batches of {batch_size}: {plan.max_seq_len_why}"


def _data_format(method_type: str) -> str | None:
    from modelmill.service.jobs import methods

    try:
        return methods.get(method_type).data_format
    except errors.InvalidRequestError:
        return None


class Warmer:
    """Computes reports in the background (once per file), so the jobs table can estimate the
    tokens a running job has seen without a request waiting on a tokenizer."""

    def __init__(self, reports: FileReports):
        self.reports = reports
        self._started: set[str] = set()
        self._lock = threading.Lock()

    def warm(self, file_id: str) -> None:
        with self._lock:
            if file_id in self._started:
                return
            self._started.add(file_id)
        threading.Thread(target=self._run, args=(file_id,), name="dashboard-file-report", daemon=True).start()

    def _run(self, file_id: str) -> None:
        try:
            self.reports.get(file_id)
        except Exception:  # noqa: BLE001 - a best-effort estimate; the file page shows the real error
            pass
