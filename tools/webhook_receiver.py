"""A real webhook receiver for tests: a threading http.server on 127.0.0.1 that records every POST.

    with Receiver() as rx:                  # answers 200
        rx.status = 500                     # ...now every POST gets a 500
        rx.hang = 5.0                       # ...or sleeps 5 s before answering (a hung receiver)
        rx.stop(); rx.start()               # down, then back on the same port
        rx.wait_for(lambda got: len(got) >= 2)
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from modelmill.local_server import free_port


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    body: bytes
    answered: int  # the status code the receiver answered with


class Receiver:
    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.status = 200
        self.hang = 0.0
        self.got: list[Received] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.start()

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                if receiver.hang:
                    time.sleep(receiver.hang)
                status = receiver.status
                with receiver._lock:
                    receiver.got.append(Received({k.lower(): v for k, v in self.headers.items()}, body, status))
                try:
                    self.send_response(status)
                    self.send_header("content-length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except (BrokenPipeError, ConnectionResetError):  # the sender gave up (timeout) or was killed
                    pass

            def log_message(self, *args):  # quiet
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def received(self) -> list[Received]:
        with self._lock:
            return list(self.got)

    def wait_for(self, condition, timeout: float = 30.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.received()
            if condition(got):
                return got
            time.sleep(0.05)
        raise AssertionError(f"receiver: condition not met in {timeout}s; got {len(self.received())} requests")

    def __enter__(self) -> "Receiver":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
