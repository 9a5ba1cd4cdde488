"""`modelmill models export`: download GET /v1/models/{model}/export and unpack it into a directory.

The server builds the export (service/models/export.py); this side only streams the tar into a
temporary directory beside `out` (never holding it in memory) and renames it into place, so an
interrupted download leaves no half-written model directory behind.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

from modelmill import errors


def download_export(http, model: str, fmt: str, out: Path, *, gguf_type: str | None = None,
                    progress: Callable[[int, int | None], None] | None = None) -> list[Path]:
    """Export `model` in format `fmt` through `http` (an httpx.Client whose base_url ends in /v1) into
    the new directory `out`; returns the files written. An API error raises errors.ModelMillError
    carrying the server's message and param."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise errors.ConflictError(f"{out} already exists and is not an empty directory", param="out")
    params = {"format": fmt, **({"gguf_type": gguf_type} if gguf_type else {})}
    tmp = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    with http.stream("GET", f"models/{quote(model, safe='')}/export", params=params) as response:
        if response.status_code != 200:
            raise _api_error(response)
        total = int(response.headers["content-length"]) if "content-length" in response.headers else None
        try:
            reader = _ResponseReader(response.iter_bytes(), lambda n: progress and progress(n, total))
            with tarfile.open(fileobj=reader, mode="r|") as tar:
                tar.extractall(tmp, filter=_strip_top_folder)
            if out.exists():
                out.rmdir()
            os.rename(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return sorted(p for p in out.rglob("*") if p.is_file())


def _strip_top_folder(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo | None:
    """The archive holds one folder (named after the model); its contents go straight into `out`.
    tarfile's own "data" filter then refuses links, devices and paths outside the directory."""
    _, _, rest = member.name.partition("/")
    if not rest:
        return None
    return tarfile.data_filter(member.replace(name=rest, deep=False), path)


def _api_error(response) -> errors.ModelMillError:
    response.read()
    try:
        body = json.loads(response.text)["error"]
        message, param = body.get("message") or response.text, body.get("param")
    except (ValueError, KeyError, TypeError):
        message, param = response.text or f"HTTP {response.status_code}", None
    kind = {404: errors.NotFoundError, 409: errors.ConflictError}.get(response.status_code, errors.InvalidRequestError)
    return kind(message, param=param)


class _ResponseReader(io.RawIOBase):
    """A read-only file over an iterator of byte chunks (tarfile's stream mode reads from a file)."""

    def __init__(self, chunks, on_bytes: Callable[[int], None]):
        self._chunks, self._buffer, self._read, self._on_bytes = iter(chunks), b"", 0, on_bytes

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while not self._buffer:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._buffer = chunk
        n = min(len(b), len(self._buffer))
        b[:n], self._buffer = self._buffer[:n], self._buffer[n:]
        self._read += n
        self._on_bytes(self._read)
        return n
