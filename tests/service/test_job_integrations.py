"""A job's `integrations` at creation (schemas/jobs.py, fine_tuning._integrations): OpenAI's wandb
shape stored and echoed as the spec has it, ModelMill's mlflow extension where the server has a
tracking URI, and each bad one a 400 naming the field. Running them: tests/service/test_trackers.py
and tests/e2e/test_operations.py."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from modelmill.service.api.app import create_app
from tests.service.conftest import create_job, training_jsonl, upload
from tests.spec_check import assert_matches

WANDB = {"type": "wandb", "wandb": {"project": "my-project", "name": "run-1", "entity": "team", "tags": ["a"]}}


@pytest.fixture
def train_file(client):
    return upload(client, training_jsonl())["id"]


def test_wandb_is_stored_and_echoed_in_openais_shape(client, store, train_file):
    job = create_job(client, train_file, integrations=[WANDB])
    assert_matches(job, "FineTuningJob")
    assert job["integrations"] == [WANDB]
    assert client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()["integrations"] == [WANDB]
    events = client.get(f"/v1/fine_tuning/jobs/{job['id']}/events").json()["data"]
    assert not [e for e in events if e["level"] == "warn"]  # no longer "ignored"
    minimal = create_job(client, train_file, integrations=[{"type": "wandb", "wandb": {"project": "p"}}])
    assert minimal["integrations"] == [{"type": "wandb", "wandb": {"project": "p"}}]
    assert_matches(minimal, "FineTuningJob")


def test_mlflow_needs_the_servers_tracking_uri(settings, store, client, train_file):
    body = {"model": "modelmill-tiny", "training_file": train_file,
            "integrations": [WANDB, {"type": "mlflow", "mlflow": {"experiment_name": "e"}}]}
    r = client.post("/v1/fine_tuning/jobs", json=body)
    assert r.status_code == 400 and r.json()["error"]["param"] == "integrations[1].type"
    assert "MODELMILL_MLFLOW_TRACKING_URI" in r.json()["error"]["message"]
    with TestClient(create_app(settings.with_(mlflow_tracking_uri="http://mlflow.internal:5000"), store=store)) as c:
        r = c.post("/v1/fine_tuning/jobs", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["integrations"][1] == {"type": "mlflow", "mlflow": {"experiment_name": "e"}}


@pytest.mark.parametrize("integrations, param", [
    ([{"type": "comet", "comet": {}}], "integrations[0].type"),
    ([{"wandb": {"project": "p"}}], "integrations[0].type"),
    ([{"type": "wandb", "wandb": {"project": "p", "entitty": "me"}}], "integrations[0].wandb.entitty"),
    ([{"type": "wandb", "wandb": {}}], "integrations[0].wandb.project"),
    ([{"type": "wandb"}], "integrations[0].wandb"),
    ([{"type": "wandb", "wandb": {"project": "p", "tags": "a"}}], "integrations[0].wandb.tags"),
    ([WANDB, {"type": "wandb", "wandb": {"project": "q"}}], "integrations[1].type"),
    ([{"type": "mlflow", "mlflow": {"experiment": "e"}}], "integrations[0].mlflow.experiment"),
    ([{"type": "wandb", "wandb": {"project": "p"}, "mlflow": {}}], "integrations[0].mlflow"),
    ([WANDB] * 9, "integrations"),
    ("wandb", "integrations"),
])
def test_bad_integrations_are_400_naming_the_param(client, train_file, integrations, param):
    r = client.post("/v1/fine_tuning/jobs", json={"model": "modelmill-tiny", "training_file": train_file,
                                                  "integrations": integrations})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param, r.json()
