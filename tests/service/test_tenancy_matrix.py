"""Tenancy matrix: every endpoint with a path parameter, for every resource kind it takes, called
with another project's key on project A's resource, answers 404 with exactly the body a never-used
id gets (ids substituted), so ids cannot be probed; and A's resource is untouched afterwards.

The cases are checked against the app's route table: a new route with a path parameter that has
no case here fails test_every_route_with_a_path_parameter_is_in_the_matrix.
"""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient
from starlette.routing import Mount

from modelmill.settings import Settings
from modelmill.service.api.app import create_app
from modelmill.service.store import open_store
from tests.service.tenancy_world import RUN_BODY, bearer, build_world, cookie, ok, queued_job
from tests.spec_check import assert_matches

# Path parameter -> the resource kind of build_world it names.
KIND = {"file_id": "file", "job_id": "job", "eval_id": "eval", "run_id": "run", "output_item_id": "item",
        "model": "ft", "fine_tuned_model_checkpoint": "ft", "permission_id": "perm", "response_id": "response",
        "completion_id": "completion", "key_id": "key", "upload_id": "upload",
        "endpoint_id": "webhook", "batch_id": "batch"}
# What a never-used id of each kind looks like.
MISSING = {"file": "file-NoSuchFile000000000000", "job": "ftjob-NoSuchJob0000000000000",
           "queued": "ftjob-NoSuchJob0000000000000", "eval": "eval_NoSuchEval00000000000",
           "run": "evalrun_NoSuchRun000000000000", "item": "outputitem_NoSuchItem0000000000",
           "ft": "ft:modelmill-tiny:modelmill::nosuchid", "ckpt": "ft:modelmill-tiny:modelmill::nosuchid:ckpt-step-1",
           "perm": "cp_NoSuchPermission0000000", "ckpt_perm": "cp_NoSuchPermission0000000",
           "response": "resp_NoSuchResponse000000000", "completion": "chatcmpl-NoSuchCompletion00000000",
           "key": "key_NoSuchKey00000000", "upload": "upload_NoSuchUpload0000000000",
           "webhook": "whep_NoSuchEndpoint00000000", "batch": "batch_NoSuchBatch000000000000"}
BODIES = {("POST", "/v1/evals/{eval_id}"): {"name": "renamed"},
          ("POST", "/v1/evals/{eval_id}/runs"): RUN_BODY,
          ("POST", "/v1/chat/completions/{completion_id}"): {"metadata": {"owner": "B"}},
          ("POST", "/v1/uploads/{upload_id}/complete"): {"part_ids": ["part_x"]}}
DASHBOARD_PAGES = ("/jobs/{job_id}", "/files/{file_id}", "/keys/{key_id}/revoke")

