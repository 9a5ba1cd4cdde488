"""The store under concurrency, on SQLite and on Postgres: many workers claiming at once, a fenced
write racing the API, migrations from two processes at once; then what only Postgres has (claims
that skip a locked row, the database's clock, start-up errors naming MODELMILL_DATABASE_URL).

SQLite is correct here because BEGIN IMMEDIATE serialises every write transaction. Postgres runs
READ COMMITTED, so the same outcomes rest on row locks (store/pg.py): these tests are what hold
them to it, against a real server (tools/pg_cluster.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from modelmill import errors
from modelmill.service.store import JobQueue, Store, open_store
from modelmill.service.store.migrations import MIGRATIONS
from modelmill.settings import Settings
from tests.service.conftest import DIALECTS
from tests.service.test_queue import Clock, add_job


@pytest.fixture(params=DIALECTS)
def dialect(request) -> str:
    return request.param


def test_many_workers_claiming_at_once_take_each_row_exactly_once(store):
    ids = [add_job(store, f"ftjob-{i:02d}") for i in range(24)]
    queue = store.job_queue(lease_seconds=60)
    claimed: list[str] = []
    failures: list[BaseException] = []
    start = threading.Barrier(6)

    def worker(n: int) -> None:
        try:
            start.wait()
            while (lease := queue.claim(f"w{n}")) is not None:
                claimed.append(lease.id)
        except BaseException as e:  # surfaced below: a thread's exception would otherwise vanish
            failures.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not failures
    assert sorted(claimed) == ids  # every row once: none twice, none missed
    assert {store.jobs.get(i).attempts for i in ids} == {1}


def test_a_fenced_write_holds_off_the_apis_takeover_until_it_commits(store):
    """The fenced check and the write after it are one: once the check passes, the API can't take
    the row over (bump its token) until the write has committed, so no stale write lands after a
    takeover. On Postgres that is the row lock the fenced transaction takes."""
    clock = Clock()
    store.jobs.clock = clock
    queue = JobQueue(store.db, lease_seconds=10, clock=clock)
    job = add_job(store, "ftjob-a")
    lease = queue.claim("w1")
    clock.t += 11  # the lease has run out: the API may take the job over
    cancelled = threading.Event()

    def cancel() -> None:
        store.jobs.cancel(job)
        cancelled.set()

    with queue.fenced(lease) as c:  # the check passed: the worker still holds the job
        api = threading.Thread(target=cancel)
        api.start()
        assert not cancelled.wait(0.5)  # the takeover waits for this transaction
        queue.write(c, lease, {"status": "running"})
    api.join(timeout=30)
    assert cancelled.is_set()
    assert store.jobs.get(job).status == "cancelled"  # applied after the write, not lost under it
    with pytest.raises(errors.FencedOutError):
        queue.update(lease, status="running")  # and the old holder is fenced out from then on


def open_stores_at_once(db_path, files_dir, n: int = 4, **kwargs) -> tuple[list[Store], list[BaseException]]:
    """n threads each open their own Store (their own connections) at the same moment, as n
    processes starting together would: the Stores opened and the errors raised."""
    stores, failures = [], []
    start = threading.Barrier(n)

    def open_one() -> None:
        try:
            start.wait()
            stores.append(Store(db_path, files_dir, **kwargs))
        except BaseException as e:
            failures.append(e)

    threads = [threading.Thread(target=open_one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return stores, failures


def test_processes_starting_at_once_apply_each_migration_once(settings):
    """Each thread opens its own Store (its own connections), as separate processes would."""
    stores, failures = open_stores_at_once(settings.db_path, settings.files_dir, database_url=settings.database_url)
    assert not failures
    names = [n for n, _ in MIGRATIONS]
    assert all(s.db.applied_migrations() == names for s in stores)
    assert stores[0].db.one("SELECT count(*) FROM schema_migrations")[0] == len(names)
    for s in stores:
        s.close()


# -- SQLite only -----------------------------------------------------------------------------------

CLOSE_RACE = """
import sqlite3, sys, threading
from pathlib import Path
from modelmill.service.store.db import Database

outcomes = []
for n in range(20):
    db = Database(Path(sys.argv[1]) / f"r{n}.sqlite3")
    db.execute("CREATE TABLE t (x)")
    db.execute("INSERT INTO t VALUES (1)")
    started = threading.Event()

    def reader():
        try:
            while True:
                db.one("WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < 2000) "
                       "SELECT sum(n) FROM c, t")
                started.set()
        except sqlite3.ProgrammingError as e:
            outcomes.append(str(e))

    readers = [threading.Thread(target=reader) for _ in range(3)]
    for t in readers:
        t.start()
    started.wait()
    db.close()
    for t in readers:
        t.join(timeout=30)
        assert not t.is_alive(), "a reader went on after close()"
