"""The HTTP application: create_app(settings) for tests and embedding, serve(settings) for the CLI.

    app = create_app(settings, start_worker=True)   # a worker thread runs while the app is up
    serve(settings)                                  # uvicorn on settings.host:settings.port
"""

from __future__ import annotations

import logging
import threading
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from modelmill.settings import Settings
from modelmill.service.core import auth
from modelmill.service.api import deps, errors as api_errors, housekeeping, loop_lag, query_params
from modelmill.service.api.routes import (batches, chat, evals, files, graders, jobs, models, permissions,
                                          responses, stored_completions, uploads)
from modelmill.service.store import Store, open_store

log = logging.getLogger("modelmill.api")

# Seconds shutdown waits for the worker thread to checkpoint and hand its job back.
WORKER_STOP_TIMEOUT_S = 60.0
# The served process's young-generation GC threshold (net allocations between young collections;
# Python's default is 700). See tune_gc().
GC_YOUNG_THRESHOLD = 10_000


def create_app(settings: Settings, *, start_worker: bool = False, store: Store | None = None,
               sampler=None, warm_routes: bool = False) -> FastAPI:
    """The ModelMill API. Raises errors.AuthenticationError when settings.host is not a
    loopback address and the store holds no API key.

    start_worker: run a training worker on a thread for as long as the app's lifespan.
    warm_routes: build FastAPI's per-route structures at start-up (warm_up; `serve` does).
    store / sampler: injected instances (tests); by default the app opens its own store and
    samples with the process's one Sampler (service/models/sampler.py), made on the first request that needs it.
    """
    own_store = store is None
    store = store or open_store(settings)
    settings.ensure_dirs()
    auth.check_bind(settings, store)
    from modelmill.ml.graders import resources

    resources.set_cache_home(settings.home)  # graders/run and evals cache WordNet under this home

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        request_threads(settings.api_threads)
        store.files.sweep_partial_uploads()
        stop = threading.Event()
        thread = None
        if start_worker:
            from modelmill.service.worker.loop import run_worker

            thread = threading.Thread(target=_niced, args=(settings.worker_nice, run_worker, settings, stop),
                                      name="modelmill-worker", daemon=True)
            thread.start()
        try:
            # expired uploads and files swept (api/housekeeping.py); the event loop's lag measured (api/loop_lag.py)
            async with housekeeping.running(store), loop_lag.running(app):
                if warm_routes:
                    await warm_up(app)
                yield
        finally:
            stop.set()
            if getattr(app.state, "grader_executor", None) is not None:
                app.state.grader_executor.shutdown()  # drop queued graders/run calls; running ones end alone
            if getattr(app.state, "chat_executor", None) is not None:
                app.state.chat_executor.shutdown()  # drop queued chats; running ones end at their client's disconnect
            if thread is not None:
                thread.join(timeout=WORKER_STOP_TIMEOUT_S)
            if own_store:
                store.close()

    app = FastAPI(title="ModelMill", version="0.1.0", lifespan=lifespan,
                  description="OpenAI-compatible fine-tuning service",
                  docs_url=None, redoc_url=None)  # /docs is served offline by api/docs.py
    app.state.settings = settings
    app.state.store = store
    app.state.sampler = sampler
    _install(app, settings, store)
    return app


def _install(app: FastAPI, settings: Settings, store: Store) -> None:
    """The error handlers, middleware, routers, dashboard and /docs of the app."""
    api_errors.install(app)
    from modelmill.service.api.edge import Edge
    from modelmill.service.api.timing import ProcessingTime

    # Auth, CSRF, body caps and text checks before FastAPI reads any body (api/edge.py).
    app.add_middleware(Edge, settings=settings, store=store)
    app.add_middleware(ProcessingTime)  # openai-processing-ms and x-request-id on every response
    secured = [Depends(deps.authenticated)]
    v1 = [*secured, Depends(query_params.refuse_unknown)]  # unknown query parameters: 400 (api/query_params.py)
    for module in (files, uploads, jobs, permissions, chat, stored_completions, responses, models, graders, evals,
                   batches):
        app.include_router(module.router, prefix="/v1", dependencies=v1)
    app.include_router(evals.report_router, dependencies=secured)  # report_url pages, outside /v1
    from modelmill.service.api.routes import metrics

    app.include_router(metrics.router)  # GET /metrics for Prometheus; access per MODELMILL_METRICS
    from modelmill.service.api.routes import webhooks as webhook_routes

    app.include_router(webhook_routes.router, prefix="/v1", dependencies=v1)  # /v1/webhook_endpoints
    from modelmill.service import dashboard

    dashboard.install(app)  # the web dashboard at / (pages, /dashboard/api, /dashboard/static)
    from modelmill.service.api import docs

    docs.install(app)  # /docs: Swagger UI from vendored files, no CDN


