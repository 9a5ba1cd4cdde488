"""The store: migrations, WAL, per-thread connections, blobs named by server id, hashed keys.
Every test that opens a store runs on SQLite and on Postgres (the `dialect` fixture)."""

from __future__ import annotations

import threading

import pytest

from modelmill import errors
from modelmill.service.core.auth import create_key
from modelmill.service.store import Store, open_store
from modelmill.service.store.migrations import MIGRATIONS
from tests.service.conftest import DIALECTS


@pytest.fixture(params=DIALECTS)
def dialect(request) -> str:
    return request.param


def test_migrations_apply_in_order_once(settings):
    store = open_store(settings)
    assert store.db.applied_migrations() == [name for name, _ in MIGRATIONS]
    assert store.db.migrate() == []  # re-running applies nothing
    store.close()
    # a second process opening the same db
    again = Store(settings.db_path, settings.files_dir, database_url=settings.database_url)
    assert again.db.applied_migrations() == [name for name, _ in MIGRATIONS]
    again.close()


def test_migration_names_are_ordered_and_unique():
    names = [n for n, _ in MIGRATIONS]
    assert names == sorted(names) and len(set(names)) == len(names)


@pytest.mark.parametrize("dialect", ["sqlite"])  # SQLite's own; Postgres pools (test_store_concurrency.py)
def test_wal_mode_and_one_connection_per_thread(store):
    assert store.db.one("PRAGMA journal_mode")[0] == "wal"
    seen = []
    t = threading.Thread(target=lambda: seen.append(store.db.conn()))
    t.start()
    t.join()
    assert seen[0] is not store.db.conn()
    assert store.db.conn() is store.db.conn()


def test_blob_is_named_by_server_id_not_client_filename(store):
    record = store.files.add_bytes(b"hello", "../../etc/passwd", "fine-tune")
    assert record.filename == "../../etc/passwd"  # metadata only
    path = store.files.blob_path(record.id)
    assert path.parent == store.files.files_dir and path.name == record.id
    assert path.read_bytes() == b"hello"
    store.files.delete(record.id)
    assert not path.exists()
    with pytest.raises(errors.NotFoundError):
        store.files.get(record.id)


def test_blob_writer_cap_discards_partial_file(store):
    w = store.files.writer(max_bytes=10)
    w.write(b"12345")
    with pytest.raises(errors.PayloadTooLargeError):
        w.write(b"678901")
    assert not w.path.exists()
    assert [p for p in store.files.files_dir.iterdir()] == []


def test_api_keys_are_stored_hashed_and_verified(store):
    assert not store.keys.any()
    key = create_key(store, "ci")
    assert key.startswith("sk-") and len(key) > 40
    stored = store.db.one("SELECT * FROM api_keys")
    assert key not in tuple(stored) and stored["key_hash"] != key
    assert store.keys.verify(key).name == "ci"
    assert store.keys.verify(key + "x") is None and store.keys.verify("") is None
    assert store.keys.list()[0].prefix == key[:8]
    store.keys.revoke(store.keys.list()[0].id)
    assert store.keys.verify(key) is None


def test_list_pagination_after_limit_order(store):
    ids = [store.files.add_bytes(b"x", f"{i}.jsonl", "fine-tune").id for i in range(5)]
    page = store.files.list(limit=2)
    assert [f.id for f in page.items] == ids[::-1][:2] and page.has_more
    page2 = store.files.list(limit=2, after=page.items[-1].id)
    assert [f.id for f in page2.items] == ids[::-1][2:4]
    asc = store.files.list(order="asc", limit=10)
    assert [f.id for f in asc.items] == ids and not asc.has_more
    with pytest.raises(errors.InvalidRequestError):
        store.files.list(after="file-nope")
