"""Two (or more) projects, each holding one of every resource, for the tenancy tests.

build_world(client, store, settings, key) makes, in the key's project, through the API where the
API can: an uploaded file, a succeeded job with a fine-tuned model and a checkpoint (the worker's
writes are simulated through the queue, so no training runs), a job still waiting to be validated
(for cancel / pause / resume), an eval with a completed jsonl run and its output item, and a
checkpoint permission on the fine-tuned model and on the checkpoint.
"""

from __future__ import annotations

import threading

from modelmill.service.core.auth import SESSION_COOKIE
from modelmill.service.evals.runner import run_next_eval
from tests.service.conftest import training_jsonl

EXACT = {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}", "reference": "{{item.ref}}",
         "operation": "eq"}
EVAL_BODY = {"name": "tenancy", "data_source_config": {"type": "custom", "item_schema": {
    "type": "object", "properties": {"ref": {"type": "string"}}, "required": ["ref"]}}, "testing_criteria": [EXACT]}
BATCH_LINE = (b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "modelmill-tiny",'
              b' "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}}\n')
RUN_BODY = {"name": "r", "data_source": {"type": "jsonl", "source": {"type": "file_content", "content": [
    {"item": {"ref": "a"}, "sample": {"output_text": "a"}}]}}}


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def cookie(client, key: str) -> dict:
    """The headers a browser signed in with `key` sends: the dashboard's session cookie (a login
    token from a real POST /login) and its own Origin (the edge's CSRF check, api/edge.py)."""
    origin = {"Origin": str(client.base_url).rstrip("/")}
    r = client.post("/login", data={"api_key": key, "next": "/"}, headers=origin, follow_redirects=False)
    assert r.status_code == 303, r.text
    token = r.cookies[SESSION_COOKIE]
    client.cookies.clear()  # the caller sends the headers returned, only where it means to
    return {"Cookie": f"{SESSION_COOKIE}={token}", **origin}


def ok(response, status: int = 200) -> dict:
    assert response.status_code == status, response.text
    return response.json()


def upload_as(client, key: str, content: bytes = None, purpose: str = "fine-tune") -> dict:
    return ok(client.post("/v1/files", files={"file": ("train.jsonl", content or training_jsonl(12))},
                          data={"purpose": purpose}, headers=bearer(key)))


def succeeded_job(client, store, settings, key: str, file_id: str) -> dict:
    """A job the (simulated) worker finished: fine-tuned model, one checkpoint, adapter dirs on disk."""
    job = ok(client.post("/v1/fine_tuning/jobs", json={"model": "modelmill-tiny", "training_file": file_id},
                         headers=bearer(key)))
    queue = store.job_queue(lease_seconds=30)
    lease = queue.claim("simulated-worker")
    assert lease is not None and lease.id == job["id"], "another job was runnable"
    record = store.jobs.get(job["id"])
    out = settings.jobs_dir / job["id"]
    ckpt_dir, adapter_dir = out / "checkpoints" / "step-1", out / "adapter"
    for d in (ckpt_dir, adapter_dir):
        d.mkdir(parents=True)
        (d / "adapter_config.json").write_text("{}")
        (d / "adapter_model.safetensors").write_bytes(b"simulated")
    ckpt_name = f"{record.ft_name}:ckpt-step-1"
    queue.add_checkpoint(lease, 1, ckpt_dir, {"step": 1, "train_loss": 1.0}, ckpt_name)
    queue.finish(lease, "succeeded", fine_tuned_model=record.ft_name, adapter_dir=str(adapter_dir), trained_tokens=1,
                 result_files=[], message="The job has successfully completed")
    return {"job": job["id"], "ft": record.ft_name, "ckpt": ckpt_name}


def build_world(client, store, settings, key: str, share_with: str) -> dict:
    """Every resource kind in `key`'s project; its models are shared with project `share_with`."""
    world = {"file": upload_as(client, key)["id"]}
    world.update(succeeded_job(client, store, settings, key, world["file"]))
    world["event"] = ok(client.get(f"/v1/fine_tuning/jobs/{world['job']}/events", headers=bearer(key)))["data"][0]["id"]
    world["eval"] = ok(client.post("/v1/evals", json=EVAL_BODY, headers=bearer(key)))["id"]
    world["run"] = ok(client.post(f"/v1/evals/{world['eval']}/runs", json=RUN_BODY, headers=bearer(key)))["id"]
    while run_next_eval(settings, store, "test-worker", threading.Event()) is not None:
        pass
    items = ok(client.get(f"/v1/evals/{world['eval']}/runs/{world['run']}/output_items", headers=bearer(key)))
    world["item"] = items["data"][0]["id"]
    for model, name in (("ft", "perm"), ("ckpt", "ckpt_perm")):
        granted = ok(client.post(f"/v1/fine_tuning/checkpoints/{world[model]}/permissions",
                                 json={"project_ids": [share_with]}, headers=bearer(key)))
        world[name] = granted["data"][0]["id"]
    world.update(stored_objects(store, store.keys.verify(key).project_id))
    world["key"] = store.keys.verify(key).id  # its API key (the dashboard's revoke form)
    world["upload"] = ok(client.post("/v1/uploads", headers=bearer(key), json={  # a pending Upload
        "filename": "big.jsonl", "purpose": "fine-tune", "bytes": 2, "mime_type": "text/jsonl"}))["id"]
    world["webhook"] = ok(client.post("/v1/webhook_endpoints", headers=bearer(key),  # a public address: no DNS
                                      json={"url": "http://8.8.8.8/hook"}))["id"]
    batch_file = upload_as(client, key, BATCH_LINE, purpose="batch")["id"]
    world["batch"] = ok(client.post("/v1/batches", headers=bearer(key), json={  # validating: no worker runs here
        "input_file_id": batch_file, "endpoint": "/v1/chat/completions", "completion_window": "24h"}))["id"]
    return world


def stored_objects(store, project_id: str) -> dict:
    """A stored Response and a stored chat completion of the project. Written through the store, as
    the worker's writes are above: generating them through the API would load a model, and the
    routes that read them are what the tenancy tests are about."""
    from modelmill.service.store.ids import new_id

    response = {"id": new_id("resp_"), "object": "response", "created_at": 1_700_000_000, "status": "completed",
                "model": "modelmill-tiny", "metadata": {"owner": project_id}, "output": []}
    item = {"id": new_id("msg_"), "type": "message", "role": "user", "status": "completed",
            "content": [{"type": "input_text", "text": "hi"}]}
    store.responses.add(project_id, response, [item], [{"role": "user", "content": "hi"}])
    completion = {"id": new_id("chatcmpl-"), "object": "chat.completion", "created": 1_700_000_000,
                  "model": "modelmill-tiny", "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                                                          "message": {"role": "assistant", "content": "hello",
                                                                      "refusal": None}}]}
    store.stored_completions.add(project_id, completion, {"messages": [{"role": "user", "content": "hi"}]},
                                 {"owner": project_id})
    return {"response": response["id"], "completion": completion["id"]}


def queued_job(client, key: str, file_id: str) -> str:
    """A job nobody has claimed yet (validating_files): cancel / pause / resume would change it."""
    return ok(client.post("/v1/fine_tuning/jobs", json={"model": "modelmill-tiny", "training_file": file_id},
                          headers=bearer(key)))["id"]
