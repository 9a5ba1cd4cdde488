"""GET /v1/models/{model}/export: a fine-tuned or checkpoint model as a tar archive to download.

Why over HTTP rather than from the local store: the user who wants the model is often on another
machine (a laptop, a GPU box running vLLM), and the server is where the project scoping and the
adapter checks live. `modelmill models export` and the dashboard's download links both use this.

The export is built (ml/export.py) into a temporary directory under MODELMILL_HOME/exports, then
streamed as an uncompressed tar (weights do not compress) with a Content-Length, and the directory
is removed once the stream ends. Nothing is cached: a merge of a small model takes seconds, and a
cache of merged multi-GB copies would need its own eviction. One export is built at a time per
process (a merge holds a full float32 copy of the model in memory); others wait their turn.
"""

from __future__ import annotations

import shutil
import tarfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from modelmill import errors
from modelmill.settings import Settings
from modelmill.service.models import registry as model_registry
from modelmill.service.store import Store

CHUNK = 1 << 20  # bytes read and sent at a time
STALE_SECONDS = 24 * 3600  # a temporary export directory this old was left by a crash: removed
_BUILD_LOCK = threading.Lock()


@dataclass(frozen=True)
class BuiltExport:
    """An export on disk, ready to stream (then removed)."""

    model: str  # the model's name
    format: str  # "adapter" | "merged" | "gguf"
    directory: Path  # the files, removed after streaming
    folder: str  # the archive's top-level folder (also the suggested file name, without .tar)

    def archive(self) -> "TarStream":
        return TarStream(self.directory, self.folder)


def build(store: Store, settings: Settings, name: str, *, project_id: str, format: str, gguf_type: str) -> BuiltExport:
    """Export model `name` as project_id sees it. InvalidRequestError names `format` / `gguf_type` /
    `model` (a base model); NotFoundError (param model) for a name this project cannot see."""
    from modelmill.ml import export, models

    options = export.ExportOptions(format=format, gguf_type=gguf_type)
    served = model_registry.resolve(store, settings, name, project_id=project_id)
    if served.kind == "base":
        raise errors.InvalidRequestError(
            f"'{name}' is a base model: only fine-tuned and checkpoint models (ft:...) can be exported",
            param="model", code="model_not_exportable")
    options = export.ExportOptions(format=format, gguf_type=gguf_type, base_name=served.base_model)
    root = settings.home / "exports"
    root.mkdir(parents=True, exist_ok=True)
    _sweep(root)
    directory = root / f".tmp-{uuid.uuid4().hex[:12]}"
    try:
        with _BUILD_LOCK:
            export.export(models.ensure_base(settings.home, served.base_model), served.adapter_dir, options, directory,
                          converter_path=settings.gguf_converter)
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    folder = "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip("_") + f"-{format}"
    return BuiltExport(name, format, directory, folder)


class TarStream:
    """A directory as a tar byte stream with a known length, read a chunk at a time.

    Written by hand around tarfile.TarInfo.tobuf because tarfile.TarFile.addfile copies a whole member
    into its file object before returning, so a multi-GB weights file could not be streamed through it."""

    def __init__(self, directory: Path, folder: str):
        self.directory = directory
        self.files = sorted(p for p in directory.rglob("*") if p.is_file())
        self.headers = [self._header(p, folder) for p in self.files]
        self.length = sum(len(h) + _padded(p.stat().st_size) for h, p in zip(self.headers, self.files)) + 2 * 512

    def _header(self, path: Path, folder: str) -> bytes:
        info = tarfile.TarInfo(f"{folder}/{path.relative_to(self.directory).as_posix()}")
        st = path.stat()
        info.size, info.mtime, info.mode = st.st_size, int(st.st_mtime), 0o644
        return info.tobuf(format=tarfile.PAX_FORMAT)

    def cleanup(self):
        """A background task that removes the directory once the response is done (also when the
        stream never started: the client went away while the export was being built)."""
        from starlette.background import BackgroundTask

        return BackgroundTask(shutil.rmtree, self.directory, ignore_errors=True)

    def __iter__(self) -> Iterator[bytes]:
        try:
            for header, path in zip(self.headers, self.files):
                yield header
                size = 0
                with open(path, "rb") as f:
                    while chunk := f.read(CHUNK):
                        size += len(chunk)
                        yield chunk
                if size % 512:
                    yield b"\0" * (512 - size % 512)
            yield b"\0" * 1024  # the end-of-archive marker: two zero blocks
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)


def _padded(size: int) -> int:
    return (size + 511) // 512 * 512


def _sweep(root: Path) -> None:
    """Remove temporary export directories left by a crash or an abandoned download."""
    cutoff = time.time() - STALE_SECONDS
    for stale in root.glob(".tmp-*"):
        try:
            if stale.stat().st_mtime < cutoff:
                shutil.rmtree(stale, ignore_errors=True)
        except OSError:
            continue
