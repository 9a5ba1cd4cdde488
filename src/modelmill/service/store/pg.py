"""The Postgres database (MODELMILL_DATABASE_URL=postgresql://...): the same interface as db.Database.

The store's modules are written once, in SQL both dialects run (`?` placeholders, ON CONFLICT,
LIMIT), against the handful of methods db.Database has: transaction(), execute/one/all, conn(),
now(), data_version()/wait_for_change(), migrate(), and the dialect hooks (claim_lock, row_lock,
json_field). This module gives Postgres those methods:

- psycopg 3 with a psycopg_pool ConnectionPool. Outside a transaction every statement runs on a
  pooled connection in autocommit; transaction() holds one pooled connection for its block, and
  the statements the same thread runs inside the block (through the yielded object *or* through
  execute/one/all, as on SQLite's per-thread connection) run in that transaction.
- READ COMMITTED. Correctness does not rest on SQLite's one-writer lock: claims lock the row they
  take (FOR NO KEY UPDATE SKIP LOCKED, so workers never wait on each other), a fenced write locks
  the leased row before checking its token, and the API's read-then-write changes lock the row
  they read (row_lock).
- Rows behave like sqlite3.Row (r["col"], r[0], r.keys()), and results are fetched whole before
  the connection goes back to the pool, so callers use them like a sqlite3 cursor.
- Time: now() is the database's clock_timestamp(), so every lease expiry is set and compared on
  one clock, whichever machine the worker runs on.
- Wake-up: a trigger (Postgres migrations, pg_migrations.py) NOTIFYs `modelmill_work` whenever a
  job or eval run becomes claimable; one LISTEN connection per process counts notifications, and
  wait_for_change() returns as soon as one arrives.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from contextlib import contextmanager
from functools import lru_cache
from typing import Iterator

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool

from modelmill import errors
from modelmill.faults import crash_point
from modelmill.service.store.migrations import MIGRATIONS, apply_pending
from modelmill.service.store.pg_migrations import postgres_sql

log = logging.getLogger(__name__)

ENV = "MODELMILL_DATABASE_URL"
# The NOTIFY channel the claimable-row triggers signal on (pg_migrations.py).
CHANNEL = "modelmill_work"
# pg_advisory_xact_lock key serialising migrations across processes ("mmigrate" as an int64).
MIGRATION_LOCK = 0x6D6D696772617465
# Connections kept by one process: request threads, the worker, its heartbeats. A thread holds at
# most one at a time (nested statements reuse its transaction's connection), so waiting for a free
# one can't deadlock.
POOL_MAX = 20
# Seconds to wait for the database at start-up before reporting it unreachable.
CONNECT_TIMEOUT_S = 10
# Seconds a thread waits for a free pooled connection before failing its request.
POOL_TIMEOUT_S = 30.0
# Seconds between the listener's checks of whether it should stop (it wakes on a notification at once).
LISTEN_SLICE_S = 0.5


def describe(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        d = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "(an unparseable URL)"
    return f"postgresql://{d.get('user', '')}@{d.get('host', 'localhost')}:{d.get('port', 5432)}/{d.get('dbname', '')}"


def check_url(url: str) -> None:
    if not re.match(r"^postgres(ql)?://", url):
        raise errors.ConfigurationError(f"{ENV} must be a postgresql://user:password@host:port/dbname URL; got "
                                 f"{url.split('://')[0]!r} as its scheme", param=ENV)


# -- rows and results shaped like sqlite3's -------------------------------------------------------

class Row(tuple):
    """A result row with sqlite3.Row's interface: by position, by column name, and keys()."""

    _names: tuple[str, ...] = ()
    _index: dict[str, int] = {}

    def __getitem__(self, key):
        if isinstance(key, str):
            return tuple.__getitem__(self, self._index[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._names)


@lru_cache(maxsize=1024)
def _row_class(names: tuple[str, ...]) -> type[Row]:
    return type("Row", (Row,), {"_names": names, "_index": {n: i for i, n in enumerate(names)}})


def row_factory(cursor):
    """psycopg row factory: one Row subclass per column list (cached), so rows stay plain tuples."""
    if cursor.description is None:
        return tuple
    cls = _row_class(tuple(c.name for c in cursor.description))
    return cls


class Result:
    """A finished statement's rows and rowcount (fetched whole: the connection is gone by now)."""

    def __init__(self, rows: list, rowcount: int):
        self._rows, self.rowcount, self._next = rows, rowcount, 0

    def fetchone(self):
        if self._next >= len(self._rows):
            return None
        self._next += 1
        return self._rows[self._next - 1]

    def fetchall(self) -> list:
        rest, self._next = self._rows[self._next:], len(self._rows)
        return rest

    def __iter__(self):
        return iter(self.fetchall())


@lru_cache(maxsize=2048)
def translate(sql: str) -> str:
    """SQLite's `?` placeholders -> psycopg's `%s` (and a literal `%` -> `%%`), outside quotes.
    Hand-written because the statements are shared with SQLite: a tiny scanner, cached per statement."""
    out, quote = [], None
    for ch in sql:
        if quote:
            out.append("%%" if ch == "%" else ch)
            if ch == quote:
                quote = None
        elif ch in ("'", '"'):
            quote = ch
            out.append(ch)
        elif ch == "?":
            out.append("%s")
        else:
            out.append("%%" if ch == "%" else ch)
    return "".join(out)


def _params(params):
    # SQLite stores a Python bool as 0/1 in an INTEGER column; Postgres would refuse a boolean there.
    if isinstance(params, dict):
        raise TypeError("named parameters are not used by the store")
    return [int(p) if isinstance(p, bool) else p for p in params]


def _run(conn: psycopg.Connection, sql: str, params) -> Result:
    cur = conn.execute(translate(sql), _params(params))
    rows = cur.fetchall() if cur.description is not None else []
    return Result(rows, cur.rowcount)


class _Tx:
    """What transaction() yields: statements on the transaction's connection, sqlite3-style."""

    dialect = "postgres"  # for store code that has only the transaction (store/webhooks.enqueue's NOTIFY)

    def __init__(self, conn: psycopg.Connection):
        self.raw = conn

    def execute(self, sql: str, params=()) -> Result:
        return _run(self.raw, sql, params)


class _Auto:
    """What conn() returns outside a transaction: each statement on a pooled autocommit connection."""

    def __init__(self, db: "PostgresDatabase"):
        self.db = db

    def execute(self, sql: str, params=()) -> Result:
        return self.db.execute(sql, params)


# -- the database ------------------------------------------------------------------------------

class PostgresDatabase:
    """A handle on one Postgres database. Cheap to share across threads; connections are pooled."""

    dialect = "postgres"
    # Appended to a claim's SELECT: lock the row taken, skip rows other claims hold (no waiting).
    claim_lock = " FOR NO KEY UPDATE SKIP LOCKED"
    # Appended to a read that a transaction then writes on (a fenced write, the API's cancel):
    # lock the row, so the check holds until commit under READ COMMITTED. NO KEY: foreign-key
    # checks of events/items inserted for the row by others don't wait on it.
    row_lock = " FOR NO KEY UPDATE"

    def __init__(self, url: str):
        check_url(url)
        self.url = url
        self._connect_check()
        self.pool = ConnectionPool(url, min_size=1, max_size=POOL_MAX, timeout=POOL_TIMEOUT_S, open=True,
                                   kwargs={"autocommit": True, "row_factory": row_factory})
        self._local = threading.local()
        self._listener: _Listener | None = None
        self._listener_lock = threading.Lock()
        self.migrate()

    def _connect_check(self) -> None:
        """One connection up front, so a wrong URL or a database that is down is reported at start-up,
        naming the variable, instead of as a pool timeout at the first request."""
        try:
            psycopg.connect(self.url, connect_timeout=CONNECT_TIMEOUT_S).close()
        except psycopg.Error as e:
            reason = " ".join(line.strip() for line in str(e).splitlines() if line.strip()) or type(e).__name__
            raise errors.ConfigurationError(f"{ENV}: cannot connect to {describe(self.url)}: {reason}", param=ENV) from None

    # -- connections -------------------------------------------------------------------

    def conn(self):
        """This thread's transaction if it is in one, else an autocommit executor (see _Auto)."""
        return getattr(self._local, "tx", None) or _Auto(self)

    def close(self) -> None:
        if self._listener is not None:
            self._listener.stop()
        self.pool.close()

    @contextmanager
    def transaction(self) -> Iterator[_Tx]:
        """A transaction on one pooled connection (READ COMMITTED; see the module docstring)."""
        if getattr(self._local, "tx", None) is not None:
            raise RuntimeError("cannot start a transaction within a transaction")
        with self.pool.connection() as conn:
            tx = _Tx(conn)
            self._local.tx = tx
            try:
                with conn.transaction():
                    yield tx
                    crash_point("store_commit")  # the reliability suite's "killed mid-write" point
            finally:
                self._local.tx = None

    def execute(self, sql: str, params=()) -> Result:
        tx = getattr(self._local, "tx", None)
        if tx is not None:
            return tx.execute(sql, params)
        with self.pool.connection() as conn:
            return _run(conn, sql, params)

    def one(self, sql: str, params=()):
        return self.execute(sql, params).fetchone()

    def all(self, sql: str, params=()) -> list:
        return self.execute(sql, params).fetchall()

    # -- dialect hooks -----------------------------------------------------------------

    def now(self) -> float:
        """The database's clock (Unix seconds): lease expiries are set and compared on it."""
        return float(self.one("SELECT extract(epoch FROM clock_timestamp())::float8")[0])

    @staticmethod
    def json_field(column: str, key: str) -> tuple[str, str]:
        """SQL for the text value of `key` in JSON text `column`, with its one parameter."""
        return f"({column}::jsonb ->> ?)", key

    # -- waking idle workers -----------------------------------------------------------

    def data_version(self) -> int:
        """How many claimable-row notifications this process has received (starts listening on
        first use). Read it before a claim, then wait_for_change(version, ...) after one that found
        nothing: a row made claimable in between is not missed."""
        return self._listen().count

    def wait_for_change(self, since: int, timeout: float, stop: threading.Event | None = None) -> bool:
        """Block until a notification newer than `since` arrives (True), `timeout` seconds pass or
        `stop` is set (False). Wakes on the notification itself: no polling delay."""
        return self._listen().wait(since, timeout, stop)

    def _listen(self) -> "_Listener":
        with self._listener_lock:
            if self._listener is None:
                self._listener = _Listener(self.url)
            return self._listener

    # -- migrations --------------------------------------------------------------------

    def migrate(self) -> list[str]:
        """Apply, in order, every migration not yet recorded (the same names as on SQLite, each in its
        Postgres form). A transaction-scoped advisory lock serialises processes starting at once."""
        with self.transaction() as c:
            c.execute("SELECT pg_advisory_xact_lock(?)", (MIGRATION_LOCK,))
            c.raw.execute("CREATE TABLE IF NOT EXISTS schema_migrations ("
                          " seq BIGINT GENERATED BY DEFAULT AS IDENTITY, name TEXT PRIMARY KEY,"
                          " applied_at DOUBLE PRECISION NOT NULL)")
            # a whole script at once: no parameters, several statements
            applied_now = apply_pending(c, MIGRATIONS, lambda name, sql: c.raw.execute(postgres_sql(name, sql)))
        if applied_now:
            log.info("applied migrations: %s", ", ".join(applied_now))
        return applied_now

    def applied_migrations(self) -> list[str]:
        return [r["name"] for r in self.all("SELECT name FROM schema_migrations ORDER BY seq")]


class _Listener:
    """One LISTEN connection per process, on its own thread: counts notifications and wakes waiters.
    If the connection drops it reconnects, and counts the gap as a change (a notification may have
    been missed, so waiters go and claim)."""

    def __init__(self, url: str):
        self.url = url
        self.count = 0
        self._cond = threading.Condition()
        self._halt = threading.Event()
        self._conn = self._connect()
        self._thread = threading.Thread(target=self._loop, name="pg-listen", daemon=True)
        self._thread.start()

    def _connect(self) -> psycopg.Connection:
        conn = psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
        conn.execute(f"LISTEN {CHANNEL}")
        return conn

    def _bump(self) -> None:
        with self._cond:
            self.count += 1
            self._cond.notify_all()

    def _loop(self) -> None:
        while not self._halt.is_set():
            try:
                for _ in self._conn.notifies(timeout=LISTEN_SLICE_S):
                    self._bump()
            except psycopg.Error as e:
                if self._halt.is_set():
                    return
                log.warning("lost the LISTEN connection (%s); reconnecting", e)
                self._bump()
                self._halt.wait(1.0)
                try:
                    self._conn = self._connect()
                except psycopg.Error:
                    continue

    def wait(self, since: int, timeout: float, stop: threading.Event | None) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.count == since:
                left = deadline - time.monotonic()
                if left <= 0 or (stop is not None and stop.is_set()):
                    return False
                # Short slices only so a set `stop` is seen promptly; a notification wakes it at once.
                self._cond.wait(min(left, 0.1 if stop is not None else left))
            return True

    def stop(self) -> None:
        self._halt.set()
        self._thread.join(timeout=2 * LISTEN_SLICE_S + 1)
        try:
            self._conn.close()
        except psycopg.Error:
            pass
