"""Two projects against one live server, through the official openai SDK: each sees only its own
files, jobs and models; another project's ids are NotFoundError; a checkpoint permission shares a
fine-tuned model (chat, model list) until it is revoked. Keys come from `modelmill keys create
--project`, and none of them appears anywhere in the server's log (run at debug level)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import openai
import pytest
from openai import OpenAI

from modelmill.local_server import LocalServer
from tests.e2e.conftest import tiny_job, wait_for
from tools.datasets import short_dataset
from tests.spec_check import assert_matches


def cli(env: dict, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "modelmill.cli", *args], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture(scope="module")
def tenants(tmp_path_factory):
    home = tmp_path_factory.mktemp("tenancy-home")
    env = dict(os.environ, MODELMILL_HOME=str(home), PYTHONUNBUFFERED="1")  # the log file is read while serving
    keys = {p: cli(env, "keys", "create", "--project", p, "--name", f"{p} ci") for p in ("alpha", "beta")}
    projects = {p["name"]: p["id"] for p in json.loads(cli(env, "projects", "list", "--json"))}
    log_path = home / "server.log"
    with open(log_path, "wb") as log, LocalServer(home, env={"PYTHONUNBUFFERED": "1"}, log=log,
                                                  log_level="debug") as server:
        clients = {p: OpenAI(base_url=server.base_url, api_key=k, max_retries=0) for p, k in keys.items()}
        yield {"keys": keys, "projects": projects, "clients": clients, "base_url": server.base_url,
               "log": log_path, "proc": server.proc}

def test_two_projects_share_and_revoke_a_model(tenants):
    alpha, beta = tenants["clients"]["alpha"], tenants["clients"]["beta"]
    f = alpha.files.create(file=("train.jsonl", short_dataset(24)), purpose="fine-tune")
    job = wait_for(alpha, tiny_job(alpha, f.id, n_epochs=1).id, {"succeeded", "failed"}, timeout=300)
    assert job.status == "succeeded", job.error
    ft = job.fine_tuned_model

    # beta sees none of it, and alpha's ids are simply not found
    assert f.id not in {x.id for x in beta.files.list()}
    assert beta.fine_tuning.jobs.list().data == []
    assert ft not in {m.id for m in beta.models.list()}
    for attempt in (lambda: beta.files.retrieve(f.id), lambda: beta.fine_tuning.jobs.retrieve(job.id),
                    lambda: beta.fine_tuning.jobs.cancel(job.id), lambda: beta.fine_tuning.jobs.list_events(job.id),
                    lambda: beta.fine_tuning.jobs.checkpoints.list(job.id), lambda: beta.models.retrieve(ft),
                    lambda: beta.chat.completions.create(model=ft, messages=[{"role": "user", "content": "hi"}]),
                    lambda: beta.fine_tuning.checkpoints.permissions.list(ft)):
        with pytest.raises(openai.NotFoundError):
            attempt()
    with pytest.raises(openai.BadRequestError):
        beta.fine_tuning.jobs.create(model="modelmill-tiny", training_file=f.id)

    # alpha shares its model with beta
    granted = alpha.fine_tuning.checkpoints.permissions.create(ft, project_ids=[tenants["projects"]["beta"]])
    assert_matches(granted.model_dump(), "ListFineTuningCheckpointPermissionResponse")
    permission = granted.data[0]
    assert permission.project_id == tenants["projects"]["beta"]
    assert [p.id for p in alpha.fine_tuning.checkpoints.permissions.list(ft)] == [permission.id]
    assert ft in {m.id for m in beta.models.list()}
    reply = beta.chat.completions.create(model=ft, max_tokens=3, temperature=0,
                                         messages=[{"role": "user", "content": "turn on the kitchen lights"}])
    assert reply.model == ft and reply.choices[0].finish_reason in ("stop", "length")
    with pytest.raises(openai.NotFoundError):  # beta uses it but does not manage it
        beta.fine_tuning.checkpoints.permissions.delete(permission.id, fine_tuned_model_checkpoint=ft)

    deleted = alpha.fine_tuning.checkpoints.permissions.delete(permission.id, fine_tuned_model_checkpoint=ft)
    assert deleted.deleted is True and deleted.id == permission.id
    with pytest.raises(openai.NotFoundError):
        beta.chat.completions.create(model=ft, messages=[{"role": "user", "content": "hi"}])
    assert ft not in {m.id for m in beta.models.list()}

    with pytest.raises(openai.AuthenticationError):
        OpenAI(base_url=tenants["base_url"], api_key="sk-not-a-key", max_retries=0).models.list()


def test_the_server_log_holds_no_key(tenants):
    for client in tenants["clients"].values():
        client.models.list()
        with pytest.raises(openai.NotFoundError):
            client.files.retrieve("file-missing")
    with pytest.raises(openai.AuthenticationError):
        OpenAI(base_url=tenants["base_url"], api_key=tenants["keys"]["alpha"] + "x", max_retries=0).files.list()
    text = tenants["log"].read_text(errors="replace")
    assert "/v1/files/file-missing" in text and "401" in text, "the log captured the requests"
    for project, key in tenants["keys"].items():
        assert key not in text, f"{project}'s key is in the server log"
        assert key[3:19] not in text
