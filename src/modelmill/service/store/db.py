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
from modelmill.service.store.migrations import MIGRATIONS

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
            c.execute("PRAGMA journal_mode=WAL")
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
        """SQLite's PRAGMA data_version on this thread's connection: it changes whenever another
        connection (the API creating a job, another worker) commits. A read without a lock, so an
        idle worker can check it every few milliseconds where a claim (a write transaction) would
        contend with the API."""
        return int(self.one("PRAGMA data_version")[0])

    def wait_for_change(self, since: int, timeout: float, stop: threading.Event | None = None) -> bool:
        """Block until data_version() differs from `since` (True), `timeout` seconds pass or `stop` is
        set (False). SQLite can't push a change to another process, so this polls data_version every
        CHANGE_CHECK_S: a lock-free read, cheap enough to do that often."""
        deadline = time.monotonic() + timeout
        stop = stop or threading.Event()
        while not stop.wait(max(0.0, min(CHANGE_CHECK_S, deadline - time.monotonic()))):
            if self.data_version() != since:
                return True
            if time.monotonic() >= deadline:
                return False
        return False

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
        applied_now = []
        with self.transaction() as c:
            c.execute("CREATE TABLE IF NOT EXISTS schema_migrations ("
                      " name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")
            done = {r["name"] for r in c.execute("SELECT name FROM schema_migrations")}
            for name, sql in MIGRATIONS:
                if name in done:
                    continue
                for statement in _split_sql(sql):
                    c.execute(statement)
                c.execute("INSERT INTO schema_migrations (name, applied_at) VALUES (?, ?)",
                          (name, time.time()))
                applied_now.append(name)
        if applied_now:
            log.info("applied migrations: %s", ", ".join(applied_now))
        return applied_now

    def applied_migrations(self) -> list[str]:
        return [r["name"] for r in self.all("SELECT name FROM schema_migrations ORDER BY rowid")]


def _split_sql(script: str) -> list[str]:
    # executescript() would COMMIT our transaction, so statements run one by one.
    return [s.strip() for s in script.split(";") if s.strip()]
