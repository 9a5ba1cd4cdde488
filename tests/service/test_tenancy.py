"""Projects and API keys: lists scoped to the caller's project, another project's ids in request
bodies refused like missing ones, checkpoint permissions (validate, list, share, revoke) on a real
fine-tuned model, `modelmill keys create --project`, keyless loopback mode and the migration of
rows made before projects existed."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import pytest

from modelmill import cli
from modelmill.service.core.auth import authenticate
from modelmill.service.store import open_store
from modelmill.service.store.db import Database
from modelmill.service.store.migrations import MIGRATIONS
from modelmill.service.worker.loop import Worker
from tests.service.conftest import training_jsonl
from tests.service.tenancy_world import (EVAL_BODY, EXACT, RUN_BODY, bearer, build_world, cookie, ok, queued_job,
                                         upload_as)
from tests.spec_check import assert_matches


@pytest.fixture
def keys(store):
    """Keys of three projects (alpha, beta, gamma): {letter: (key, project id)}."""
    out = {}
    for letter, name in (("A", "alpha"), ("B", "beta"), ("C", "gamma")):
        project = store.projects.ensure(name)
        out[letter] = (store.keys.create(f"{name} key", project.id)[1], project.id)
    return out


@pytest.fixture
def worlds(client, store, settings, keys):
    w = {p: build_world(client, store, settings, keys[p][0], keys["C"][1]) for p in ("A", "B")}
    for p in ("A", "B"):
        w[p]["queued"] = queued_job(client, keys[p][0], w[p]["file"])
    return w


def same_but_id(foreign, missing, real: str, fake: str) -> None:
    """`foreign` (a request naming another project's `real` id) reads exactly as `missing` (naming `fake`)."""
    assert foreign.status_code == missing.status_code, (foreign.text, missing.text)
    assert foreign.text.replace(real, fake) == missing.text


# -- lists ------------------------------------------------------------------------------------------

def test_every_list_shows_only_the_callers_project(client, keys, worlds):
    for me, other in (("A", "B"), ("B", "A")):
        h, mine, theirs = bearer(keys[me][0]), worlds[me], worlds[other]
        files = ok(client.get("/v1/files", headers=h))
        assert_matches(files, "ListFilesResponse")
        assert mine["file"] in {f["id"] for f in files["data"]}
        assert theirs["file"] not in {f["id"] for f in files["data"]}
        jobs = ok(client.get("/v1/fine_tuning/jobs", headers=h))
        assert_matches(jobs, "ListPaginatedFineTuningJobsResponse")
        assert {j["id"] for j in jobs["data"]} == {mine["job"], mine["queued"]}
        models = ok(client.get("/v1/models", headers=h))
        assert_matches(models, "ListModelsResponse")
        ids = {m["id"] for m in models["data"]}
        assert {mine["ft"], mine["ckpt"], "modelmill-tiny"} <= ids and not {theirs["ft"], theirs["ckpt"]} & ids
        evals = ok(client.get("/v1/evals", headers=h))
        assert_matches(evals, "EvalList")
        assert [e["id"] for e in evals["data"]] == [mine["eval"]]
        signed_in = cookie(client, keys[me][0])
        dash_jobs = ok(client.get("/dashboard/api/jobs", headers=signed_in))
        assert {r["id"] for r in dash_jobs["data"]} == {mine["job"], mine["queued"]}
        dash_models = {m["id"] for m in ok(client.get("/dashboard/api/models", headers=signed_in))["data"]}
        assert mine["ft"] in dash_models and theirs["ft"] not in dash_models
        for page, shown in (("/files", "file"), ("/evals", "eval"), ("/models", "ft"), ("/playground", "ft")):
            html = client.get(page, headers=signed_in)
            assert html.status_code == 200, page
            assert mine[shown] in html.text and theirs[shown] not in html.text, page


def test_the_shared_project_sees_shared_models_in_its_list(client, keys, worlds):
    ids = {m["id"] for m in ok(client.get("/v1/models", headers=bearer(keys["C"][0])))["data"]}
    assert {worlds["A"]["ft"], worlds["A"]["ckpt"], worlds["B"]["ft"], worlds["B"]["ckpt"]} <= ids
    assert ok(client.get("/v1/files", headers=bearer(keys["C"][0])))["data"] == []  # models only


def test_a_cursor_from_another_project_is_an_unknown_cursor(client, keys, worlds):
    h = bearer(keys["B"][0])
    a = worlds["A"]
    for url, real, fake in (("/v1/files", a["file"], "file-NoSuch"), ("/v1/fine_tuning/jobs", a["job"], "ftjob-NoSuch"),
                            ("/v1/evals", a["eval"], "eval_NoSuch"),
                            (f"/v1/fine_tuning/jobs/{worlds['B']['job']}/events", a["event"], "ftevent-NoSuch")):
        foreign = client.get(url, params={"after": real}, headers=h)
        assert foreign.status_code == 400 and foreign.json()["error"]["code"] == "invalid_cursor", foreign.text
        same_but_id(foreign, client.get(url, params={"after": fake}, headers=h), real, fake)


# -- another project's ids inside request bodies ----------------------------------------------------

def test_another_projects_files_and_models_in_bodies_are_refused_like_missing_ones(client, keys, worlds):
    h, a, b = bearer(keys["B"][0]), worlds["A"], worlds["B"]
    fake_file, fake_ft = "file-NoSuchFile0000", "ft:modelmill-tiny:modelmill::nosuchid"
    job = {"model": "modelmill-tiny", "training_file": b["file"]}
    for field, real, fake in (("training_file", a["file"], fake_file), ("validation_file", a["file"], fake_file),
                              ("model", a["ft"], fake_ft), ("model", a["ckpt"], fake_ft + ":ckpt-step-1")):
        foreign = client.post("/v1/fine_tuning/jobs", json={**job, field: real}, headers=h)
        assert foreign.status_code == 400 and foreign.json()["error"]["param"] == field, foreign.text
        same_but_id(foreign, client.post("/v1/fine_tuning/jobs", json={**job, field: fake}, headers=h), real, fake)

    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    foreign = client.post("/v1/chat/completions", json={**chat, "model": a["ft"]}, headers=h)
    assert foreign.status_code == 404 and foreign.json()["error"]["code"] == "model_not_found"
    same_but_id(foreign, client.post("/v1/chat/completions", json={**chat, "model": fake_ft}, headers=h),
                a["ft"], fake_ft)

    completions = {"type": "completions", "model": a["ft"], "input_messages": {
        "type": "template", "template": [{"role": "user", "content": "{{item.ref}}"}]},
        "source": {"type": "file_content", "content": [{"item": {"ref": "a"}}]}}
    url = f"/v1/evals/{b['eval']}/runs"
    foreign = client.post(url, json={"data_source": completions}, headers=h)
    assert foreign.status_code == 404 and foreign.json()["error"]["param"] == "data_source.model", foreign.text
    same_but_id(foreign, client.post(url, json={"data_source": {**completions, "model": fake_ft}}, headers=h),
                a["ft"], fake_ft)
    by_file = {"type": "jsonl", "source": {"type": "file_id", "id": a["file"]}}
    foreign = client.post(url, json={"data_source": by_file}, headers=h)
    assert foreign.status_code == 400 and foreign.json()["error"]["code"] == "file_not_found", foreign.text
    missing = client.post(url, json={"data_source": {"type": "jsonl", "source": {"type": "file_id", "id": fake_file}}},
                          headers=h)
    same_but_id(foreign, missing, a["file"], fake_file)


def test_a_model_graders_judge_uses_only_the_callers_models(client, keys, worlds):
    """graders/run with a score_model grader naming another project's model: the judge does not
    serve it, exactly as for a model that does not exist (the same 400 on grader.model)."""
    fake_ft = "ft:modelmill-tiny:modelmill::nosuchid"

    def run(model):
        grader = {"type": "score_model", "name": "judge", "model": model, "range": [0, 1],
                  "input": [{"role": "user", "content": "Rate {{sample.output_text}}"}]}
        body = ok(client.post("/v1/fine_tuning/alpha/graders/run", json={"grader": grader, "model_sample": "x"},
                              headers=bearer(keys["B"][0])), 400)
        assert_matches(body, "ErrorResponse")
        return json.dumps(body, sort_keys=True)

    foreign = run(worlds["A"]["ft"])
    assert '"param": "grader.model"' in foreign
    assert foreign.replace(worlds["A"]["ft"], fake_ft) == run(fake_ft)


def test_a_job_with_metadata_eval_id_of_another_project_does_not_use_that_eval(client, store, settings, keys, worlds):
    """A job's before/after report may name an eval of its own project only (its runs would be written there)."""
    from modelmill.service.jobs import eval_reports as job_evals

    h = bearer(keys["B"][0])
    job = ok(client.post("/v1/fine_tuning/jobs", json={"model": "modelmill-tiny", "training_file": worlds["B"]["file"],
                                                       "metadata": {"eval_id": worlds["A"]["eval"]}}, headers=h))
    phase = job_evals._Phase(SimpleNamespace(store=store, settings=settings), store.jobs.get(job["id"]))
    warnings = []
    phase.event = lambda level, message, data=None: warnings.append(message)
    assert phase._eval("supervised") is None
    assert warnings == [f"Before/after eval skipped: metadata eval_id {worlds['A']['eval']} is not an eval"]


def test_resources_a_job_makes_belong_to_its_project(client, store, settings, keys):
    """Trained for real: the results file, checkpoints, the fine-tuned model and the before/after eval
    and its runs are the job's project's, and no other project sees them."""
    h = bearer(keys["A"][0])
    train = upload_as(client, keys["A"][0], training_jsonl(12))
    valid = upload_as(client, keys["A"][0], training_jsonl(10))
    job = ok(client.post("/v1/fine_tuning/jobs", headers=h, json={
        "model": "modelmill-tiny", "training_file": train["id"], "validation_file": valid["id"], "seed": 1,
        "metadata": {"eval_max_items": "2", "eval_max_tokens": "2"},
        "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 4}}}}))
    assert Worker(settings, store).run_once() == job["id"]
    done = ok(client.get(f"/v1/fine_tuning/jobs/{job['id']}", headers=h))
    assert done["status"] == "succeeded", done["error"]
    results = ok(client.get(f"/v1/files/{done['result_files'][0]}", headers=h))
    assert results["purpose"] == "fine-tune-results"
    evals = ok(client.get("/v1/evals", headers=h))["data"]
    assert len(evals) == 1 and evals[0]["metadata"] == {"fine_tuning_job_id": job["id"]}
    runs = ok(client.get(f"/v1/evals/{evals[0]['id']}/runs", headers=h))["data"]
    assert {r["metadata"]["label"] for r in runs} == {"base", "final"}
    assert {r.project_id for r in store.evals.runs_for_job(job["id"])} == {keys["A"][1]}
    ckpt = ok(client.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints", headers=h))["data"][0]
    hb = bearer(keys["B"][0])
    assert client.get(f"/v1/files/{results['id']}", headers=hb).status_code == 404
    assert client.get(f"/v1/evals/{evals[0]['id']}", headers=hb).status_code == 404
    assert ok(client.get("/v1/evals", headers=hb))["data"] == []
    for model in (done["fine_tuned_model"], ckpt["fine_tuned_model_checkpoint"]):
        assert client.get(f"/v1/models/{model}", headers=hb).status_code == 404


# -- checkpoint permissions -------------------------------------------------------------------------

def _perms_url(model: str) -> str:
    return f"/v1/fine_tuning/checkpoints/{model}/permissions"


@pytest.mark.parametrize("body,param,code", [
    ({}, "project_ids", "missing_required_parameter"),
    ({"project_ids": []}, "project_ids", "invalid_value"),
    ({"project_ids": "proj_x"}, "project_ids", "invalid_value"),
    ({"project_ids": [7]}, "project_ids[0]", "invalid_value"),
    ({"project_ids": ["proj_nope"]}, "project_ids[0]", "project_not_found"),
    ({"project_ids": [" "]}, "project_ids[0]", "invalid_value"),
    ({"project_ids": ["proj_OWN"]}, "project_ids[0]", "invalid_value"),
    ({"project_ids": ["proj_B", "proj_nope"]}, "project_ids[1]", "project_not_found"),
])
def test_create_permission_validates_its_body(client, keys, worlds, body, param, code):
    body = json.loads(json.dumps(body).replace("proj_OWN", keys["A"][1]).replace("proj_B", keys["B"][1]))
    r = client.post(_perms_url(worlds["A"]["ft"]), json=body, headers=bearer(keys["A"][0]))
    assert r.status_code == 400, r.text
    assert_matches(r.json(), "ErrorResponse")
    assert (r.json()["error"]["param"], r.json()["error"]["code"]) == (param, code)
    assert param in r.json()["error"]["message"]


@pytest.mark.parametrize("params,param", [
    ({"limit": 0}, "limit"), ({"limit": "many"}, "limit"), ({"order": "sideways"}, "order"),
    ({"after": "cp_nope"}, "after"),
])
def test_list_permissions_validates_its_parameters(client, keys, worlds, params, param):
    r = client.get(_perms_url(worlds["A"]["ft"]), params=params, headers=bearer(keys["A"][0]))
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param and param in r.json()["error"]["message"]


def test_base_models_are_not_shared(client, keys):
    r = client.post(_perms_url("modelmill-tiny"), json={"project_ids": [keys["B"][1]]}, headers=bearer(keys["A"][0]))
    assert r.status_code == 400 and r.json()["error"]["param"] == "fine_tuned_model_checkpoint", r.text


def test_list_permissions_filters_and_pages(client, keys, worlds):
    h, ft = bearer(keys["A"][0]), worlds["A"]["ft"]  # shared with gamma already (build_world)
    granted = ok(client.post(_perms_url(ft), json={"project_ids": [keys["B"][1], keys["B"][1]]}, headers=h))
    assert_matches(granted, "ListFineTuningCheckpointPermissionResponse")
    assert [p["project_id"] for p in granted["data"]] == [keys["B"][1]]  # asked twice, granted once
    again = ok(client.post(_perms_url(ft), json={"project_ids": [keys["B"][1]]}, headers=h))
    assert again["data"] == granted["data"]  # granting again returns the permission there is
    full = ok(client.get(_perms_url(ft), headers=h))
    assert_matches(full, "ListFineTuningCheckpointPermissionResponse")
    assert [p["project_id"] for p in full["data"]] == [keys["B"][1], keys["C"][1]]  # newest first
    assert (full["first_id"], full["last_id"]) == (full["data"][0]["id"], full["data"][1]["id"])
    assert full["has_more"] is False
    for p in full["data"]:
        assert_matches(p, "FineTuningCheckpointPermission")
    first = ok(client.get(_perms_url(ft), params={"limit": 1}, headers=h))
    assert first["has_more"] is True and [p["id"] for p in first["data"]] == [full["data"][0]["id"]]
    rest = ok(client.get(_perms_url(ft), params={"limit": 1, "after": first["last_id"]}, headers=h))
    assert rest["has_more"] is False and [p["id"] for p in rest["data"]] == [full["data"][1]["id"]]
    ascending = ok(client.get(_perms_url(ft), params={"order": "ascending"}, headers=h))
    assert [p["id"] for p in ascending["data"]] == [p["id"] for p in reversed(full["data"])]
    only_c = ok(client.get(_perms_url(ft), params={"project_id": keys["C"][1]}, headers=h))
    assert [p["project_id"] for p in only_c["data"]] == [keys["C"][1]]
    none = ok(client.get(_perms_url(ft), params={"project_id": "proj_elsewhere"}, headers=h))
    assert none == {"object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False}
    other_model = ok(client.get(_perms_url(worlds["A"]["ckpt"]), headers=h))  # permissions are per model name
    assert [p["id"] for p in other_model["data"]] == [worlds["A"]["ckpt_perm"]]


def _train(client, store, settings, key: str) -> dict:
    f = upload_as(client, key, training_jsonl(12))
    job = ok(client.post("/v1/fine_tuning/jobs", headers=bearer(key), json={
        "model": "modelmill-tiny", "training_file": f["id"], "seed": 2,
        "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 4}}}}))
    assert Worker(settings, store).run_once() == job["id"]
    done = ok(client.get(f"/v1/fine_tuning/jobs/{job['id']}", headers=bearer(key)))
    assert done["status"] == "succeeded", done["error"]
    return done


def test_share_then_revoke_a_fine_tuned_model(client, store, settings, keys):
    """Project beta can use alpha's model only while a permission exists: chat, evals, a job on top
    of it, and its model list; it never manages the model or its permissions."""
    key_a, key_b = keys["A"][0], keys["B"][0]
    done = _train(client, store, settings, key_a)
    ft, hb = done["fine_tuned_model"], bearer(key_b)
    b_file = upload_as(client, key_b, training_jsonl(12))["id"]
    b_eval = ok(client.post("/v1/evals", json=EVAL_BODY, headers=hb))["id"]
    chat = {"model": ft, "messages": [{"role": "user", "content": "1 plus 1?"}], "max_tokens": 2, "temperature": 0}
    completions = {"type": "completions", "model": ft, "sampling_params": {"max_completion_tokens": 2},
                   "input_messages": {"type": "template", "template": [{"role": "user", "content": "{{item.ref}}"}]},
                   "source": {"type": "file_content", "content": [{"item": {"ref": "a"}}]}}
    new_job = {"model": ft, "training_file": b_file, "method": {
        "type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 4}}}}

    def beta_can_use() -> dict:
        return {"chat": client.post("/v1/chat/completions", json=chat, headers=hb).status_code,
                "listed": ft in {m["id"] for m in ok(client.get("/v1/models", headers=hb))["data"]},
                "retrieve": client.get(f"/v1/models/{ft}", headers=hb).status_code,
                "eval run": client.post(f"/v1/evals/{b_eval}/runs", json={"data_source": completions},
                                        headers=hb).status_code,
                "job": client.post("/v1/fine_tuning/jobs", json=new_job, headers=hb).status_code}

    before = beta_can_use()
    assert before == {"chat": 404, "listed": False, "retrieve": 404, "eval run": 404, "job": 400}

    granted = ok(client.post(_perms_url(ft), json={"project_ids": [keys["B"][1]]}, headers=bearer(key_a)))
    permission = granted["data"][0]
    assert permission["project_id"] == keys["B"][1] and permission["id"].startswith("cp_")
    assert beta_can_use() == {"chat": 200, "listed": True, "retrieve": 200, "eval run": 200, "job": 200}
    reply = ok(client.post("/v1/chat/completions", json=chat, headers=hb))
    assert_matches(reply, "CreateChatCompletionResponse")
    assert reply["model"] == ft
    # beta's job on top of alpha's model trains (the shared adapter loads in the worker); its result is beta's
    beta_jobs = [j for j in ok(client.get("/v1/fine_tuning/jobs", headers=hb))["data"] if j["model"] == ft]
    assert len(beta_jobs) == 1
    while Worker(settings, store).run_once() is not None:  # beta's job and eval run
        pass
    trained = ok(client.get(f"/v1/fine_tuning/jobs/{beta_jobs[0]['id']}", headers=hb))
    assert trained["status"] == "succeeded", trained["error"]
    assert client.get(f"/v1/models/{trained['fine_tuned_model']}", headers=bearer(key_a)).status_code == 404
    runs = ok(client.get(f"/v1/evals/{b_eval}/runs", headers=hb))["data"]
    assert [r["status"] for r in runs] == ["completed"] and runs[0]["model"] == ft

    # beta uses the model but does not own it: managing it is a 404, exactly as for a missing model
    fake = "ft:modelmill-tiny:modelmill::nosuchid"
    for method, url, body in (("GET", _perms_url(ft), None), ("POST", _perms_url(ft), {"project_ids": [keys["C"][1]]}),
                              ("DELETE", f"{_perms_url(ft)}/{permission['id']}", None),
                              ("DELETE", f"/v1/models/{ft}", None)):
        foreign = client.request(method, url, json=body, headers=hb)
        assert foreign.status_code == 404, (method, url, foreign.text)
        same_but_id(foreign, client.request(method, url.replace(ft, fake), json=body, headers=hb), ft, fake)

    waiting = ok(client.post("/v1/fine_tuning/jobs", json=new_job, headers=hb))  # accepted while shared...
    revoked = ok(client.delete(f"{_perms_url(ft)}/{permission['id']}", headers=bearer(key_a)))
    assert_matches(revoked, "DeleteFineTuningCheckpointPermissionResponse")
    assert revoked == {"id": permission["id"], "object": "checkpoint.permission", "deleted": True}
    assert beta_can_use() == before
    assert Worker(settings, store).run_once() == waiting["id"]  # ...but run after the revoke: refused
    failed = ok(client.get(f"/v1/fine_tuning/jobs/{waiting['id']}", headers=hb))
    assert failed["status"] == "failed" and failed["error"]["code"] == "model_not_available", failed["error"]
    again = client.delete(f"{_perms_url(ft)}/{permission['id']}", headers=bearer(key_a))
    assert again.status_code == 404 and again.json()["error"]["param"] == "permission_id"
    assert ok(client.get(_perms_url(ft), headers=bearer(key_a)))["data"] == []


def test_sharing_a_checkpoint_shares_only_that_checkpoint(client, store, keys, worlds):
    """Permissions are per model name: gamma was given alpha's checkpoint and model; a new project
    given only the checkpoint sees only the checkpoint."""
    h = bearer(keys["A"][0])
    delta = store.projects.ensure("delta")
    delta_key = store.keys.create("delta key", delta.id)[1]
    ok(client.post(_perms_url(worlds["A"]["ckpt"]), json={"project_ids": [delta.id]}, headers=h))
    ids = {m["id"] for m in ok(client.get("/v1/models", headers=bearer(delta_key)))["data"]}
    assert worlds["A"]["ckpt"] in ids and worlds["A"]["ft"] not in ids
    assert client.get(f"/v1/models/{worlds['A']['ft']}", headers=bearer(delta_key)).status_code == 404


# -- keys, the CLI, keyless mode and the migration --------------------------------------------------

def test_keys_create_with_a_project(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MODELMILL_HOME", str(tmp_path))
    assert cli.main(["keys", "create", "--project", "research", "--name", "ci"]) == 0
    out, err = capsys.readouterr()
    key_r = out.strip()
    assert key_r.startswith("sk-") and len(key_r) > 40 and "research" in err and "proj_" in err
    assert key_r not in err
    assert cli.main(["keys", "create", "--project", "research"]) == 0
    key_r2 = capsys.readouterr().out.strip()
    assert cli.main(["keys", "create"]) == 0  # today's command: a key of the default project
    key_d = capsys.readouterr().out.strip()
    assert cli.main(["keys", "create", "--project", "no spaces"]) == 2
    assert "project name" in capsys.readouterr().err
    assert cli.main(["projects", "list", "--json"]) == 0
    projects = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
    assert projects["research"]["keys"] == 2 and projects["default"]["keys"] == 1
    assert projects["default"]["id"] == "proj_default" and set(projects) == {"research", "default"}

    from modelmill.settings import Settings

    settings = Settings.from_env()
    store = open_store(settings)
    assert authenticate(settings, store, f"Bearer {key_r}") == projects["research"]["id"]
    assert authenticate(settings, store, f"Bearer {key_r2}") == projects["research"]["id"]
    assert authenticate(settings, store, f"Bearer {key_d}") == "proj_default"
    with pytest.raises(PermissionError):
        authenticate(settings, store, "Bearer sk-unknown")
    store.close()


def test_keyless_loopback_requests_act_in_the_default_project(client, store):
    f = upload_as(client, "ignored-while-no-key-exists")
    assert store.files.get(f["id"]).project_id == "proj_default"
    default_key = store.keys.create("ops")[1]  # once a key exists, unknown keys are refused
    r = client.get("/v1/files", headers=bearer("sk-not-a-key"))
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert [x["id"] for x in ok(client.get("/v1/files", headers=bearer(default_key)))["data"]] == [f["id"]]


def test_rows_from_before_projects_move_into_the_default_project(settings, monkeypatch):
    """A store made by the migrations up to 0008 (no projects) is upgraded: every row joins the
    default project, old keys act in it, and adapters recorded before manifests stay loadable."""
    from modelmill.service.models import adapters
    from modelmill.service.models import registry as model_registry
    from modelmill.service.store import db as db_module

    names = [n for n, _ in MIGRATIONS]
    old = MIGRATIONS[:names.index("0009_projects")]
    monkeypatch.setattr(db_module, "MIGRATIONS", old)
    legacy = Database(settings.db_path)
    now = time.time() - 60
    adapter = settings.jobs_dir / "ftjob-legacy" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.safetensors").write_bytes(b"weights from before")
    from modelmill.service.store.keys import hash_key

    legacy.execute("INSERT INTO api_keys (id, name, prefix, key_hash, created_at) VALUES ('key_old', 'old', 'mm-abc',"
                   " ?, ?)", (hash_key("mm-legacy-key"), now))
    legacy.execute("INSERT INTO files (id, filename, purpose, bytes, created_at) VALUES ('file-old', 'a.jsonl',"
                   " 'fine-tune', 3, ?)", (now,))
    legacy.execute("INSERT INTO jobs (id, created_at, model, base_model, training_file, seed, method_type,"
                   " hyperparameters, ft_name, status, fine_tuned_model, adapter_dir, finished_at, updated_at) VALUES"
                   " ('ftjob-legacy', ?, 'modelmill-tiny', 'modelmill-tiny', 'file-old', 1, 'supervised', '{}',"
                   " 'ft:modelmill-tiny:modelmill::legacy00', 'succeeded', 'ft:modelmill-tiny:modelmill::legacy00', ?,"
                   " ?, ?)", (now, str(adapter), now, now))
    legacy.execute("INSERT INTO evals (id, name, created_at, updated_at, data_source_config, testing_criteria)"
                   " VALUES ('eval_old', 'old', ?, ?, '{}', ?)", (now, now, json.dumps([EXACT])))
    legacy.execute("INSERT INTO eval_runs (id, eval_id, name, created_at, data_source, status, result_counts,"
                   " per_testing_criteria_results, per_model_usage, updated_at) VALUES ('evalrun_old', 'eval_old',"
                   " 'r', ?, ?, 'completed', '{}', '[]', '[]', ?)", (now, json.dumps(RUN_BODY["data_source"]), now))
    legacy.close()
    monkeypatch.setattr(db_module, "MIGRATIONS", MIGRATIONS)

    store = open_store(settings)
    try:
        applied = store.db.applied_migrations()
        assert applied[applied.index("0009_projects"):] == names[names.index("0009_projects"):]  # every later one
        assert [(p.id, p.name) for p in store.projects.list()] == [("proj_default", "default")]
        for table in ("api_keys", "files", "jobs", "evals", "eval_runs"):
            assert {r[0] for r in store.db.all(f"SELECT project_id FROM {table}")} == {"proj_default"}, table
        assert authenticate(settings, store, "Bearer mm-legacy-key") == "proj_default"
        served = model_registry.resolve(store, settings, "ft:modelmill-tiny:modelmill::legacy00",
                                        project_id="proj_default")
        assert served.adapter_dir == adapter.resolve()  # its manifest was recorded at the upgrade
        (adapter / "adapter_model.safetensors").write_bytes(b"changed afterwards")
        with pytest.raises(adapters.AdapterRefused, match="adapter_model.safetensors was modified"):
            model_registry.resolve(store, settings, "ft:modelmill-tiny:modelmill::legacy00")
    finally:
        store.close()
