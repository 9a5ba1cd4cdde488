"""Blocking work for one HTTP request, run in a ProjectExecutor (service/core/limits.py) and stopped when
the client goes away.

The work takes a threading.Event, `cancel`, and must end soon after it is set (a generation ends at
its next decoding step: ml/batching.py). These helpers set it when the client disconnects:

- run_until_disconnect(): for a plain response. While the work runs, the route polls
  `request.is_disconnected()` every DISCONNECT_POLL_SECONDS: a thread blocked in torch never sees
  the socket close, and nothing else would tell it (uvicorn only reports the disconnect to a
  `receive()` call). Work still queued is dropped from the executor's queue.
- stream_until_disconnect(): for a StreamingResponse. One executor task drives the whole sync
  iterator (so a stream holds one slot of the project's cap for its whole life) and hands each
  chunk to the event loop; Starlette cancels the response's body iterator when the client
  disconnects, and its `finally` sets `cancel`.

Either way the event is also set if the request's own task is cancelled (server shutdown).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from modelmill import errors

DISCONNECT_POLL_SECONDS = 0.1  # how often a running request checks whether its client is gone
_END = object()  # end of a stream's chunks


async def run_until_disconnect(executor, project_id: str, request, on_disconnect: threading.Event,
                               fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """fn(*args, **kwargs)'s result, run in `executor` for project_id; `on_disconnect` (the event fn
    watches, usually also passed to it as cancel=) is set when the client goes away. Raises
    RateLimitError when the project's queue is full, RequestCancelledError when the client left
    (the work then never started, or was awaited until it stopped)."""
    cancel, gone = on_disconnect, False
    future = executor.submit(project_id, fn, *args, **kwargs)
    waiter = asyncio.wrap_future(future)
    try:
        while True:
            done, _ = await asyncio.wait({waiter}, timeout=DISCONNECT_POLL_SECONDS)
            if done:
                if future.cancelled():
                    raise errors.RequestCancelledError("the client disconnected before the request ran")
                result = waiter.result()
                if gone:  # a cut-short result nobody will read: the route must not act on it (e.g. store it)
                    raise errors.RequestCancelledError("the client disconnected while the request ran")
                return result
            if not gone and await request.is_disconnected():
                gone = True
                cancel.set()  # running: ends at its next step; its slot is held until it has
                future.cancel()  # still queued: never runs
    except BaseException:
        cancel.set()
        future.cancel()
        raise


def stream_until_disconnect(executor, project_id: str, cancel: threading.Event,
                            chunks: Callable[[], Iterator[str]]) -> AsyncIterator[str]:
    """An async iterator over `chunks()` (a sync iterator factory called in the executor), for a
    StreamingResponse. The task is submitted now, so a full queue is a 429 before the response
    starts (RateLimitError)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()

    def hand(item) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: the server is gone
            cancel.set()

    def pump() -> None:
        try:
            for chunk in chunks():
                hand(chunk)
        except BaseException as e:  # noqa: BLE001 - re-raised on the event loop's side
            hand(e)
        finally:
            hand(_END)

    future = executor.submit(project_id, pump)

    async def body() -> AsyncIterator[str]:
        try:
            while True:
                item = await queue.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:  # the client went away (Starlette cancelled us), or the stream ended
            cancel.set()
            future.cancel()

    return body()