def serve(settings: Settings, log_level: str = "info", worker_process: bool = False) -> None:
    """Run the API with uvicorn, plus a worker when settings.run_worker: a thread of this process, or,
    with worker_process, a `modelmill worker` child process (training's Python work then does not
    share the API's GIL; see RELIABILITY.md, Load). The child gets SIGTERM when the API stops or dies,
    and then checkpoints and hands its job back like any worker.
    log_level: uvicorn's and ModelMill's logging level ("debug", "info", "warning", ...)."""
    import uvicorn

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(settings, start_worker=settings.run_worker and not worker_process, warm_routes=True)
    child = start_worker_process(settings) if settings.run_worker and worker_process else None
    tune_gc()
    try:
        uvicorn.run(app, host=settings.host, port=settings.port, log_level=log_level, timeout_graceful_shutdown=5)
    finally:
        if child is not None:
            stop_worker_process(child)


async def warm_up(app: FastAPI) -> None:
    """One GET of a path no route has, through the whole app, before the server listens. FastAPI
    builds each route's dependency tree and schemas on the first request that walks past it (signature
    inspection, pydantic schemas: ~0.4 s for this app on a loaded 2-core machine), on the event loop:
    without this, the first request after a start paid for it and stalled every other request then in
    flight (api/loop_lag.py saw those stalls in the load suite)."""
    path = "/v1/__modelmill_warm_up__"
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"",
             "headers": [(b"host", b"127.0.0.1")], "client": ("127.0.0.1", 0), "server": ("127.0.0.1", 0)}

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        pass

    try:
        await app(scope, receive, send)
    except Exception:  # noqa: BLE001 - only a warm-up: the first real request builds what this did not
        log.warning("route warm-up failed", exc_info=True)


def request_threads(n: int) -> None:
    """Run at most n plain `def` routes and dependencies at once (settings.api_threads): the size of
    anyio's default thread limiter, which FastAPI's run_in_threadpool uses, for this event loop (call
    it on the loop). A request past it waits, in arrival order, on the loop and holds no thread.
    Why a knob: every pool thread with work takes turns at the GIL with the event loop, and CPython
    hands the GIL to no waiter in particular; with 40 busy threads the loop (which accepts, parses and
    answers every request) could wait for many turns (RELIABILITY.md, Load)."""
    import anyio.to_thread

    anyio.to_thread.current_default_thread_limiter().total_tokens = n


def tune_gc() -> None:
    """Fewer and shorter stop-the-world pauses of Python's cyclic garbage collector in the server
    process. A full collection walks every tracked object while holding the GIL: with a job training
    and the chat model loaded the server tracks over half a million, and under 50 clients full
    collections came every few seconds and each stalled every request in flight for a large part
    of a second (RELIABILITY.md, Load: the client p99). So:
    - the young threshold is raised (GC_YOUNG_THRESHOLD): at 700 allocations, the objects of the
      requests in flight (a files.list of 800 files builds thousands) were caught alive by young
      collections and promoted, and enough promotions trigger a full collection: far fewer now;
    - what is alive once the app is built (the imports, the app: about 200k objects) is moved out
      of the collector's sight with gc.freeze(): it lives as long as the process, and full
      collections no longer walk it.
    Reference counting still frees everything not in a cycle at once; only cycles wait longer."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


def _niced(nice: int, target, *args) -> None:
    """Run target(*args) on this thread at `nice` (settings.worker_nice) lower CPU priority (Linux: a nice value is
    per thread, and the threads this one starts, torch's OpenMP team among them, inherit it).

    Why: with the in-process worker, training's torch threads took the CPU from the API's request
    threads and event loop (RELIABILITY.md, Load: client metadata p99 686 ms with 50 clients while a
    job trained). Niced, training yields the cores whenever requests want them and uses them
    otherwise. Elsewhere (macOS, Windows) the thread runs at normal priority."""
    import os
    import sys

    if nice and sys.platform.startswith("linux"):
        tid = threading.get_native_id()
        try:
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
        except OSError as e:  # a negative value needs privileges: run at normal priority
            log.warning("could not renice the worker thread by %d: %s", nice, e)
    target(*args)


def start_worker_process(settings: Settings):
    """`modelmill worker` as a child process on the same settings (settings.child_env: this process's
    environment, where every other setting comes from MODELMILL_* variables, plus MODELMILL_HOME, which
    may have come from --home), at settings.worker_nice lower CPU priority so that API requests come first."""
    import os
    import signal
    import subprocess
    import sys

    nice = settings.worker_nice

    def in_child() -> None:
        if nice:
            os.nice(nice)
        try:  # Linux: SIGTERM the worker when the API process dies, even by SIGKILL (PR_SET_PDEATHSIG)
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
        except (OSError, AttributeError):
            pass

    log.info("starting the worker process (nice %d)", nice)
    return subprocess.Popen([sys.executable, "-m", "modelmill.cli", "worker"], env=settings.child_env(),
                            preexec_fn=in_child if sys.platform.startswith("linux") else None)


def stop_worker_process(child) -> None:
    import subprocess

    if child.poll() is None:
        child.terminate()  # the worker checkpoints and re-queues its job on SIGTERM
        try:
            child.wait(timeout=WORKER_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