# (method, route path, overrides): each path parameter names project A's resource of KIND[param],
# unless overridden: "kind" (A's resource of that kind) or "B:kind" (the caller's own resource, so
# only the innermost id is foreign). Permissions routes also take the POST body {"project_ids": [B]}.
CASES = [
    ("GET", "/v1/files/{file_id}", {}),
    ("DELETE", "/v1/files/{file_id}", {}),
    ("GET", "/v1/files/{file_id}/content", {}),
    ("GET", "/v1/fine_tuning/jobs/{job_id}", {}),
    ("POST", "/v1/fine_tuning/jobs/{job_id}/cancel", {"job_id": "queued"}),
    ("POST", "/v1/fine_tuning/jobs/{job_id}/pause", {"job_id": "queued"}),
    ("POST", "/v1/fine_tuning/jobs/{job_id}/resume", {"job_id": "queued"}),
    ("GET", "/v1/fine_tuning/jobs/{job_id}/events", {}),
    ("GET", "/v1/fine_tuning/jobs/{job_id}/checkpoints", {}),
    ("GET", "/v1/models/{model:path}", {}),
    ("GET", "/v1/models/{model:path}", {"model": "ckpt"}),
    ("DELETE", "/v1/models/{model:path}", {}),
    ("DELETE", "/v1/models/{model:path}", {"model": "ckpt"}),
    ("GET", "/v1/models/{model:path}/export", {}),
    ("GET", "/v1/models/{model:path}/export", {"model": "ckpt"}),
    ("POST", "/v1/fine_tuning/checkpoints/{fine_tuned_model_checkpoint:path}/permissions", {}),
    ("POST", "/v1/fine_tuning/checkpoints/{fine_tuned_model_checkpoint:path}/permissions",
     {"fine_tuned_model_checkpoint": "ckpt"}),
    ("GET", "/v1/fine_tuning/checkpoints/{fine_tuned_model_checkpoint:path}/permissions", {}),
    ("GET", "/v1/fine_tuning/checkpoints/{fine_tuned_model_checkpoint:path}/permissions",
     {"fine_tuned_model_checkpoint": "ckpt"}),
    ("DELETE", "/v1/fine_tuning/checkpoints/{fine_tuned_model_checkpoint:path}/permissions/{permission_id}", {}),
    ("DELETE", "/v1/fine_tuning/checkpoints/{fine_tuned_model_checkpoint:path}/permissions/{permission_id}",
     {"fine_tuned_model_checkpoint": "ckpt", "permission_id": "ckpt_perm"}),
    ("DELETE", "/v1/fine_tuning/checkpoints/{fine_tuned_model_checkpoint:path}/permissions/{permission_id}",
     {"fine_tuned_model_checkpoint": "B:ft"}),
    ("GET", "/v1/evals/{eval_id}", {}),
    ("POST", "/v1/evals/{eval_id}", {}),
    ("DELETE", "/v1/evals/{eval_id}", {}),
    ("POST", "/v1/evals/{eval_id}/runs", {}),
    ("GET", "/v1/evals/{eval_id}/runs", {}),
    ("GET", "/v1/evals/{eval_id}/runs/{run_id}", {}),
    ("GET", "/v1/evals/{eval_id}/runs/{run_id}", {"eval_id": "B:eval"}),
    ("POST", "/v1/evals/{eval_id}/runs/{run_id}", {}),
    ("POST", "/v1/evals/{eval_id}/runs/{run_id}", {"eval_id": "B:eval"}),
    ("POST", "/v1/evals/{eval_id}/runs/{run_id}/cancel", {}),
    ("POST", "/v1/evals/{eval_id}/runs/{run_id}/cancel", {"eval_id": "B:eval"}),
    ("DELETE", "/v1/evals/{eval_id}/runs/{run_id}", {}),
    ("DELETE", "/v1/evals/{eval_id}/runs/{run_id}", {"eval_id": "B:eval"}),
    ("GET", "/v1/evals/{eval_id}/runs/{run_id}/output_items", {}),
    ("GET", "/v1/evals/{eval_id}/runs/{run_id}/output_items", {"eval_id": "B:eval"}),
    ("GET", "/v1/evals/{eval_id}/runs/{run_id}/output_items/{output_item_id}", {}),
    ("GET", "/v1/evals/{eval_id}/runs/{run_id}/output_items/{output_item_id}", {"eval_id": "B:eval"}),
    ("GET", "/v1/evals/{eval_id}/runs/{run_id}/output_items/{output_item_id}",
     {"eval_id": "B:eval", "run_id": "B:run"}),
    ("GET", "/evals/{eval_id}/runs/{run_id}", {}),
    ("GET", "/evals/{eval_id}/runs/{run_id}", {"eval_id": "B:eval"}),
    ("GET", "/v1/responses/{response_id}", {}),
    ("DELETE", "/v1/responses/{response_id}", {}),
    ("GET", "/v1/responses/{response_id}/input_items", {}),
    ("GET", "/v1/chat/completions/{completion_id}", {}),
    ("POST", "/v1/chat/completions/{completion_id}", {}),
    ("DELETE", "/v1/chat/completions/{completion_id}", {}),
    ("GET", "/v1/chat/completions/{completion_id}/messages", {}),
    ("POST", "/v1/uploads/{upload_id}/parts", {}),
    ("POST", "/v1/uploads/{upload_id}/complete", {}),
    ("POST", "/v1/uploads/{upload_id}/cancel", {}),
    ("GET", "/v1/webhook_endpoints/{endpoint_id}", {}),
    ("DELETE", "/v1/webhook_endpoints/{endpoint_id}", {}),
    ("GET", "/v1/webhook_endpoints/{endpoint_id}/deliveries", {}),
    ("GET", "/v1/batches/{batch_id}", {}),
    ("POST", "/v1/batches/{batch_id}/cancel", {}),
    ("GET", "/dashboard/api/jobs/{job_id}", {}),
    ("GET", "/dashboard/api/files/{file_id}/report", {}),
    ("GET", "/jobs/{job_id}", {}),
    ("GET", "/files/{file_id}", {}),
    ("POST", "/keys/{key_id}/revoke", {}),
]


