"""Event-loop lag: how late the API's event loop gets to what is ready, and what held it when it was late.

Why: under 50 clients while a job trains, the clients saw metadata p99 of ~1 s while the server's own
time for the same requests (openai-processing-ms, from the app receiving a request to its response)
had p99 ~200 ms (RELIABILITY.md, Load). The rest is spent before the app sees a request or after it
answers: accepting, reading and parsing it on the event loop, and writing the answer. All of that
waits whenever the loop is late. Two probes, both running for the app's whole lifespan:

- a task that sleeps SLEEP_S and records how much later than asked it woke (the lag every callback
  ready at that moment had), into the `modelmill_event_loop_lag_seconds` histogram of GET /metrics;
- a watchdog thread that, when the loop has not ticked for STALL_S, notes where the loop's thread
  was (its innermost frames): Python code of ours or a library's running on the loop (sync work to
  move off it), or the loop's own poll (then it was only waiting for the GIL or a CPU: other threads'
  work). At shutdown it logs the stall count and the places seen most (`stall_summary`).

The cost: SLEEP_S wake-ups of the loop (100 a second, each a few microseconds) and a thread that
wakes every WATCH_S.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import sys
import threading
import time
from contextlib import asynccontextmanager, suppress

from modelmill.service.core import metrics

log = logging.getLogger(__name__)

SLEEP_S = 0.010  # the probe's sleep; its overshoot is the lag
STALL_S = 0.25  # a loop not ticking for this long is a stall whose place the watchdog notes
WATCH_S = 0.05  # how often the watchdog looks
FRAMES = 4  # innermost frames kept per stall place
LONGEST = 5  # the longest stalls kept, with when and where
MAX_PLACES = 1000  # distinct stall places counted; later new ones count as "(other places)"


class LoopLag:
    """The probe and the watchdog of one event loop (see the module docstring)."""

    def __init__(self) -> None:
        self.last_tick = time.monotonic()
        self.lags: collections.deque[float] = collections.deque(maxlen=60_000)  # seconds, the last 10 minutes
        self.stalls = 0
        self.places: collections.Counter[str] = collections.Counter()
        # (lag s, seconds since the start, place, the busy other threads' places): the LONGEST stalls
        self.longest: list[tuple[float, float, str, list[str]]] = []
        self._started = time.monotonic()
        self._stall_place = ""  # where the watchdog saw the loop's thread during the stall in progress
        self._stall_others: list[str] = []  # and the other threads that were not idle
        self._loop_thread = threading.get_ident()
        self._stop = threading.Event()

    async def tick(self) -> None:
        """Sleep SLEEP_S again and again, recording each overshoot."""
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await asyncio.sleep(SLEEP_S)
            lag = loop.time() - started - SLEEP_S
            self.last_tick = time.monotonic()
            self.lags.append(lag)
            metrics.loop_lag(lag)
            if lag >= STALL_S:
                self._note_longest(lag)

    def watch(self) -> None:
        """The watchdog thread: note where the loop's thread is once per stall."""
        noted_at = None  # last_tick of the stall already noted
        while not self._stop.wait(WATCH_S):
            tick = self.last_tick
            if time.monotonic() - tick < STALL_S or tick == noted_at:
                continue
            noted_at = tick
            frames = sys._current_frames()  # noqa: SLF001 - the stdlib's way to see other threads
            self._stall_place = _place(frames.get(self._loop_thread))
            self._stall_others = _busy_threads(frames, skip={self._loop_thread, threading.get_ident()})
            self.stalls += 1
            # a long-lived server's distinct places are bounded (each stall adds at most one)
            known = self._stall_place in self.places or len(self.places) < MAX_PLACES
            self.places[self._stall_place if known else "(other places)"] += 1

    def _note_longest(self, lag: float) -> None:
        entry = (lag, self.last_tick - self._started - lag, self._stall_place or "(not seen by the watchdog)",
                 self._stall_others)
        self._stall_place, self._stall_others = "", []
        self.longest = sorted([*self.longest, entry], reverse=True)[:LONGEST]

    def summary(self) -> dict:
        """{"samples", "p50_ms", "p99_ms", "max_ms", "stalls", "stall_places": [[place, n], ...],
        "longest": [[lag ms, seconds after the start, place, [busy other thread: place, ...]], ...]}."""
        lags = sorted(self.lags)

        def q_ms(q: float) -> float | None:
            return round(lags[min(len(lags) - 1, int(q * len(lags)))] * 1000, 1) if lags else None

        return {"samples": len(lags), "p50_ms": q_ms(0.50), "p99_ms": q_ms(0.99), "max_ms": q_ms(1.0),
                "stalls": self.stalls, "stall_places": self.places.most_common(5),
                "longest": [[round(lag * 1000), round(at, 1), place, others] for lag, at, place, others in self.longest]}


def _place(frame, depth: int = FRAMES) -> str:
    """The innermost `depth` frames of a thread, innermost first, as "file:line function" joined by " < "."""
    parts = []
    while frame is not None and len(parts) < depth:
        code = frame.f_code
        parts.append(f"{'/'.join(code.co_filename.rsplit('/', 2)[-2:])}:{frame.f_lineno} {code.co_name}")
        frame = frame.f_back
    return " < ".join(parts) or "(no Python frame: C code or the loop's poll)"


# Where an idle thread waits (a pool thread waiting for work, a lock, a sleep): not a suspect for a stall.
_IDLE_FILES = ("threading.py", "queue.py", "selectors.py", "concurrent/futures/thread.py", "asyncio/base_events.py")


def _busy_threads(frames: dict, skip: set[int], most: int = 6) -> list[str]:
    """ "thread name: place" of the threads not waiting in an idle place, at most `most` of them: while the
    loop stalls, one of them held the GIL (or was in a C call that kept it)."""
    names = {t.ident: t.name for t in threading.enumerate()}
    out = []
    for ident, frame in frames.items():
        if ident in skip or frame.f_code.co_filename.endswith(_IDLE_FILES):
            continue
        out.append(f"{names.get(ident, ident)}: {_place(frame, 2)}")
    return out[:most]


@asynccontextmanager
async def running(app=None):
    """Run the probe and the watchdog while the block runs (the app's lifespan); app.state.loop_lag
    holds the LoopLag. At the end, the stall summary is logged (the load suite reads it)."""
    lag = LoopLag()
    if app is not None:
        app.state.loop_lag = lag
    task = asyncio.create_task(lag.tick())
    watchdog = threading.Thread(target=lag.watch, name="modelmill-loop-watchdog", daemon=True)
    watchdog.start()
    try:
        yield lag
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
        lag._stop.set()  # noqa: SLF001 - ours
        log.info("event loop lag: %s", stall_summary(lag))


def stall_summary(lag: LoopLag) -> str:
    import json

    return json.dumps(lag.summary())
