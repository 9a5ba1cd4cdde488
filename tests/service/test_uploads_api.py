"""/v1/uploads: create, parts, complete (order, md5, the File made), cancel, expiry and the sweep; every
bad input a 4xx naming its field, never a 5xx; uploads belong to their project."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor

from modelmill.service.api import housekeeping
from modelmill.service.api.uploads import FORM_OVERHEAD_BYTES
from modelmill.service.store.uploads import MAX_PART_BYTES, MAX_UPLOAD_BYTES, UPLOAD_TTL_S, NewUpload
from tests.spec_check import assert_matches


def create(client, size: int, **extra) -> dict:
    body = {"filename": "train.jsonl", "purpose": "fine-tune", "bytes": size, "mime_type": "text/jsonl", **extra}
    r = client.post("/v1/uploads", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def add_part(client, upload_id: str, data: bytes) -> dict:
    r = client.post(f"/v1/uploads/{upload_id}/parts", files={"data": ("blob", data)})
    assert r.status_code == 200, r.text
    return r.json()


def refused(r, status: int, param: str) -> dict:
    """The response is OpenAI's error envelope with `status`, naming `param`."""
    assert r.status_code == status, r.text
    assert_matches(r.json(), "ErrorResponse")
    assert r.json()["error"]["param"] == param, r.json()
    return r.json()["error"]


def test_parts_complete_in_the_given_order_into_a_file(client, store, settings):
    up = create(client, 10)
    assert_matches(up, "Upload")
    assert up["status"] == "pending" and up["expires_at"] == up["created_at"] + UPLOAD_TTL_S and "file" not in up
    a, b = add_part(client, up["id"], b"hello"), add_part(client, up["id"], b"world")
    assert_matches(a, "UploadPart")
    assert a["upload_id"] == up["id"] and a["id"].startswith("part_")
    assert len(list(store.uploads.parts_dir(up["id"]).iterdir())) == 2

    md5 = hashlib.md5(b"worldhello").hexdigest()
    done = client.post(f"/v1/uploads/{up['id']}/complete", json={"part_ids": [b["id"], a["id"]], "md5": md5}).json()
    assert_matches(done, "Upload")
    assert done["status"] == "completed" and done["file"]["bytes"] == 10
    assert done["file"]["filename"] == "train.jsonl" and done["file"]["purpose"] == "fine-tune"
    assert client.get(f"/v1/files/{done['file']['id']}/content").content == b"worldhello"
    assert not store.uploads.parts_dir(up["id"]).exists()  # the parts go once assembled
    assert [p.name for p in settings.files_dir.iterdir() if p.name != ".uploads"] == [done["file"]["id"]]
    job = client.post("/v1/fine_tuning/jobs", json={"model": "modelmill-tiny", "training_file": done["file"]["id"]})
    assert job.status_code == 200, job.text  # a normal File: a job takes it (its lines are checked by the worker)


def test_create_refuses_bad_fields(client):
    good = {"filename": "a.jsonl", "purpose": "fine-tune", "bytes": 3, "mime_type": "text/jsonl"}
    cases = [({"purpose": "nope"}, "purpose"), ({"bytes": -1}, "bytes"), ({"bytes": MAX_UPLOAD_BYTES + 1}, "bytes"),
             ({"bytes": "3"}, "bytes"), ({"filename": ""}, "filename"), ({"mime_type": ""}, "mime_type"),
             ({"expires_after": {"anchor": "created_at", "seconds": 60}}, "expires_after.seconds"),
             ({"expires_after": {"anchor": "last_active_at", "seconds": 3600}}, "expires_after.anchor"),
             ({"colour": "red"}, "colour")]
    for change, param in cases:
        refused(client.post("/v1/uploads", json={**good, **change}), 400, param)
    body = dict(good)
    del body["mime_type"]
    refused(client.post("/v1/uploads", json=body), 400, "mime_type")


def test_wrong_part_sizes_are_refused(client, store):
    up = create(client, 4)
    refused(client.post(f"/v1/uploads/{up['id']}/parts", files={"data": ("blob", b"12345")}), 413, "data")
    refused(client.post(f"/v1/uploads/{up['id']}/parts", files={"data": ("blob", b"")}), 400, "data")
    refused(client.post(f"/v1/uploads/{up['id']}/parts", files={"file": ("blob", b"12")}), 400, "data")
    refused(client.post(f"/v1/uploads/{up['id']}/parts", data={"data": "12"}), 400, "data")  # not multipart
    r = client.post(f"/v1/uploads/{up['id']}/parts", files={"data": ("blob", b"12")}, data={"purpose": "x"})
    assert r.status_code == 400 and "purpose" in r.json()["error"]["message"]
    # Past OpenAI's 64 MiB the edge refuses it from the Content-Length, before reading the body.
    huge = str(MAX_PART_BYTES + FORM_OVERHEAD_BYTES + 1)
    r = client.post(f"/v1/uploads/{up['id']}/parts", content=b"--b--\r\n",
                    headers={"content-type": "multipart/form-data; boundary=b", "content-length": huge})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    assert not store.uploads.parts_dir(up["id"]).exists()  # nothing kept from any refused part
    assert [p.name for p in store.files.files_dir.iterdir() if p.name != ".uploads"] == []


