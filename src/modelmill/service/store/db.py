"""The SQLite database: WAL mode, one connection per thread, ordered named migrations.

Every thread that touches the store (request threads, the worker, its heartbeat) gets
its own connection, so no connection is ever shared across threads. Writers take the
database lock up front (`BEGIN IMMEDIATE`) so a read-then-write transaction can't be
overtaken by another process between its read and its write.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from modelmill.faults import crash_point
from modelmill.service.store.migrations import MIGRATIONS, apply_pending

log = logging.getLogger(__name__)

# Milliseconds a connection waits for another writer before raising "database is locked".
BUSY_TIMEOUT_MS = 30_000
# Seconds between an idle worker's reads of data_version (wait_for_change): a job the API creates is
# claimed this soon, not up to Settings.poll_seconds later.
CHANGE_CHECK_S = 0.02


class Database:
    """A handle on one SQLite file. Cheap to share; connections are per thread."""

    dialect = "sqlite"
    # Dialect hooks (pg.PostgresDatabase has the Postgres ones). Appended to a claim's SELECT and to a
    # read a transaction then writes on: nothing here, since BEGIN IMMEDIATE already holds the one
    # write lock for the whole transaction.
    claim_lock = ""
    row_lock = ""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._all: list[tuple[threading.Thread, sqlite3.Connection]] = []  # (the thread it belongs to, it)
        self._all_lock = threading.Lock()
        self._closed = False
        self._changes = _Changes(self.path)
        self.migrate()

    # -- connections -------------------------------------------------------------------

    def conn(self) -> sqlite3.Connection:
        """This thread's connection (opened on first use)."""
        local = self._local  # read once: close() replaces it, and a connection made now must not land on the new one
        c = getattr(local, "conn", None)
        if c is None:
            # isolation_level=None: autocommit; transactions are explicit (see transaction()).
            c = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                check_same_thread=False)
            c.row_factory = sqlite3.Row
            _enter_wal(c)
            c.execute("PRAGMA synchronous=NORMAL")
            c.execute("PRAGMA foreign_keys=ON")
            c.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            with self._all_lock:
                if self._closed:
                    c.close()
                    raise sqlite3.ProgrammingError(f"the database {self.path} is closed (the server is shutting down)")
                self._all.append((threading.current_thread(), c))
            local.conn = c
        return c

    def close(self) -> None:
        """Close this Database at shutdown: this thread's connection and those of threads that have
        ended now; a connection of a thread still running (a background report, a pool thread) is
        closed when that thread ends or this Database is collected, never under it. Closing a
        connection from another thread while that thread is inside execute() crashes the sqlite3
        module (CI saw a segfault from a dashboard report thread during an app's shutdown)."""
        with self._all_lock:
            self._closed = True
            conns, self._all = self._all, []
            # Drops this Database's references to the live threads' connections: each is closed when
            # its thread lets go of it (the thread ends, or its next conn() finds none and raises).
            self._local = threading.local()
        self._changes.close()
        me = threading.current_thread()
        for owner, c in conns:
            if owner is me or not owner.is_alive():
                try:
                    c.close()
                except sqlite3.ProgrammingError:
                    pass

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction holding the database lock from its first statement."""
        c = self.conn()
        c.execute("BEGIN IMMEDIATE")
        try:
            yield c
        except BaseException:
            c.execute("ROLLBACK")
            raise
        else:
            crash_point("store_commit")  # the reliability suite's "killed mid-write" point
            c.execute("COMMIT")

    def execute(self, sql: str, params: tuple | dict = ()) -> sqlite3.Cursor:
        return self.conn().execute(sql, params)

    def one(self, sql: str, params: tuple | dict = ()) -> sqlite3.Row | None:
        return self.conn().execute(sql, params).fetchone()

    def all(self, sql: str, params: tuple | dict = ()) -> list[sqlite3.Row]:
        return self.conn().execute(sql, params).fetchall()

    def data_version(self) -> int:
        """A number that moves whenever a connection commits (another process, or another thread of
        this one: the API creating a job, another worker). Read it before a claim, then
        wait_for_change(version, ...) after one that found nothing: a commit in between is not missed.
        A lock-free read (SQLite's PRAGMA data_version), where a claim (a write transaction) would
        contend with the API."""
        return self._changes.version()

    def wait_for_change(self, since: int, timeout: float, stop: threading.Event | None = None) -> bool:
        """Block until data_version() differs from `since` (True), `timeout` seconds pass or `stop` is
        set (False). SQLite can't push a change to another process, so one thread per Database reads
        data_version every CHANGE_CHECK_S while anyone waits, and wakes every waiter: the job loop
        and the webhook delivery threads idle on one lock-free read, not one each."""
        return self._changes.wait(since, timeout, stop)

    @staticmethod
    def now() -> float:
        """The clock leases are set and compared on: this machine's (one file, one machine)."""
        return time.time()

    @staticmethod
    def json_field(column: str, key: str) -> tuple[str, str]:
        """SQL for the value of `key` in JSON text `column`, with its one parameter."""
        return f"json_extract({column}, ?)", '$."' + key.replace('"', '""') + '"'

    # -- migrations --------------------------------------------------------------------

    def migrate(self) -> list[str]:
        """Apply, in order, every migration not yet recorded. Returns the names applied.

        Runs under the write lock, so two processes starting at once apply each migration once.
        """
        with self.transaction() as c:
            c.execute("CREATE TABLE IF NOT EXISTS schema_migrations ("
                      " name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")

            def run_script(_name: str, sql: str) -> None:
                for statement in _split_sql(sql):  # one statement per execute() here
                    c.execute(statement)

            applied_now = apply_pending(c, MIGRATIONS, run_script)
        if applied_now:
            log.info("applied migrations: %s", ", ".join(applied_now))
        return applied_now

    def applied_migrations(self) -> list[str]:
        return [r["name"] for r in self.all("SELECT name FROM schema_migrations ORDER BY rowid")]


def _enter_wal(c: sqlite3.Connection) -> None:
    """PRAGMA journal_mode=WAL, retried while another connection holds the lock. On a new file the first
    connections to arrive at once race to switch it to WAL, and SQLite answers the losers "database is
    locked" at once, without its busy handler (measured: 31 of 150 rounds of 4 Stores opened together
    failed). Once the file is in WAL mode the pragma is a no-op read."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    delay = 0.005
    while True:
        try:
            c.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() >= deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.2)


def _split_sql(script: str) -> list[str]:
    # executescript() would COMMIT our transaction, so statements run one by one.
    return [s.strip() for s in script.split(";") if s.strip()]


class _Changes:
    """Database.data_version / wait_for_change: commits to one SQLite file, as this process sees them.

    `count` moves when PRAGMA data_version on a connection of its own moves (any other connection's
    commit; this one never writes). A watcher thread re-reads it every CHANGE_CHECK_S, only while a
    thread waits, and wakes the waiters; it also wakes a waiter whose `stop` event was set. Its
    connection is used only under `_cond`, so close() never closes it under a running statement."""

    def __init__(self, path: Path):
        self._path = path
        self._cond = threading.Condition()
        self._conn: sqlite3.Connection | None = None
        self._raw: int | None = None  # the connection's data_version at the last read
        self._closed = False
        self._stops: list[threading.Event] = []  # one entry per waiting thread (a fresh Event if none given)
        self._watcher: threading.Thread | None = None
        self.count = 0

    def version(self) -> int:
        with self._cond:
            self._read()
            return self.count

    def wait(self, since: int, timeout: float, stop: threading.Event | None) -> bool:
        deadline = time.monotonic() + timeout
        stop = stop or threading.Event()
        with self._cond:
            self._stops.append(stop)
            try:
                if self._watcher is None:
                    self._watcher = threading.Thread(target=self._watch, name=f"sqlite-changes-{self._path.name}",
                                                     daemon=True)
                    self._watcher.start()
                while self.count == since:
                    left = deadline - time.monotonic()
                    if left <= 0 or stop.is_set() or self._closed:
                        return False
                    self._cond.wait(left)
                return True
            finally:
                self._stops.remove(stop)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            self._cond.notify_all()

    def _watch(self) -> None:
        while True:
            with self._cond:
                if not self._stops or self._closed:  # nobody waits: the next wait() starts a new watcher
                    self._watcher = None
                    return
                try:
                    self._read()
                except sqlite3.Error:  # e.g. a locked schema change; the next tick tries again
                    log.debug("reading data_version failed", exc_info=True)
                if any(s.is_set() for s in self._stops):
                    self._cond.notify_all()
            time.sleep(CHANGE_CHECK_S)

    def _read(self) -> None:
        """Re-read data_version (under _cond); a change moves `count` and wakes the waiters."""
        if self._closed:
            raise sqlite3.ProgrammingError(f"the database {self._path} is closed (the server is shutting down)")
        if self._conn is None:
            self._conn = sqlite3.connect(self._path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                         check_same_thread=False)
        raw = int(self._conn.execute("PRAGMA data_version").fetchone()[0])
        if self._raw is not None and raw != self._raw:
            self.count += 1
            self._cond.notify_all()
        self._raw = raw
