"""`modelmill data label` when the input or the teacher misbehaves: a clear message, a non-zero
exit, retries counted, and no output file. The misbehaving teacher is a tiny local HTTP stand-in
(failure injection only: tests/e2e/test_data_cli.py labels with a real ModelMill server)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from modelmill.cli import main

PROMPTS = [{"messages": [{"role": "user", "content": f"question {i}"}]} for i in range(3)]


def completion(text: str = "an answer") -> bytes:
    return json.dumps({"id": "chatcmpl-x", "object": "chat.completion", "created": 0, "model": "m",
                       "choices": [{"index": 0, "finish_reason": "stop",
                                    "message": {"role": "assistant", "content": text}}],
                       "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}).encode()


class Misbehaving:
    """An endpoint answering POSTs by `mode`: bad_json, slow, or flaky (429 every other request)."""

    def __init__(self, mode: str):
        self.mode, self.requests = mode, 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers["content-length"]))
                outer.requests += 1
                status, body = 200, completion()
                if outer.mode == "bad_json":
                    body = b'{"id": "x", "choices": [ not json'
                elif outer.mode == "slow":
                    time.sleep(1.0)
                elif outer.mode == "flaky" and outer.requests % 2 == 1:
                    status, body = 429, b'{"error": {"message": "slow down", "type": "rate_limit_error"}}'
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # the client timed out and left

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_port}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def prompts(tmp_path, monkeypatch):
    monkeypatch.setenv("MODELMILL_TEACHER_BACKOFF", "0.01")
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    return path


def label(prompts, out, base_url, *extra):
    return main(["data", "label", str(prompts), "--teacher", "m", "--teacher-base-url", base_url,
                 "--teacher-api-key", "k", "--out", str(out), "--max-attempts", "3", *extra])


@pytest.mark.parametrize("mode, reason", [("bad_json", "invalid_response"), ("slow", "timeout")])
def test_teacher_invalid_json_or_timeout_fails_cleanly(prompts, tmp_path, capsys, mode, reason):
    teacher = Misbehaving(mode)
    try:
        out = tmp_path / "out.jsonl"
        rc = label(prompts, out, teacher.base_url, "--timeout", "0.3", "--concurrency", "3")
    finally:
        teacher.close()
    err = capsys.readouterr().err
    assert rc == 1 and not out.exists() and not list(tmp_path.glob("out.jsonl.partial*"))
    assert f"6 {reason}" in err  # 3 prompts x 2 retries each, counted by reason
    assert "teacher failed on 3" in err and "prompt lines 1, 2, 3" in err and "not written" in err
    assert teacher.requests >= 3 if mode == "slow" else teacher.requests == 9


def test_rate_limits_are_retried_counted_and_reported(prompts, tmp_path, capsys):
    teacher = Misbehaving("flaky")
    try:
        out = tmp_path / "out.jsonl"
        rc = label(prompts, out, teacher.base_url, "--concurrency", "1")
    finally:
        teacher.close()
    err = capsys.readouterr().err
    assert rc == 0, err
    assert len(out.read_text().splitlines()) == 3 and "retries: 3 rate_limit" in err
    assert "6 requests" in err and "labelled 3 of 3" in err


def test_empty_and_malformed_prompt_files(tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    assert label(empty, out, "http://127.0.0.1:9/v1") == 2
    assert "no prompts" in capsys.readouterr().err and not out.exists()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(PROMPTS[0]) + "\n" + json.dumps({"messages": [{"role": "bot", "content": "x"}]}) + "\n")
    assert label(bad, out, "http://127.0.0.1:9/v1") == 2
    err = capsys.readouterr().err
    assert "line 2" in err and "messages[0].role" in err and not out.exists()
    answered = tmp_path / "answered.jsonl"
    answered.write_text(json.dumps({"messages": [{"role": "user", "content": "q"},
                                                 {"role": "assistant", "content": "a"}]}) + "\n")
    assert label(answered, out, "http://127.0.0.1:9/v1") == 2
    assert "last message must be from the user" in capsys.readouterr().err


def test_synth_bad_schema_exits_non_zero_naming_function_and_field(tmp_path, capsys):
    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps([{"type": "function", "function": {"name": "set_lights", "parameters": {
        "type": "object", "properties": {"room": {"type": "string", "enum": []}}}}}]))
    out = tmp_path / "out.jsonl"
    assert main(["data", "synth", str(tools), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "function set_lights: field parameters.properties.room: enum must be a non-empty list" in err
    assert not out.exists()
    tools.write_text("[{not json")
    assert main(["data", "synth", str(tools), "--out", str(out)]) == 2
    assert "not valid JSON" in capsys.readouterr().err and not out.exists()
