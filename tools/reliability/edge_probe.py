"""Issue 17's hostile-input probes at the edge, against a real `modelmill serve` (RELIABILITY.md,
"Hostile input and denial of service"; `make reliability`):

    python -m tools.reliability.edge_probe [--json PATH] [--big-mb 40] [--login-mb 300] [--chat-mb 20]

Each probe prints its HTTP status, its latency, the server's peak RSS growth during it (VmHWM reset
before each probe), the slowest `GET /v1/models` another client saw meanwhile, and, for uploads,
the temp files left. Only the HTTP API and `modelmill keys create` are used, so the same script
measures an older build ("before") as well as this one. The fast versions are tests/service/
test_edge.py and test_edge_live.py (make test).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from modelmill.local_server import LocalServer, cli_command

MiB = 1024 * 1024


class Probe:
    def __init__(self, server: LocalServer, key: str):
        self.server, self.key = server, key
        self.origin = f"http://127.0.0.1:{server.port}"
        self.http = httpx.Client(base_url=self.origin, timeout=300)
        self.rows: list[dict] = []

    # -- measuring ------------------------------------------------------------------------

    def _status(self, field: str) -> float:
        for row in Path(f"/proc/{self.server.proc.pid}/status").read_text().splitlines():
            if row.startswith(field):
                return int(row.split()[1]) / 1024
        return float("nan")

    def measure(self, name: str, fn) -> dict:
        """Run fn() -> (status, extra dict) while another client polls /v1/models; record the row."""
        try:
            Path(f"/proc/{self.server.proc.pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
        except OSError:
            pass
        rss_before, stop, slowest, polls = self._status("VmRSS:"), threading.Event(), [0.0], [0]
        temp_before = _temp_files(self.server.home)

        def poll():
            with httpx.Client(base_url=self.origin, timeout=300) as side:
                while not stop.is_set():
                    t = time.perf_counter()
                    side.get("/v1/models", headers={"Authorization": f"Bearer {self.key}"})
                    slowest[0] = max(slowest[0], time.perf_counter() - t)
                    polls[0] += 1
                    time.sleep(0.05)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        started = time.perf_counter()
        try:
            status, extra = fn()
        except (httpx.HTTPError, OSError) as e:
            status, extra = f"error: {type(e).__name__}", {}
        latency = time.perf_counter() - started
        stop.set()
        poller.join()
        row = {"probe": name, "status": status, "latency_s": round(latency, 3),
               "server_peak_rss_growth_mib": round(self._status("VmHWM:") - rss_before, 1),
               "slowest_models_get_s": round(slowest[0], 3) if polls[0] else None, "models_gets": polls[0],
               "temp_files_left": _temp_files(self.server.home) - temp_before, **extra}
        self.rows.append(row)
        print(json.dumps(row), flush=True)
        return row

    # -- requests -------------------------------------------------------------------------

    def bearer(self) -> dict:
        return {"Authorization": f"Bearer {self.key}"}

    def post_raw(self, path: str, body_iter, headers: dict) -> int:
        return self.http.post(path, content=body_iter, headers=headers).status_code

    def login_cookie(self) -> dict:
        r = self.http.post("/login", data={"api_key": self.key, "next": "/"}, headers={"Origin": self.origin},
                           follow_redirects=False)
        self.http.cookies.clear()
        return {"Cookie": "; ".join(f"{k}={v}" for k, v in r.cookies.items())}

    def upload(self, headers: dict) -> int:
        return self.http.post("/v1/files", files={"file": ("t.jsonl", b'{"messages": []}\n')},
                              data={"purpose": "fine-tune"}, headers=headers).status_code


def _temp_files(home: Path) -> int:
    """Upload temp blobs under home plus spooled files in the system temp dir."""
    spooled = len(list(Path(tempfile.gettempdir()).glob("tmp*")))
    return len(list((home / "files").glob(".upload-*"))) + spooled


def _chunks(total: int, piece: bytes):
    sent = 0
    while sent < total:
        yield piece
        sent += len(piece)


def run(args) -> list[dict]:
    home = Path(tempfile.mkdtemp(prefix="edge-probe-"))
    env = dict(os.environ, MODELMILL_HOME=str(home))
    key = subprocess.run(cli_command("keys", "create", "--name", "probe"), env=env, check=True,
                         capture_output=True, text=True).stdout.strip()
    with LocalServer(home, worker=False, env={"MODELMILL_HOME": str(home)}) as server:
        p = Probe(server, key)
        json_h = {"Content-Type": "application/json"}
        big = args.big_mb * MiB
        filler = b'{"model": "modelmill-tiny", "messages": [{"role": "user", "content": "' + b"x" * (big - 80) + b'"}]}'
        p.measure(f"{args.big_mb} MB JSON chat, no key", lambda: (p.post_raw("/v1/chat/completions", filler, json_h), {}))
        p.measure(f"{args.big_mb} MB JSON chat, with key",
                  lambda: (p.post_raw("/v1/chat/completions", filler, {**json_h, **p.bearer()}), {}))
        login = args.login_mb * MiB
        multipart = {"Content-Type": "multipart/form-data; boundary=x", "Origin": p.origin}
        p.measure(f"{args.login_mb} MB multipart to /login",
                  lambda: (p.post_raw("/login", _chunks(login, b"--x\r\n" + b"y" * (MiB - 5)), multipart), {}))
        del filler
        _probe_csrf(p)
        _probe_text(p)
        chat = "z " * (args.chat_mb * MiB // 2)
        p.measure(f"{args.chat_mb} MB chat message, with key", lambda: (p.http.post(
            "/v1/chat/completions", json={"model": "modelmill-tiny", "messages": [{"role": "user", "content": chat}],
                                          "max_tokens": 1}, headers=p.bearer()).status_code, {}))
        p.measure("interrupted upload: temp files 1 s later", lambda: _interrupted_upload(p))
        p.measure("/docs: assets from other hosts", lambda: _docs_assets(p))
        _probe_revoke(p, env)
        return p.rows


def _probe_csrf(p: Probe) -> None:
    cookie, evil = p.login_cookie(), {"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"}
    p.measure("CSRF: cookie upload from evil.example", lambda: (p.upload({**cookie, **evil}), {}))
    p.measure("CSRF: cookie cancel from evil.example", lambda: (p.http.post(
        "/v1/fine_tuning/jobs/ftjob-none/cancel", headers={**cookie, **evil}).status_code, {}))
    p.measure("CSRF: /login from evil.example", lambda: (p.http.post(
        "/login", data={"api_key": p.key, "next": "/"}, headers=evil, follow_redirects=False).status_code, {}))
    p.measure("CSRF: cookie upload, same origin", lambda: (p.upload({**cookie, "Origin": p.origin}), {}))
    p.measure("bearer upload with a foreign Origin", lambda: (p.upload({**p.bearer(), **evil}), {}))


def _probe_text(p: Probe) -> None:
    h = {**p.bearer(), "Content-Type": "application/json"}
    cases = {
        "lone surrogate in job metadata": ("/v1/fine_tuning/jobs",
                                           '{"model": "modelmill-tiny", "training_file": "file-x", "metadata": {"a": "\\ud800"}}'),
        "lone surrogate in an eval name": ("/v1/evals", '{"name": "\\ud800", "data_source_config": {"type": "custom", '
                                                        '"item_schema": {}}, "testing_criteria": []}'),
        "lone surrogate in chat content": ("/v1/chat/completions", '{"model": "modelmill-tiny", "max_tokens": 1, '
                                                                   '"messages": [{"role": "user", "content": "\\ud800"}]}'),
        "tool parameters 900 deep": ("/v1/chat/completions", '{"model": "modelmill-tiny", "max_tokens": 1, "messages": '
                                     '[{"role": "user", "content": "hi"}], "tools": [{"type": "function", "function": '
                                     '{"name": "f", "parameters": ' + '{"a": ' * 900 + '1' + '}' * 900 + '}}]}'),
    }
    for name, (path, body) in cases.items():
        p.measure(name, lambda path=path, body=body: (p.http.post(path, content=body, headers=h).status_code, {}))
    p.measure("GET jobs?metadata[a%00]=v", lambda: (p.http.get("/v1/fine_tuning/jobs?metadata[a%00]=v",
                                                               headers=p.bearer()).status_code, {}))


def _interrupted_upload(p: Probe):
    head = (b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n--b\r\n'
            b'Content-Disposition: form-data; name="file"; filename="t.jsonl"\r\n\r\n')
    s = socket.create_connection(("127.0.0.1", p.server.port))
    s.sendall(f"POST /v1/files HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {p.key}\r\n"
              "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 50000000\r\n\r\n".encode()
              + head + b"x" * (2 * MiB))
    time.sleep(0.5)
    s.close()
    time.sleep(1.0)
    return "sent 2 MB of 50, closed", {"upload_temp_files": len(list((p.server.home / "files").glob(".upload-*")))}


def _docs_assets(p: Probe):
    import re

    html = p.http.get("/docs").text
    urls = re.findall(r'(?:src|href)=["\']([^"\']+)', html)
    return "ok", {"external_assets": [u for u in urls if "://" in u and not u.startswith(p.origin)]}


def _probe_revoke(p: Probe, env: dict) -> None:
    cookie = p.login_cookie()
    out = subprocess.run(cli_command("keys", "list", "--json"), env=env, capture_output=True, text=True)
    if out.returncode != 0:
        p.rows.append({"probe": "modelmill keys list", "status": f"exit {out.returncode}"})
        print(json.dumps(p.rows[-1]))
        return
    spare = subprocess.run(cli_command("keys", "create", "--name", "spare"), env=env, capture_output=True, text=True)
    (key_id,) = [k["id"] for k in json.loads(out.stdout) if k["name"] == "probe"]
    started = time.perf_counter()
    subprocess.run(cli_command("keys", "revoke", key_id), env=env, check=True, capture_output=True)
    revoke_s = time.perf_counter() - started
    row = {"probe": "keys revoke: next request", "revoke_cli_s": round(revoke_s, 2),
           "bearer_status": p.http.get("/v1/models", headers=p.bearer()).status_code,
           "cookie_status": p.http.get("/v1/models", headers=cookie).status_code}
    p.key = spare.stdout.strip()
    p.rows.append(row)
    print(json.dumps(row), flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", help="also write the rows to this file")
    ap.add_argument("--big-mb", type=int, default=40, help="size of the big JSON bodies (MB)")
    ap.add_argument("--login-mb", type=int, default=300, help="size of the multipart body sent to /login (MB)")
    ap.add_argument("--chat-mb", type=int, default=20, help="size of the one huge chat message (MB)")
    args = ap.parse_args(argv)
    rows = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
