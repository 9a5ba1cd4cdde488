"""The edge over a real socket (uvicorn on 127.0.0.1, in a thread): a request without a valid key,
or with too large a body, is answered while most of its body is still unsent, so the server never
read it; an upload cut off mid-body leaves no temp file behind, at once.
The long versions, with memory figures: tools/reliability/edge_probe.py (make reliability)."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import uvicorn

from modelmill.local_server import free_port
from modelmill.service.api.app import create_app


@pytest.fixture
def live(settings, store):
    """(settings, store, port, key) for a uvicorn server of the app, stopped after the test."""
    settings = settings.with_(max_upload_bytes=8 * 1024 * 1024, max_json_bytes=256 * 1024)
    key = store.keys.create("live")[1]
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings, store=store), host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield settings, store, port, key
    server.should_exit = True
    thread.join(timeout=10)


def send_head(port: int, method: str, path: str, headers: dict, first_bytes: bytes = b"") -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers.items()), "", ""]
    s.sendall("\r\n".join(lines).encode() + first_bytes)
    return s


def answer(s: socket.socket) -> tuple[int, bytes]:
    """Status and raw response (head and body), read while the client may have sent only part of its
    declared body."""
    data = b""
    while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < _length(data):
        chunk = s.recv(65536)
        assert chunk, f"connection closed before a whole response: {data!r}"
        data += chunk
    return int(data.split(b" ", 2)[1]), data


def _length(data: bytes) -> int:
    for line in data.partition(b"\r\n\r\n")[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0


def test_a_keyless_big_body_gets_its_401_before_the_body_is_sent(live):
    _, _, port, _ = live
    s = send_head(port, "POST", "/v1/chat/completions",
                  {"Content-Type": "application/json", "Content-Length": 40_000_000}, b'{"model": "x", "messages": [')
    try:
        status, raw = answer(s)  # 40 MB declared, 28 bytes sent: only an answer that ignores the body can come
        assert status == 401 and b"missing_api_key" in raw
    finally:
        s.close()


def test_login_and_json_bodies_past_their_cap_get_413_unread(live):
    _, _, port, key = live
    s = send_head(port, "POST", "/login", {"Origin": "http://127.0.0.1", "Content-Length": 300_000_000,
                                           "Content-Type": "multipart/form-data; boundary=x"}, b"--x\r\n")
    try:
        assert answer(s)[0] == 413  # a 300 MB multipart to /login: no byte of it written anywhere
    finally:
        s.close()
    s = send_head(port, "POST", "/v1/chat/completions", {"Authorization": f"Bearer {key}", "Content-Length":
                                                         40_000_000, "Content-Type": "application/json"}, b"{")
    try:
        status, raw = answer(s)
        assert status == 413 and b"MODELMILL_MAX_JSON_BYTES" in raw
    finally:
        s.close()


def test_a_chunked_body_is_stopped_at_its_cap(live):
    """No Content-Length: the edge counts while the body arrives and answers 413 right past the cap."""
    settings, _, port, key = live
    s = send_head(port, "POST", "/v1/chat/completions", {"Authorization": f"Bearer {key}", "Transfer-Encoding":
                                                         "chunked", "Content-Type": "application/json"})
    sent, chunk = 0, b"x" * 16384
    try:
        s.settimeout(0.05)
        while True:
            s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent += len(chunk)
            try:
                if s.recv(1, socket.MSG_PEEK):
                    break
            except TimeoutError:
                assert sent < 64 * settings.max_json_bytes, "no answer long past the cap"
        s.settimeout(10)
        assert answer(s)[0] == 413
        assert sent < 2 * settings.max_json_bytes + 1024 * 1024  # answered near the cap, not at the end
    finally:
        s.close()


def test_an_interrupted_upload_leaves_no_temp_file(live):
    settings, _, port, key = live
    head = (b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n--b\r\n'
            b'Content-Disposition: form-data; name="file"; filename="t.jsonl"\r\n\r\n')
    s = send_head(port, "POST", "/v1/files", {"Authorization": f"Bearer {key}", "Content-Length": 4_000_000,
                                              "Content-Type": "multipart/form-data; boundary=b"}, head + b"x" * 300_000)
    deadline = time.monotonic() + 10
    while not list(settings.files_dir.glob(".upload-*.part")):  # the upload is under way
        assert time.monotonic() < deadline, "the upload never started"
        time.sleep(0.02)
    s.close()  # the client gives up mid-body
    deadline = time.monotonic() + 5
    while list(settings.files_dir.glob(".upload-*.part")):
        assert time.monotonic() < deadline, "the temp file outlived the interrupted upload"
        time.sleep(0.02)


def test_a_stalled_upload_is_abandoned_and_its_temp_file_removed(live, monkeypatch):
    from modelmill.service.api import uploads

    monkeypatch.setattr(uploads, "UPLOAD_IDLE_SECONDS", 0.5)
    settings, _, port, key = live
    head = (b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n--b\r\n'
            b'Content-Disposition: form-data; name="file"; filename="t.jsonl"\r\n\r\n')
    s = send_head(port, "POST", "/v1/files", {"Authorization": f"Bearer {key}", "Content-Length": 4_000_000,
                                              "Content-Type": "multipart/form-data; boundary=b"}, head + b"x" * 1000)
    try:  # the connection stays open, silent
        status, raw = answer(s)
        assert status == 400 and b"upload_stalled" in raw
        assert not list(settings.files_dir.glob(".upload-*.part"))
    finally:
        s.close()