def test_complete_refuses_duplicate_missing_foreign_parts_and_bytes_mismatch(client):
    up, other = create(client, 4), create(client, 2)
    a, b = add_part(client, up["id"], b"ab"), add_part(client, up["id"], b"cd")
    theirs = add_part(client, other["id"], b"ef")
    url = f"/v1/uploads/{up['id']}/complete"
    assert refused(client.post(url, json={"part_ids": [a["id"], a["id"]]}), 400, "part_ids")["code"] == "duplicate_part"
    error = refused(client.post(url, json={"part_ids": [a["id"], "part_nope"]}), 400, "part_ids")
    assert error["code"] == "invalid_part" and "part_ids[1]" in error["message"]
    error = refused(client.post(url, json={"part_ids": [a["id"], theirs["id"]]}), 400, "part_ids")
    assert theirs["id"] in error["message"]
    error = refused(client.post(url, json={"part_ids": [a["id"]]}), 400, "part_ids")
    assert error["code"] == "bytes_mismatch" and "bytes=4" in error["message"]
    refused(client.post(url, json={}), 400, "part_ids")
    refused(client.post(url, json={"part_ids": [a["id"], b["id"]], "md5": "not-an-md5"}), 400, "md5")
    error = refused(client.post(url, json={"part_ids": [a["id"], b["id"]], "md5": hashlib.md5(b"cdab").hexdigest()}),
                    400, "md5")
    assert error["code"] == "md5_mismatch"
    # None of that spent the upload: the right list still completes it, once.
    done = client.post(url, json={"part_ids": [a["id"], b["id"]], "md5": hashlib.md5(b"abcd").hexdigest()})
    assert done.status_code == 200 and done.json()["file"]["bytes"] == 4
    refused(client.post(url, json={"part_ids": [a["id"], b["id"]]}), 409, "upload_id")
    refused(client.post(f"/v1/uploads/{up['id']}/parts", files={"data": ("blob", b"x")}), 409, "upload_id")


def test_cancel_removes_parts_and_ends_the_upload(client, store):
    up = create(client, 2)
    part = add_part(client, up["id"], b"xy")
    cancelled = client.post(f"/v1/uploads/{up['id']}/cancel")
    assert cancelled.status_code == 200
    assert_matches(cancelled.json(), "Upload")
    assert cancelled.json()["status"] == "cancelled"
    assert not store.uploads.parts_dir(up["id"]).exists()
    refused(client.post(f"/v1/uploads/{up['id']}/complete", json={"part_ids": [part["id"]]}), 409, "upload_id")
    refused(client.post(f"/v1/uploads/{up['id']}/parts", files={"data": ("blob", b"x")}), 409, "upload_id")
    refused(client.post(f"/v1/uploads/{up['id']}/cancel"), 409, "upload_id")
    refused(client.post("/v1/uploads/upload_nope/cancel"), 404, "upload_id")


def _age(store, upload_id: str) -> None:
    store.db.execute("UPDATE uploads SET expires_at = ? WHERE id = ?", (store.clock() - 1, upload_id))


def test_an_expired_upload_is_cleaned_on_access(client, store):
    up = create(client, 2)
    part = add_part(client, up["id"], b"xy")
    _age(store, up["id"])
    error = refused(client.post(f"/v1/uploads/{up['id']}/complete", json={"part_ids": [part["id"]]}), 409, "upload_id")
    assert "expired" in error["message"]
    assert not store.uploads.parts_dir(up["id"]).exists()
    assert store.uploads.get(up["id"], "proj_default").status == "expired"
    refused(client.post(f"/v1/uploads/{up['id']}/cancel"), 409, "upload_id")


def test_the_sweep_expires_uploads_and_removes_leftover_parts(client, store):
    old, live = create(client, 2), create(client, 2)
    add_part(client, old["id"], b"xy")
    add_part(client, live["id"], b"xy")
    _age(store, old["id"])
    stray = store.uploads.root / "upload_gone"  # e.g. a part that landed while its upload was cancelled
    stray.mkdir()
    (stray / "part_x").write_bytes(b"z")
    housekeeping.sweep_once(store)
    assert not store.uploads.parts_dir(old["id"]).exists() and not stray.exists()
    assert store.uploads.get(old["id"], "proj_default").status == "expired"
    assert len(list(store.uploads.parts_dir(live["id"]).iterdir())) == 1  # a pending upload keeps its parts


