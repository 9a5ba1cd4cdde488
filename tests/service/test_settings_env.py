"""Settings read once (issue 21): the python-grader sandbox's bounds, the GGUF converter and the teacher's
retry backoff come from MODELMILL_* through Settings.from_env; ml/ takes them as plain parameters."""

from __future__ import annotations

from fastapi.testclient import TestClient

from modelmill.ml.graders.sandbox import SandboxConfig
from modelmill.service.graders import requests as graders
from modelmill.service.api.app import create_app
from modelmill.settings import Settings

LEFTOVERS = {"MODELMILL_SANDBOX_BOUND": "rlimit", "MODELMILL_SANDBOX_CGROUP": "/sys/fs/cgroup/mm",
             "MODELMILL_GGUF_CONVERTER": "/opt/llama.cpp", "MODELMILL_TEACHER_BACKOFF": "0.25"}


def test_from_env_reads_them_and_ml_does_not(monkeypatch, tmp_path):
    for name in LEFTOVERS:
        monkeypatch.delenv(name, raising=False)
    s = Settings.from_env(home=tmp_path)
    assert (s.sandbox_bound, s.sandbox_cgroup, s.gguf_converter, s.teacher_backoff) == ("auto", None, None, 1.0)
    for name, value in LEFTOVERS.items():
        monkeypatch.setenv(name, value)
    s = Settings.from_env(home=tmp_path)
    assert (s.sandbox_bound, s.sandbox_cgroup, s.gguf_converter, s.teacher_backoff) == (
        "rlimit", "/sys/fs/cgroup/mm", "/opt/llama.cpp", 0.25)
    assert (SandboxConfig().bound, SandboxConfig().cgroup_parent) == ("auto", None)  # ml reads no environment
    config = graders.sandbox_config(s)
    assert (config.bound, config.cgroup_parent) == ("rlimit", "/sys/fs/cgroup/mm")


def test_graders_run_uses_the_settings_sandbox_bound(settings, store, tmp_path, caplog):
    """bound "cgroup" with a cgroup directory that does not exist: the python grader fails closed
    (sandbox_unavailable), so the API's grader context carries the Settings' bound and directory."""
    strict = settings.with_(sandbox_bound="cgroup", sandbox_cgroup=str(tmp_path / "absent"))
    grader = {"type": "python", "name": "p", "source": "def grade(sample, item):\n    return 1.0\n"}
    with TestClient(create_app(strict, store=store)) as client:
        r = client.post("/v1/fine_tuning/alpha/graders/run", json={"grader": grader, "model_sample": "x"})
    assert r.status_code == 200, r.text
    errors = r.json()["metadata"]["errors"]
    assert errors["python_grader_server_error"] is True, r.json()
    assert errors["python_grader_server_error_type"] == "sandbox_unavailable", r.json()
    assert str(tmp_path / "absent") in caplog.text  # the reason logged names the Settings' directory
