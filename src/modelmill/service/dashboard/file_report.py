"""A training file's report for the dashboard: ml.data's validation plus token-length statistics.

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
import math
import threading
from pathlib import Path

from modelmill import errors
from modelmill.settings import Settings
from modelmill.service.store import Store

MAX_TOKENIZED = 20_000  # examples tokenized per file; a bigger file's statistics are over its first ones
HISTOGRAM_BINS = 20
REPORT_VERSION = 3  # bump when the cached report's shape changes


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
        from modelmill.ml import data

        path = self._path(file_id)
        report = data.validate_file(path, method, keep_examples=False)
        bad_lines = {p.line for p in report.problems if p.line}
        tokenizer, base = self._tokenizer(model, project_id)
        lengths, sampled = token_lengths(path, tokenizer, skip_lines=bad_lines)
        return {"file_id": file_id, "method": method, "tokenizer_model": base, "n_lines": report.n_lines,
                "ok": report.ok, "problems": [{"line": p.line, "field": p.field, "code": p.code,
                                               "message": p.message} for p in report.problems],
                "max_seq_len": {"tokens": limit[0], "why": limit[1]},
                "tokens": length_stats(lengths, sampled=sampled, max_seq_len=limit[0])}

    def _limit(self, job, model: str, project_id: str | None) -> tuple[int, str]:
        """(max sequence length, why) for the report: see the module docstring."""
        from modelmill.service import model_registry
        from modelmill.service.fine_tuning import META_MAX_SEQ_LEN

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
        from modelmill.ml import models
        from modelmill.service import model_registry

        base = model_registry.resolve(self.store, self.settings, model, project_id=project_id, verify=False).base_model
        with self._lock:
            if base not in self._tokenizers:
                from modelmill.ml import import_ml_stack

                import_ml_stack()  # not alongside the in-process worker's warm-up (see modelmill.ml)
                from transformers import AutoTokenizer

                self._tokenizers[base] = AutoTokenizer.from_pretrained(models.ensure_base(self.settings.home, base))
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
    from modelmill.service import methods

    try:
        return methods.get(method_type).data_format
    except errors.InvalidRequestError:
        return None


def detect_method(path: Path) -> str:
    """Guess a file's format from its first JSON object: DPO lines have input + preferred_output;
    RFT items have messages that do not end with an assistant turn (the model writes that one)."""
    from modelmill.ml import data
    from modelmill.ml.jsonl import JsonlReader

    with open(path, "rb") as f:
        for _line, obj, _problem in JsonlReader(f):
            if obj is None:
                continue
            if "input" in obj or "preferred_output" in obj:
                return "preference"
            messages = obj.get("messages")
            last = messages[-1] if isinstance(messages, list) and messages else None
            ends_with_answer = isinstance(last, dict) and last.get("role") == "assistant"
            if not ends_with_answer and "reinforcement" in data.LINE_VALIDATORS:
                return "reinforcement"
            return "supervised"
    return "supervised"


def conversation(obj: dict) -> tuple[list[dict], list[dict] | None] | None:
    """The messages (and tools) one line trains on: a chat line's messages, an RFT item's prompt,
    or a DPO pair's prompt plus its longer answer."""
    if isinstance(obj.get("messages"), list):
        return obj["messages"], obj.get("tools")
    inp = obj.get("input")
    if isinstance(inp, dict) and isinstance(inp.get("messages"), list):
        answers = [a for a in (obj.get("preferred_output"), obj.get("non_preferred_output")) if isinstance(a, list)]
        longest = max(answers, key=lambda a: len(json.dumps(a)), default=[])
        return inp["messages"] + longest, inp.get("tools")
    return None


def token_lengths(path: Path, tokenizer, *, skip_lines: set[int] = frozenset(),
                  limit: int = MAX_TOKENIZED) -> tuple[list[int], bool]:
    """Tokens per valid line, rendered with the tokenizer's chat template as training renders it.
    Returns (lengths, sampled) where sampled means the file had more than `limit` lines to count."""
    from modelmill.ml import chat_format
    from modelmill.ml.jsonl import JsonlReader

    lengths: list[int] = []
    with open(path, "rb") as f:
        for line, obj, problem in JsonlReader(f):
            if problem is not None or obj is None or line in skip_lines:
                continue
            if len(lengths) >= limit:
                return lengths, True
            conv = conversation(obj)
            if conv is None:
                continue
            try:
                rendered = tokenizer.apply_chat_template(
                    chat_format.normalize_messages(conv[0]), tools=chat_format.normalize_tools(conv[1]),
                    tokenize=True, return_dict=True)
            except Exception:  # noqa: BLE001 - a line the template cannot render is simply not counted
                continue
            lengths.append(len(rendered["input_ids"]))
    return lengths, False


def length_stats(lengths: list[int], *, max_seq_len: int, sampled: bool = False,
                 bins: int = HISTOGRAM_BINS) -> dict | None:
    """count, total, min, mean, p50/p90/p95 (nearest rank), max, over max_seq_len, and a histogram
    of equal-width bins from min to max (at most `bins`): [{"lo", "hi", "count"}], lo inclusive,
    hi exclusive."""
    if not lengths:
        return None
    ordered = sorted(lengths)
    n = len(ordered)

    def pct(p: float) -> int:
        return ordered[max(0, math.ceil(p / 100 * n) - 1)]

    low, top = ordered[0], ordered[-1]
    bins = max(1, min(bins, top - low + 1))
    width = math.ceil((top - low + 1) / bins)
    counts = [0] * bins
    for x in ordered:
        counts[min((x - low) // width, bins - 1)] += 1
    histogram = [{"lo": low + i * width, "hi": low + (i + 1) * width, "count": c} for i, c in enumerate(counts)]
    return {"count": n, "total": sum(ordered), "min": ordered[0], "mean": sum(ordered) / n, "p50": pct(50),
            "p90": pct(90), "p95": pct(95), "max": top, "max_seq_len": max_seq_len,
            "over_max_seq_len": sum(x > max_seq_len for x in ordered), "sampled": sampled,
            "histogram": histogram}


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