@pytest.fixture(scope="module")
def tenants(tmp_path_factory, shared_models_dir):
    """Projects A and B with a world each, project C that A and B share their models with, and a client."""
    home = tmp_path_factory.mktemp("tenancy") / "home"
    home.mkdir()
    (home / "models").symlink_to(shared_models_dir, target_is_directory=True)
    settings = Settings(home=home, lease_seconds=5.0, heartbeat_seconds=0.2, poll_seconds=0.05).ensure_dirs()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MODELMILL_HOME", str(home))
        store = open_store(settings)
        keys = {}
        for name in ("A", "B", "C"):
            record, keys[name] = store.keys.create(f"key {name}", store.projects.ensure(f"project-{name}").id)
        project_c = store.projects.ensure("project-C").id
        with TestClient(create_app(settings, store=store)) as client:
            worlds = {p: build_world(client, store, settings, keys[p], project_c) for p in ("A", "B")}
            for p in ("A", "B"):
                worlds[p]["queued"] = queued_job(client, keys[p], worlds[p]["file"])
            yield {"client": client, "keys": keys, "worlds": worlds, "store": store, "settings": settings,
                   "projects": {p: store.projects.ensure(f"project-{p}").id for p in "ABC"}}
        store.close()


def _url(path: str, ids: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)(:\w+)?\}", lambda m: ids[m.group(1)], path)


def _ids(path: str, overrides: dict, worlds: dict, missing: bool) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """(path parameter -> id, [(A's id, the never-used id standing in for it)])."""
    ids, swaps = {}, []
    for name in re.findall(r"\{(\w+)(?::\w+)?\}", path):
        spec = overrides.get(name, KIND[name])
        owner, kind = spec.split(":") if ":" in spec else ("A", spec)
        real = worlds[owner][kind]
        if owner == "A":
            swaps.append((real, MISSING[kind]))
            ids[name] = MISSING[kind] if missing else real
        else:
            ids[name] = real
    return ids, swaps


def _call(client, method: str, path: str, ids: dict, key: str, body):
    headers = cookie(client, key) if path in DASHBOARD_PAGES or path.startswith("/dashboard/") else bearer(key)
    return client.request(method, _url(path, ids), json=body, headers=headers)


def _case_id(case) -> str:
    method, path, overrides = case
    return f"{method} {path}" + (f" {overrides}" if overrides else "")


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_another_projects_resource_is_a_404_like_a_missing_one(tenants, case):
    method, path, overrides = case
    client, worlds, key_b = tenants["client"], tenants["worlds"], tenants["keys"]["B"]
    body = BODIES.get((method, path))
    if path.endswith("/permissions") and method == "POST":
        body = {"project_ids": [tenants["projects"]["B"]]}
    ids, swaps = _ids(path, overrides, worlds, missing=False)
    foreign = _call(client, method, path, ids, key_b, body)
    missing = _call(client, method, path, _ids(path, overrides, worlds, missing=True)[0], key_b, body)

    assert foreign.status_code == 404, f"{method} {_url(path, ids)} as project B: {foreign.status_code} {foreign.text}"
    assert missing.status_code == 404, missing.text
    text = foreign.text
    for real, fake in swaps:
        text = text.replace(real, fake)
    assert text == missing.text, "another project's id must read exactly like a missing one"
    if foreign.headers["content-type"].startswith("application/json"):
        assert_matches(foreign.json(), "ErrorResponse")


