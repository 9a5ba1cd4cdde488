"""A bounded, per-project-fair executor for slow work that must stay off the request thread pool.

Why: FastAPI runs plain `def` routes in one shared pool (anyio's, 40 threads). Slow work there
(a sandboxed python grader, a generation) holds those threads, and every other route of every
project waits behind it: 40 slow `graders/run` calls made `GET /v1/files` take 41 s. A
ProjectExecutor gives such work its own threads and admits it in order:

- at most `max_workers` tasks run at once, all projects together (its own threads);
- at most `per_project` of them belong to one project;
- the rest wait in one FIFO queue (first come, first run, skipping a project at its cap), holding
  no thread; at most `max_queued` waiting per project, and a task past that is refused at once
  with errors.RateLimitError (429, OpenAI's rate-limit shape, with Retry-After).

The stdlib's ThreadPoolExecutor has a global cap only, and anyio's CapacityLimiter has no
per-key cap or queue bound, hence this small scheduler in front of a ThreadPoolExecutor.

Use from an async route: `await executor.run(project_id, fn, *args, request=request)`. A caller
whose client disconnects while its task is still queued has the task removed from the queue
(a running task is not interrupted: fn must bound its own time).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import threading
from dataclasses import dataclass
from typing import Any, Callable

from modelmill import errors

DISCONNECT_POLL_SECONDS = 0.25  # how often a queued request checks whether its client is gone


class ClientDisconnected(errors.ModelMillError):
    """The client went away while its task was queued; the task was dropped. Status 499 (nginx's
    "client closed request"): nobody reads the response, and the error handler does not log it."""

    status = 499
    type = "invalid_request_error"
    code = "client_disconnected"


@dataclass
class _Task:
    project_id: str
    future: concurrent.futures.Future
    fn: Callable
    args: tuple
    kwargs: dict


class ProjectExecutor:
    """See the module docstring. Thread-safe; `submit` may be called from any thread."""

    def __init__(self, name: str, *, max_workers: int, per_project: int, max_queued: int,
                 retry_after_seconds: int = 1):
        if max_workers < 1 or per_project < 1 or max_queued < 0:
            raise ValueError("max_workers and per_project must be >= 1 and max_queued >= 0")
        # name: what the work is, in error messages ("graders", "chat completions").
        self.name = name
        self.max_workers = max_workers
        self.per_project = min(per_project, max_workers)
        self.max_queued = max_queued
        self.retry_after_seconds = retry_after_seconds
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=max_workers,
                                                           thread_name_prefix=f"modelmill-{name}")
        self._lock = threading.Lock()
        self._queue: collections.deque[_Task] = collections.deque()
        self._running: collections.Counter[str] = collections.Counter()
        self._queued: collections.Counter[str] = collections.Counter()

    # -- the API ------------------------------------------------------------------------------------

    def submit(self, project_id: str, fn: Callable, *args: Any, **kwargs: Any) -> concurrent.futures.Future:
        """Queue fn(*args, **kwargs) for project_id; a Future of its result. Raises
        errors.RateLimitError when the project already has max_queued tasks waiting. Cancelling the
        Future while it is queued removes the task."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        task = _Task(project_id, future, fn, args, kwargs)
        with self._lock:
            if self._can_start(project_id) and not self._has_waiting(project_id):
                self._start(task)
                return future
            if self._queued[project_id] >= self.max_queued:
                raise self._rate_limited(project_id)
            self._queue.append(task)
            self._queued[project_id] += 1
        future.add_done_callback(lambda f: self._on_cancel(task) if f.cancelled() else None)
        return future

    async def run(self, project_id: str, fn: Callable, *args: Any, request=None, queue_timeout: float | None = None,
                  **kwargs: Any):
        """Await fn's result from async code. request (a Starlette Request): while the task is
        still queued, a disconnected client cancels it (ClientDisconnected, a 499 nobody reads).
        queue_timeout: seconds the task may wait in the queue; still queued then, it is dropped and
        the caller gets errors.RateLimitError (429 with Retry-After), as past the queue bound."""
        future = self.submit(project_id, fn, *args, **kwargs)
        waiter = asyncio.wrap_future(future)
        if request is None and queue_timeout is None:
            return await waiter
        give_up = None if queue_timeout is None else asyncio.get_running_loop().time() + queue_timeout
        while True:
            done, _ = await asyncio.wait({waiter}, timeout=DISCONNECT_POLL_SECONDS)
            if done:
                return waiter.result()
            if future.running():
                continue
            if request is not None and await request.is_disconnected():
                future.cancel()  # still queued: drop it (a no-op once it has started)
                if future.cancelled():
                    raise ClientDisconnected(f"The client disconnected while its {self.name} request was queued")
            elif give_up is not None and asyncio.get_running_loop().time() >= give_up:
                future.cancel()
                if future.cancelled():
                    raise errors.RateLimitError(
                        f"Rate limit reached for {self.name}: the request waited {queue_timeout:g} s for a free "
                        f"slot (at most {self.per_project} run at once per project, {self.max_workers} in all). "
                        "Please try again shortly.", retry_after=self.retry_after_seconds)

    def stats(self) -> dict:
        """{"running": n, "queued": n, "running_by_project": {...}, "queued_by_project": {...}}."""
        with self._lock:
            return {"running": sum(self._running.values()), "queued": len(self._queue),
                    "running_by_project": dict(+self._running), "queued_by_project": dict(+self._queued)}

    def shutdown(self) -> None:
        """Cancel what is queued and stop the threads once the running tasks end."""
        with self._lock:
            waiting, self._queue = list(self._queue), collections.deque()
            self._queued.clear()
        for task in waiting:
            task.future.cancel()
        self._pool.shutdown(wait=False)

    # -- scheduling (callers hold self._lock) -----------------------------------------------------------

    def _can_start(self, project_id: str) -> bool:
        return sum(self._running.values()) < self.max_workers and self._running[project_id] < self.per_project

    def _has_waiting(self, project_id: str) -> bool:
        return self._queued[project_id] > 0

    def _start(self, task: _Task) -> None:
        self._running[task.project_id] += 1
        self._pool.submit(self._execute, task)

    def _dispatch(self) -> None:
        """Start queued tasks in FIFO order while there is room, skipping projects at their cap."""
        for task in list(self._queue):
            if sum(self._running.values()) >= self.max_workers:
                return
            if self._running[task.project_id] < self.per_project:
                self._queue.remove(task)
                self._queued[task.project_id] -= 1
                self._start(task)

    def _execute(self, task: _Task) -> None:
        try:
            if task.future.set_running_or_notify_cancel():
                try:
                    result = task.fn(*task.args, **task.kwargs)
                except BaseException as e:  # noqa: BLE001 - handed to the caller through the future
                    task.future.set_exception(e)
                else:
                    task.future.set_result(result)
        finally:
            with self._lock:
                self._running[task.project_id] -= 1
                self._dispatch()

    def _on_cancel(self, task: _Task) -> None:
        with self._lock:
            if task in self._queue:
                self._queue.remove(task)
                self._queued[task.project_id] -= 1

    def _rate_limited(self, project_id: str) -> errors.RateLimitError:
        return errors.RateLimitError(
            f"Rate limit reached for {self.name}: this project already has {self._running[project_id]} "
            f"running and {self._queued[project_id]} queued (at most {self.per_project} running and "
            f"{self.max_queued} queued per project). Please try again shortly.",
            retry_after=self.retry_after_seconds)
