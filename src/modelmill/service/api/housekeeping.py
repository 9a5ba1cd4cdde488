"""The API process's periodic upkeep of what it stores: uploads past their hour (their parts removed),
files past their expires_at, and temp blobs of uploads a crash left half-written.

It runs in the API rather than the worker because the API is what writes these blobs, and a server
may run with no worker (`serve` without one, or workers on other machines). Each of these is also
cleaned when touched (store/uploads.py, store/files.py), so the sweep only bounds how long
something nobody asks about can sit on disk.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager, suppress

import anyio.to_thread

log = logging.getLogger(__name__)

SWEEP_INTERVAL_S = 60.0  # seconds between sweeps; the first runs when the app starts


def sweep_once(store) -> None:
    store.uploads.sweep()
    store.files.sweep_expired()
    store.files.sweep_partial_uploads()


@asynccontextmanager
async def running(store, interval_s: float = SWEEP_INTERVAL_S):
    """Sweep every `interval_s` while the block runs (the app's lifespan)."""
    task = asyncio.create_task(_loop(store, interval_s))
    try:
        yield
    finally:
        task.cancel()  # a sweep in progress finishes first: its thread is not abandoned mid-write
        with suppress(asyncio.CancelledError):
            await task


async def _loop(store, interval_s: float) -> None:
    while True:
        try:
            await anyio.to_thread.run_sync(sweep_once, store)
        except Exception:  # a locked database, a full disk: try again at the next sweep
            log.exception("housekeeping sweep failed")
        await asyncio.sleep(interval_s)