def test_project_a_still_has_everything(tenants):
    """After every call above (cancel, pause, delete, revoke... as B), A's resources are intact."""
    client, a, key_a = tenants["client"], tenants["worlds"]["A"], tenants["keys"]["A"]
    h = bearer(key_a)
    assert ok(client.get(f"/v1/files/{a['file']}", headers=h))["id"] == a["file"]
    assert tenants["store"].uploads.get(a["upload"], tenants["projects"]["A"]).status == "pending"  # not cancelled
    assert ok(client.get(f"/v1/fine_tuning/jobs/{a['queued']}", headers=h))["status"] == "validating_files"
    assert ok(client.get(f"/v1/fine_tuning/jobs/{a['job']}", headers=h))["status"] == "succeeded"
    for model in (a["ft"], a["ckpt"]):
        assert ok(client.get(f"/v1/models/{model}", headers=h))["id"] == model
    perms = ok(client.get(f"/v1/fine_tuning/checkpoints/{a['ft']}/permissions", headers=h))
    assert [p["id"] for p in perms["data"]] == [a["perm"]]
    assert ok(client.get(f"/v1/evals/{a['eval']}", headers=h))["name"] == "tenancy"  # not "renamed"
    runs = ok(client.get(f"/v1/evals/{a['eval']}/runs", headers=h))["data"]
    assert [(r["id"], r["status"]) for r in runs] == [(a["run"], "completed")]  # none added, none cancelled
    item = ok(client.get(f"/v1/evals/{a['eval']}/runs/{a['run']}/output_items/{a['item']}", headers=h))
    assert item["id"] == a["item"]
    assert ok(client.get(f"/v1/responses/{a['response']}", headers=h))["id"] == a["response"]
    stored = ok(client.get(f"/v1/chat/completions/{a['completion']}", headers=h))
    assert stored["metadata"] == {"owner": tenants["projects"]["A"]}  # not B's update
    listed = ok(client.get("/v1/chat/completions", headers=h))["data"]
    assert [c["id"] for c in listed] == [a["completion"]]  # only A's own
    assert tenants["store"].keys.verify(key_a).id == a["key"]  # B's revoke form did not revoke A's key
    assert ok(client.get(f"/v1/webhook_endpoints/{a['webhook']}", headers=h))["id"] == a["webhook"]  # not deleted
    assert ok(client.get(f"/v1/batches/{a['batch']}", headers=h))["status"] == "validating"  # not cancelled


def _routes_with_path_parameters(routes, prefix: str = "") -> set[tuple[str, str]]:
    """(method, full path) of every route with a path parameter, looking inside included routers."""
    out = set()
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:  # FastAPI keeps an included router whole; its prefix is in include_context
            out |= _routes_with_path_parameters(inner.routes, prefix + route.include_context.prefix)
        elif isinstance(route, Mount):  # /dashboard/static: the dashboard's own files, not a project's
            continue
        elif "{" in route.path:
            out |= {(m, prefix + route.path) for m in route.methods - {"HEAD"}}
    return out


def test_every_route_with_a_path_parameter_is_in_the_matrix(tenants):
    app = create_app(tenants["settings"], store=tenants["store"])
    routes = _routes_with_path_parameters(app.routes)
    assert len(routes) >= 30
    covered = {(m, p) for m, p, _ in CASES}
    assert routes - covered == set(), "routes with a path parameter missing from the tenancy matrix"
    assert covered - routes == set(), "matrix cases for routes that no longer exist"
    kinds = {KIND[n] for _, p, _ in CASES for n in re.findall(r"\{(\w+)", p)}
    kinds |= {v.split(":")[-1] for _, _, o in CASES for v in o.values()}
    assert kinds >= {"file", "job", "queued", "ft", "ckpt", "perm", "ckpt_perm", "eval", "run", "item", "key"}