def test_expires_after_sets_the_file_expiry_and_it_is_honoured(client, store):
    up = create(client, 2, expires_after={"anchor": "created_at", "seconds": 7200})
    part = add_part(client, up["id"], b"xy")
    f = client.post(f"/v1/uploads/{up['id']}/complete", json={"part_ids": [part["id"]]}).json()["file"]
    assert_matches(f, "OpenAIFile")
    assert f["expires_at"] - f["created_at"] in (7199, 7200, 7201)
    store.db.execute("UPDATE files SET expires_at = 1 WHERE id = ?", (f["id"],))
    assert client.get(f"/v1/files/{f['id']}").status_code == 404  # expired: gone on access
    assert not store.files.blob_path(f["id"]).exists()
    up2 = create(client, 1, expires_after={"anchor": "created_at", "seconds": 3600})
    part = add_part(client, up2["id"], b"z")
    f2 = client.post(f"/v1/uploads/{up2['id']}/complete", json={"part_ids": [part["id"]]}).json()["file"]
    store.db.execute("UPDATE files SET expires_at = 1 WHERE id = ?", (f2["id"],))
    assert store.files.sweep_expired() == 1 and not store.files.blob_path(f2["id"]).exists()


def test_uploads_belong_to_their_project(client, store):
    mine = {"Authorization": f"Bearer {store.keys.create('mine')[1]}"}
    other = store.projects.ensure("other")
    theirs = {"Authorization": f"Bearer {store.keys.create('theirs', other.id)[1]}"}
    r = client.post("/v1/uploads", headers=mine,
                    json={"filename": "a.jsonl", "purpose": "fine-tune", "bytes": 2, "mime_type": "text/jsonl"})
    up = r.json()
    part = client.post(f"/v1/uploads/{up['id']}/parts", files={"data": ("b", b"xy")}, headers=mine).json()
    refused(client.post(f"/v1/uploads/{up['id']}/parts", files={"data": ("b", b"x")}, headers=theirs), 404,
            "upload_id")
    refused(client.post(f"/v1/uploads/{up['id']}/complete", json={"part_ids": [part["id"]]}, headers=theirs), 404,
            "upload_id")
    refused(client.post(f"/v1/uploads/{up['id']}/cancel", headers=theirs), 404, "upload_id")
    # Nor may one project complete its own upload with another's part.
    their_up = client.post("/v1/uploads", headers=theirs,
                           json={"filename": "b.jsonl", "purpose": "fine-tune", "bytes": 2, "mime_type": "text/jsonl"})
    their_part = client.post(f"/v1/uploads/{their_up.json()['id']}/parts", files={"data": ("b", b"zz")},
                             headers=theirs).json()
    refused(client.post(f"/v1/uploads/{up['id']}/complete", json={"part_ids": [their_part["id"]]}, headers=mine),
            400, "part_ids")
    done = client.post(f"/v1/uploads/{up['id']}/complete", json={"part_ids": [part["id"]]}, headers=mine).json()
    assert store.files.get(done["file"]["id"]).project_id == "proj_default"


def test_parts_may_arrive_in_parallel(store):
    up = store.uploads.create(NewUpload("a.txt", "user_data", 8 * 3, "text/plain", None), "proj_default")

    def send(i: int):
        blob = store.files.writer(3, "data")
        blob.write(bytes([65 + i]) * 3)
        blob.close()
        return store.uploads.add_part(up.id, blob, "proj_default")

    with ThreadPoolExecutor(8) as pool:
        parts = list(pool.map(send, range(8)))
    done = store.uploads.complete(up.id, [p.id for p in reversed(parts)], None, "proj_default")
    assert store.files.blob_path(done.file_id).read_bytes() == b"HHHGGGFFFEEEDDDCCCBBBAAA"


def test_parts_past_the_upload_maximum_are_refused(client, store, monkeypatch):
    from modelmill.service.store import uploads as upload_store

    monkeypatch.setattr(upload_store, "MAX_UPLOAD_BYTES", 5)  # stands in for OpenAI's 8 GB
    up = create(client, 4)
    add_part(client, up["id"], b"abc")
    error = refused(client.post(f"/v1/uploads/{up['id']}/parts", files={"data": ("blob", b"def")}), 400, "data")
    assert error["code"] == "upload_too_large"
    assert len(list(store.uploads.parts_dir(up["id"]).iterdir())) == 1  # the refused part was not kept
