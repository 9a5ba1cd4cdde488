"""Progress display for the CLI's long operations: uploads and one-time model conversion.

    with upload_progress(path) as f:          # a file object whose reads move a bytes bar
        client.files.create(file=f, purpose="fine-tune")

    with step_progress("Preparing SmolLM2") as say:   # a ticking elapsed-time line + messages
        models.ensure_base(home, name, progress=say)

Both draw on stderr only when it is a terminal; in a pipe they print plain lines.
"""

from __future__ import annotations

import contextlib
import io
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from tqdm import tqdm


class ProgressReader(io.BufferedReader):
    """A binary file that advances `bar` as it is read (httpx streams the upload by read()).
    Seeking back to the start (a retried request) starts the bar again."""

    def __init__(self, path: Path, bar: tqdm):
        super().__init__(io.FileIO(str(path), "rb"))
        self.bar = bar

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        self.bar.update(len(data))
        return data

    def read1(self, size: int = -1) -> bytes:
        data = super().read1(size)
        self.bar.update(len(data))
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        pos = super().seek(offset, whence)
        if pos == 0:
            self.bar.reset(total=self.bar.total)
        return pos


@contextlib.contextmanager
def upload_progress(path: str | Path, out=None) -> Iterator[ProgressReader]:
    """Open `path` for an upload that shows a bytes bar (sent / total, rate, time left)."""
    out = out or sys.stderr
    path = Path(path)
    with tqdm(total=path.stat().st_size, desc=f"uploading {path.name}", unit="B", unit_scale=True,
              unit_divisor=1024, file=out, disable=not _is_tty(out), dynamic_ncols=True) as bar:
        with ProgressReader(path, bar) as f:
            yield f


@contextlib.contextmanager
def step_progress(desc: str, out=None, tick: float = 0.5) -> Iterator[Callable[[str], None]]:
    """A line that shows `desc` and the elapsed time, refreshed every `tick` seconds; the callable
    it yields prints a message above it (the shape of ml.models' progress callback)."""
    out = out or sys.stderr
    live = _is_tty(out)
    bar = tqdm(total=None, desc=desc, file=out, disable=not live, bar_format="{desc} [{elapsed}]")
    stop = threading.Event()

    def ticker() -> None:
        while not stop.wait(tick):
            bar.refresh()

    thread = threading.Thread(target=ticker, daemon=True)
    if live:
        thread.start()

    def say(message: str) -> None:
        if live:
            tqdm.write(message, file=out)
        else:
            print(message, file=out, flush=True)

    try:
        yield say
    finally:
        stop.set()
        if live:
            thread.join()
        bar.close()


def _is_tty(out) -> bool:
    return hasattr(out, "isatty") and out.isatty()


@contextlib.contextmanager
def download_progress(desc: str, out=None) -> Iterator[Callable[[int, int | None], None]]:
    """A bytes bar for a download; the callable it yields takes (bytes so far, total or None), since the
    total is known only once the response's headers arrive (an export is built before it is sent)."""
    out = out or sys.stderr
    with tqdm(total=None, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, file=out,
              disable=not _is_tty(out), dynamic_ncols=True) as bar:
        def on_bytes(done: int, total: int | None) -> None:
            if total is not None and bar.total != total:
                bar.total = total
            bar.update(done - bar.n)
        yield on_bytes
