"""/v1/files: upload, list, retrieve, content, delete; purpose checks; the streaming size cap."""

from __future__ import annotations

from tests.service.conftest import upload
from tests.spec_check import assert_matches


def test_upload_retrieve_content_delete(client, store):
    f = upload(client, b'{"a": 1}\n', filename="train.jsonl")
    assert_matches(f, "OpenAIFile")
    assert f["filename"] == "train.jsonl" and f["bytes"] == 9 and f["purpose"] == "fine-tune"
    assert f["id"].startswith("file-") and store.files.blob_path(f["id"]).exists()

    got = client.get(f"/v1/files/{f['id']}").json()
    assert_matches(got, "OpenAIFile")
    assert got == f
    assert client.get(f"/v1/files/{f['id']}/content").content == b'{"a": 1}\n'

    deleted = client.delete(f"/v1/files/{f['id']}").json()
    assert_matches(deleted, "DeleteFileResponse")
    assert deleted == {"id": f["id"], "object": "file", "deleted": True}
    assert client.get(f"/v1/files/{f['id']}").status_code == 404
    assert not store.files.blob_path(f["id"]).exists()


def test_list_filters_by_purpose_and_pages(client):
    a = upload(client, b"1", purpose="fine-tune")
    b = upload(client, b"2", purpose="user_data")
    c = upload(client, b"3", purpose="fine-tune")
    body = client.get("/v1/files").json()
    assert_matches(body, "ListFilesResponse")
    assert [f["id"] for f in body["data"]] == [c["id"], b["id"], a["id"]]
    only_ft = client.get("/v1/files", params={"purpose": "fine-tune"}).json()
    assert [f["id"] for f in only_ft["data"]] == [c["id"], a["id"]]
    page = client.get("/v1/files", params={"limit": 1, "order": "asc"}).json()
    assert [f["id"] for f in page["data"]] == [a["id"]] and page["has_more"]
    page2 = client.get("/v1/files", params={"limit": 1, "order": "asc", "after": a["id"]}).json()
    assert [f["id"] for f in page2["data"]] == [b["id"]]
    empty = client.get("/v1/files", params={"purpose": "batch"}).json()
    assert_matches(empty, "ListFilesResponse")
    assert empty["data"] == [] and not empty["has_more"]


def test_purpose_and_file_are_validated(client, settings):
    r = client.post("/v1/files", files={"file": ("a.jsonl", b"{}")}, data={"purpose": "no-such-purpose"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "purpose"
    assert_matches(r.json(), "ErrorResponse")
    r = client.post("/v1/files", files={"file": ("a.jsonl", b"{}")})
    assert r.status_code == 400 and r.json()["error"]["param"] == "purpose"
    r = client.post("/v1/files", data={"purpose": "fine-tune"})  # urlencoded, no file at all
    assert r.status_code == 400 and r.json()["error"]["param"] == "file"
    r = client.post("/v1/files", files={"other": ("a.jsonl", b"{}")}, data={"purpose": "fine-tune"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "file"
    assert list(settings.files_dir.iterdir()) == []  # nothing kept from any refused upload


def test_oversized_upload_is_413_with_content_length(client, settings):
    big = b"x" * (settings.max_upload_bytes + 1)
    r = client.post("/v1/files", files={"file": ("big.jsonl", big)}, data={"purpose": "fine-tune"})
    assert r.status_code == 413
    assert_matches(r.json(), "ErrorResponse")
    assert r.json()["error"]["code"] == "file_too_large"
    assert list(settings.files_dir.iterdir()) == []


def test_cap_holds_while_streaming_without_content_length(client, settings):
    boundary = "mmboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.jsonl\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    sent = []

    def body():  # a generator: httpx sends it chunked, with no Content-Length
        yield head
        for _ in range(settings.max_upload_bytes // 4096 + 8):
            sent.append(1)
            yield b"y" * 4096
        yield f"\r\n--{boundary}--\r\n".encode()

    r = client.post("/v1/files", content=body(),
                    headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 413, r.text
    assert "content-length" not in {k.lower() for k in r.request.headers}
    assert list(settings.files_dir.iterdir()) == []


def test_upload_just_under_the_cap_is_kept(client, settings):
    data = b"z" * settings.max_upload_bytes
    f = upload(client, data)
    assert f["bytes"] == settings.max_upload_bytes
    assert client.get(f"/v1/files/{f['id']}/content").content == data


def test_unknown_file_is_404_in_envelope(client):
    for method, path in (("GET", "/v1/files/file-nope"), ("DELETE", "/v1/files/file-nope"),
                         ("GET", "/v1/files/file-nope/content")):
        r = client.request(method, path)
        assert r.status_code == 404, (method, path)
        assert_matches(r.json(), "ErrorResponse")