print(len(outcomes), sum("is closed" in o for o in outcomes))
"""


def test_closing_a_sqlite_database_while_other_threads_read_it_ends_them_with_an_error(tmp_path):
    """What CI saw: an app shut down (Database.close()) while a dashboard report thread was inside a
    query, and the sqlite3 module segfaulted. close() now leaves a running thread's connection to that
    thread, whose next use raises "closed"; run in a child so a crash fails the test, not the session."""
    result = subprocess.run([sys.executable, "-c", CLOSE_RACE, str(tmp_path)], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "PYTHONFAULTHANDLER": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["60", "60"]  # every reader of every round ended on "closed"


def test_stores_opened_at_once_on_a_new_sqlite_file_all_open(tmp_path):
    """The first connections to a new file race to switch it to WAL, and SQLite answers the losers
    "database is locked" without waiting (this failed 31 of 150 rounds before db._enter_wal retried)."""
    for n in range(25):
        folder = tmp_path / str(n)
        stores, failures = open_stores_at_once(folder / "db.sqlite3", folder / "files")
        for s in stores:
            s.close()
        assert not failures, f"round {n}: {failures}"
        assert len(stores) == 4


# -- Postgres only ---------------------------------------------------------------------------------

@pytest.mark.parametrize("dialect", ["postgres"])
def test_a_claim_skips_a_row_another_transaction_holds(store):
    """FOR UPDATE SKIP LOCKED: a claim takes the next free row at once instead of queueing behind a
    row that another worker's claim (here, a transaction holding its lock) is taking."""
    a, b = add_job(store, "ftjob-a"), add_job(store, "ftjob-b")
    queue = store.job_queue(lease_seconds=60)
    holding, release = threading.Event(), threading.Event()

    def hold_a() -> None:
        with store.db.transaction() as c:
            c.execute("SELECT id FROM jobs WHERE id = ?" + store.db.row_lock, (a,))
            holding.set()
            release.wait(30)

    holder = threading.Thread(target=hold_a)
    holder.start()
    assert holding.wait(10)
    started = time.monotonic()
    lease = queue.claim("w2")
    took = time.monotonic() - started
    release.set()
    holder.join(timeout=10)
    assert lease.id == b and took < 2
    assert queue.claim("w3").id == a  # free again once the holder committed


@pytest.mark.parametrize("dialect", ["postgres"])
def test_lease_times_come_from_the_database_clock(store):
    queue = store.job_queue(lease_seconds=30)
    assert queue.clock == store.db.now  # the store's clock: clock_timestamp() on the server
    add_job(store, "ftjob-a")
    lease = queue.claim("w1")
    db_now = store.db.one("SELECT extract(epoch FROM clock_timestamp())::float8")[0]
    expires = store.jobs.get(lease.id).lease_expires_at
    assert 28 < expires - db_now <= 30


@pytest.mark.parametrize("dialect", ["postgres"])
def test_a_claimable_row_notifies_and_a_heartbeat_does_not(store):
    queue = store.job_queue(lease_seconds=30)
    version = store.db.data_version()
    add_job(store, "ftjob-a")  # a new claimable row: NOTIFY
    assert store.db.wait_for_change(version, timeout=5)
    lease = queue.claim("w1")
    time.sleep(0.2)  # any notification from the claim itself would have arrived by now
    version = store.db.data_version()
    queue.heartbeat(lease)
    queue.update(lease, status="running")  # held: nobody could claim it, so nobody is woken
    assert not store.db.wait_for_change(version, timeout=0.5)
    queue.finish(lease, "queued")  # handed back: claimable again
    assert store.db.wait_for_change(version, timeout=5)


def test_an_unreachable_database_is_a_startup_error_naming_the_variable(tmp_path):
    home = tmp_path / "home"
    url = "postgresql://modelmill:sekret@127.0.0.1:1/modelmill"  # nothing listens on port 1
    with pytest.raises(errors.ConfigurationError) as caught:
        open_store(Settings(home=home, database_url=url))
    message = caught.value.message
    assert "MODELMILL_DATABASE_URL" in message and "127.0.0.1:1" in message and "sekret" not in message
    assert caught.value.param == "MODELMILL_DATABASE_URL"
    assert not (home / "modelmill.db").exists()  # no silent fallback to SQLite

    with pytest.raises(errors.ConfigurationError, match="MODELMILL_DATABASE_URL must be a postgresql://"):
        open_store(Settings(home=home, database_url="mysql://root@127.0.0.1/modelmill"))


def test_the_cli_reports_an_unreachable_database_in_one_line(tmp_path):
    env = dict(os.environ, MODELMILL_DATABASE_URL="postgresql://modelmill@127.0.0.1:1/modelmill")
    r = subprocess.run([sys.executable, "-m", "modelmill.cli", "keys", "create", "--home", str(tmp_path / "home")],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert r.stderr.startswith("modelmill: MODELMILL_DATABASE_URL: cannot connect to"), r.stderr
