"""The dashboard: its pages, /dashboard/api JSON, the session-cookie login, and the pure
helpers behind them (series, best checkpoint, eval table, token statistics)."""

from __future__ import annotations

import json
import re
import time

import pytest
from fastapi import APIRouter, FastAPI

from modelmill.service.core.auth import SESSION_COOKIE, create_key
from modelmill.service.dashboard import evals_view, file_report, jobs_view, views
from modelmill.service.store import NewJob
from modelmill.service.store.records import CheckpointRecord, EventRecord
from modelmill.service.store.records import to_json
from tests.service.conftest import preference_jsonl, training_jsonl, upload

PAGES = ("/", "/files", "/models", "/playground", "/evals")


def add_job(store, job_id: str, method: str = "supervised", training_file: str = "file-x", **fields) -> str:
    store.jobs.create(NewJob(id=job_id, model="modelmill-tiny", base_model="modelmill-tiny", init_adapter=None,
                             training_file=training_file, validation_file=None, suffix=None, seed=0, metadata=None,
                             integrations=None, method_type=method,
                             hyperparameters={"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 1.0},
                             ft_name=f"ft:modelmill-tiny:o::{job_id}"))
    if fields:
        fields = {k: to_json(v) if isinstance(v, (dict, list)) else v for k, v in fields.items()}
        sets = ", ".join(f"{k} = ?" for k in fields)
        store.db.execute(f"UPDATE jobs SET {sets} WHERE id = ?", (*fields.values(), job_id))
    return job_id


def add_metrics(store, job_id: str, rows: list[dict]) -> None:
    for row in rows:
        store.events.add(job_id, "info", f"Step {row['step']}", type="metrics", data=row)


def add_checkpoint(store, job_id: str, step: int, metrics: dict) -> None:
    store.db.execute("INSERT INTO checkpoints (id, job_id, created_at, step_number, metrics, path,"
                     " fine_tuned_model_checkpoint) VALUES (?, ?, ?, ?, ?, ?, ?)",
                     (f"ftckpt_{job_id}_{step}", job_id, time.time(), step, json.dumps({"step": step, **metrics}),
                      "/nonexistent", f"ft:modelmill-tiny:o::{job_id}:ckpt-step-{step}"))


# -- pages ------------------------------------------------------------------------------

def test_pages_render_with_only_local_assets(client, store):
    job_id = add_job(store, "ftjob-page")
    for path in (*PAGES, f"/jobs/{job_id}"):
        r = client.get(path)
        assert r.status_code == 200, (path, r.text)
        assert r.headers["content-type"].startswith("text/html")
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "default-src 'self'" in csp
        refs = re.findall(r'(?:src|href)="([^"]+)"', r.text)
        assert refs and all(ref.startswith(("/", "#", "data:")) for ref in refs), (path, refs)
        assert "<script>" not in r.text  # no inline scripts: the CSP would block them
    for asset in ("uPlot.iife.min.js", "uPlot.min.css", "LICENSE", "VERSION"):
        r = client.get(f"/dashboard/static/vendor/uplot/{asset}")
        assert r.status_code == 200 and r.content, asset
    assert client.get(f"/jobs/{job_id}").text.count('src="/dashboard/static/vendor/uplot/uPlot.iife.min.js"') == 1


def test_unknown_job_page_is_a_404_page(client):
    r = client.get("/jobs/ftjob-nope")
    assert r.status_code == 404 and "No such fine-tuning job" in r.text


def test_nav_links_evals_only_when_the_route_exists(client):
    assert '<a href="/evals" class="">Evals</a>' in client.get("/").text
    assert '<a href="/evals" class="on">Evals</a>' in client.get("/evals").text
    bare = FastAPI()
    assert views.evals_url(bare) is None  # an app without an evals page: no link
    evals = APIRouter()

    @evals.get("/evals/runs")
    def runs():
        return {}

    @evals.get("/evals/{eval_id}/runs/{run_id}")  # path parameters: not a page to link
    def report(eval_id: str, run_id: str):
        return {}

    bare.include_router(evals)
    assert views.evals_url(bare) == "/evals/runs"


EXACT = {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}", "reference": "{{item.label}}",
         "operation": "eq"}
NONEMPTY = {"type": "string_check", "name": "nonempty", "input": "{{sample.output_text}}", "reference": "",
            "operation": "ne"}


def test_evals_page_lists_runs_with_pass_rates_and_report_links(client, store, settings):
    from modelmill.service.worker.loop import Worker

    assert 'id="no-evals"' in client.get("/evals").text
    r = client.post("/v1/evals", json={"name": "labels <b>", "data_source_config": {
        "type": "custom", "item_schema": {"type": "object"}, "include_sample_schema": True},
        "testing_criteria": [EXACT, NONEMPTY]})
    assert r.status_code == 200, r.text
    eval_id = r.json()["id"]
    content = [{"item": {"label": str(i)}, "sample": {"output_text": str(i) if i % 4 == 0 else "no"}}
               for i in range(4)]
    r = client.post(f"/v1/evals/{eval_id}/runs", json={"name": "given", "data_source": {
        "type": "jsonl", "source": {"type": "file_content", "content": content}}})
    done_id = r.json()["id"]
    assert Worker(settings, store).run_once() == done_id
    queued_id = client.post(f"/v1/evals/{eval_id}/runs", json={"data_source": {
        "type": "jsonl", "source": {"type": "file_content", "content": content[:1]}}}).json()["id"]

    rows = {r["id"]: r for ev in evals_view.eval_rows(store) for r in ev["runs"]}
    done = rows[done_id]
    assert (done["status"], done["passed"], done["total"], done["active"]) == ("completed", 1, 4, False)
    assert done["rates"] == {"exact": 0.25, "nonempty": 1.0}
    assert rows[queued_id]["rates"] == {"exact": None, "nonempty": None} and rows[queued_id]["active"]

    r = client.get("/evals")
    assert r.status_code == 200 and r.headers["content-security-policy"].startswith("default-src 'self'")
    page = r.text
    assert "labels &lt;b&gt;" in page and eval_id in page  # autoescaped
    assert page.index(queued_id) < page.index(done_id)  # newest run first
    row = page[page.index(f'data-run-id="{done_id}"'):page.index("</tr>", page.index(f'data-run-id="{done_id}"'))]
    assert f'href="/evals/{eval_id}/runs/{done_id}"' in row and 'class="status completed"' in row
    assert ">1/4" in row and "25.0%" in row and "100.0%" in row
    assert '<meta http-equiv="refresh"' in page  # a run is still queued
    report = client.get(f"/evals/{eval_id}/runs/{done_id}")
    assert report.status_code == 200 and "Testing criteria" in report.text

    create_key(store, "dash")  # with keys: the page asks for one, like every dashboard page
    r = client.get("/evals", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login?next=%2Fevals"


# -- JSON -------------------------------------------------------------------------------

def test_jobs_api_rows(client, store):
    now = time.time()
    add_job(store, "ftjob-done", status="succeeded", started_at=now - 100, finished_at=now - 40,
            trained_tokens=1234, step=10, total_steps=10, hyperparameters_resolved=1)
    add_job(store, "ftjob-run", status="running", started_at=now - 30, step=3, total_steps=12,
            hyperparameters_resolved=1)
    rows = {r["id"]: r for r in client.get("/dashboard/api/jobs").json()["data"]}
    done, run = rows["ftjob-done"], rows["ftjob-run"]
    assert (done["status"], done["method"], done["model"]) == ("succeeded", "supervised", "modelmill-tiny")
    assert done["progress"] == 1.0 and done["tokens"] == 1234 and not done["tokens_estimated"]
    assert done["elapsed_s"] == pytest.approx(60, abs=1)
    assert run["progress"] == 0.25 and run["active"] and run["elapsed_s"] == pytest.approx(30, abs=5)
    assert run["tokens"] is None  # no token count of its training file yet


def test_job_detail(client, store):
    job_id = add_job(store, "ftjob-detail", status="succeeded", step=6, total_steps=6, hyperparameters_resolved=1)
    add_metrics(store, job_id, [
        {"step": 1, "total_steps": 6, "train_loss": 2.0},
        {"step": 2, "total_steps": 6, "train_loss": 1.9},  # repeated below after a resume: the newer value wins
        {"step": 2, "total_steps": 6, "train_loss": 1.5, "valid_loss": 1.7},
        {"step": 3, "total_steps": 6, "train_loss": 1.2, "full_valid_loss": 1.4, "full_valid_mean_token_accuracy": 0.5},
    ])
    add_checkpoint(store, job_id, 3, {"train_loss": 1.2, "full_valid_loss": 1.4})
    add_checkpoint(store, job_id, 6, {"train_loss": 1.0, "full_valid_loss": 1.6})
    store.events.add(job_id, "info", "old table", data={"eval_comparison": {"criteria": ["a"], "rows": []}})
    table = {"criteria": ["exact"], "rows": [
        {"label": "base", "model": "modelmill-tiny", "scores": {"exact": 0.1}, "passed": 1, "total": 10,
         "report_url": "/evals/x"},
        {"label": "final", "model": "ft:x", "scores": {"exact": 0.9}, "passed": 9, "total": 10}]}
    store.events.add(job_id, "info", "Before/after evals", data={"eval_comparison": table})
    d = client.get(f"/dashboard/api/jobs/{job_id}").json()
    assert d["job"]["object"] == "fine_tuning.job" and d["job"]["status"] == "succeeded"
    m = d["metrics"]
    assert m["steps"] == [1, 2, 3]
    assert m["series"]["train_loss"] == [2.0, 1.5, 1.2]
    assert m["series"]["valid_loss"] == [None, 1.7, None]
    assert [c["id"] for c in m["charts"]] == ["loss", "accuracy"]
    assert m["charts"][0]["series"] == ["train_loss", "valid_loss", "full_valid_loss"]
    assert [(c["step"], c["best"]) for c in d["checkpoints"]] == [(3, True), (6, False)]
    assert d["best_by"] == "full_valid_loss"
    assert d["eval_comparison"]["criteria"] == ["exact"] and len(d["eval_comparison"]["rows"]) == 2
    assert d["hyperparameters"] == {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 1.0}
    assert d["events"][0]["message"] == "Before/after evals"  # newest first


def test_job_detail_404(client):
    r = client.get("/dashboard/api/jobs/ftjob-nope")
    assert r.status_code == 404 and r.json()["error"]["param"] == "fine_tuning_job_id"


def test_models_api_kinds(client):
    data = client.get("/dashboard/api/models").json()["data"]
    kinds = {m["id"]: m["kind"] for m in data}
    assert kinds["modelmill-tiny"] == "base" and kinds["SmolLM2-135M-Instruct"] == "base"


# -- auth -------------------------------------------------------------------------------

def test_login_sets_an_httponly_strict_cookie_and_logout_clears_it(client, store):
    assert client.get("/", follow_redirects=False).status_code == 200  # no keys: open on loopback
    key = create_key(store, "dash")
    r = client.get("/jobs/ftjob-x?tab=1", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login?next=%2Fjobs%2Fftjob-x%3Ftab%3D1"
    assert client.get("/dashboard/api/jobs").status_code == 401
    assert client.get("/login").status_code == 200

    same_origin = {"Origin": "http://testserver"}  # as a browser sends it (the edge's CSRF check)
    r = client.post("/login", data={"api_key": "mm-wrong", "next": "/"}, headers=same_origin, follow_redirects=False)
    assert r.status_code == 401 and "not valid" in r.text and SESSION_COOKIE not in r.headers.get("set-cookie", "")
    r = client.post("/login", data={"api_key": key, "next": "//evil.example/x"}, headers=same_origin,
                    follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/"  # never off-site
    cookie = r.headers["set-cookie"].lower()
    assert cookie.startswith(f"{SESSION_COOKIE}=") and "httponly" in cookie and "samesite=strict" in cookie
    assert "path=/" in cookie and key not in r.headers["location"] and key.lower() not in cookie  # a token, not the key

    assert client.get("/", follow_redirects=False).status_code == 200
    assert client.get("/dashboard/api/jobs").status_code == 200
    assert client.get("/v1/models").status_code == 200  # the cookie counts as the key on /v1 too
    assert 'action="/logout"' in client.get("/").text

    r = client.post("/logout", headers=same_origin, follow_redirects=False)
    assert r.status_code == 303 and f'{SESSION_COOKIE}=""' in r.headers["set-cookie"]
    client.cookies.clear()
    assert client.get("/dashboard/api/jobs").status_code == 401


def test_a_wrong_cookie_is_refused_and_a_header_wins(client, store):
    key = create_key(store, "dash")
    client.cookies.set(SESSION_COOKIE, "mm-not-a-key")
    assert client.get("/v1/models").status_code == 401
    assert client.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200


# -- files ------------------------------------------------------------------------------

def bad_supervised_file() -> bytes:
    lines = training_jsonl(12).decode().splitlines()
    lines[2] = json.dumps({"messages": [{"role": "bot", "content": "hi"}]})
    lines[5] = "not json"
    return ("\n".join(lines) + "\n").encode()


def test_file_report_lists_problems_and_token_stats(client, settings):
    f = upload(client, bad_supervised_file())
    r = client.get(f"/dashboard/api/files/{f['id']}/report", params={"model": "modelmill-tiny"})
    assert r.status_code == 200, r.text
    rep = r.json()
    assert rep["validated"] and not rep["ok"] and rep["method"] == "supervised"
    assert rep["tokenizer_model"] == "modelmill-tiny"
    assert [(p["line"], p["field"], p["code"]) for p in rep["problems"]] == [
        (3, "messages[0].role", "unknown_role"), (6, "", "invalid_json")]
    t = rep["tokens"]
    assert t["count"] == 10 and sum(b["count"] for b in t["histogram"]) == 10
    assert t["min"] <= t["p50"] <= t["p90"] <= t["max"] and t["total"] >= 10 * t["min"]
    assert list((settings.home / "cache" / "dashboard").glob("*.json"))  # cached on disk
    # No job uses the file: the model's default limit (its context; memory allows more on any test machine).
    assert t["max_seq_len"] == rep["max_seq_len"]["tokens"] == 8192 and t["over_max_seq_len"] == 0
    assert rep["max_seq_len"]["why"] == "modelmill-tiny's default for batches of 1: model context 8192"

    page = client.get(f"/files/{f['id']}", params={"model": "modelmill-tiny"}).text
    assert "messages[0].role" in page and 'id="token-histogram"' in page
    assert 'id="max-seq-len">8192' in page
    assert page.count('class="bin"') == len(t["histogram"])


def test_file_report_shows_the_limit_a_job_sets(client):
    f = upload(client, training_jsonl(12))
    create = client.post("/v1/fine_tuning/jobs", json={"model": "modelmill-tiny", "training_file": f["id"],
                                                       "metadata": {"modelmill.max_seq_len": "20"}})
    assert create.status_code == 200, create.text
    rep = client.get(f"/dashboard/api/files/{f['id']}/report").json()
    assert rep["max_seq_len"]["tokens"] == rep["tokens"]["max_seq_len"] == 20
    assert "modelmill.max_seq_len" in rep["max_seq_len"]["why"]
    assert rep["tokens"]["over_max_seq_len"] == 12  # every line (system + user + answer) is over 20 tokens


def test_file_report_detects_preference_files_and_skips_other_purposes(client):
    prefs = upload(client, preference_jsonl(12), filename="prefs.jsonl")
    rep = client.get(f"/dashboard/api/files/{prefs['id']}/report", params={"model": "modelmill-tiny"}).json()
    assert rep["method"] == "preference" and rep["ok"] and rep["tokens"]["count"] == 12
    other = upload(client, b"{}", purpose="user_data", filename="x.json")
    rep = client.get(f"/dashboard/api/files/{other['id']}/report").json()
    assert rep["validated"] is False and "only fine-tune" in rep["reason"]
    assert client.get("/dashboard/api/files/file-nope/report").status_code == 404


# -- pure helpers -----------------------------------------------------------------------

def ckpt(step: int, **metrics) -> CheckpointRecord:
    return CheckpointRecord(id=f"c{step}", job_id="j", created_at=0.0, step_number=step, metrics=metrics, path="",
                            fine_tuned_model_checkpoint=f"m:{step}")


def test_best_checkpoint_per_method():
    ckpts = [ckpt(1, valid_loss=1.0, valid_reward_mean=0.2), ckpt(2, valid_loss=0.5, valid_reward_mean=0.9),
             ckpt(3, valid_loss=0.5, valid_reward_mean=0.1)]
    assert jobs_view.best_checkpoint("supervised", ckpts) == ("c3", "valid_loss")  # a tie goes to the later step
    assert jobs_view.best_checkpoint("reinforcement", ckpts) == ("c2", "valid_reward_mean")
    assert jobs_view.best_checkpoint("dpo", [ckpt(1, train_loss=2.0), ckpt(2, train_loss=1.0)]) == ("c2", "train_loss")
    assert jobs_view.best_checkpoint("supervised", [ckpt(1)]) == (None, None)


def ev(data: dict, type: str = "metrics") -> EventRecord:
    return EventRecord(id="e", job_id="j", created_at=0.0, level="info", type=type, message="", data=data)


def test_metric_series_charts_dpo_and_rft_names():
    dpo = jobs_view.metric_series([ev({"step": 1, "train_loss": 0.7, "train_reward_margin": 0.1,
                                       "train_reward_accuracy": 0.5, "valid_reward_margin": 0.2})])
    assert [c["id"] for c in dpo["charts"]] == ["loss", "reward_margin", "reward_accuracy"]
    assert dpo["charts"][1]["series"] == ["train_reward_margin", "valid_reward_margin"]
    rft = jobs_view.metric_series([ev({"step": 1, "train_reward_mean": 0.3}),
                                   ev({"step": 2, "train_reward_mean": 0.4, "valid_reward_mean": 0.5}),
                                   ev({"note": "not metrics"}, type="message")])
    assert [c["id"] for c in rft["charts"]] == ["reward"]
    assert rft["series"]["valid_reward_mean"] == [None, 0.5] and rft["latest"]["train_reward_mean"] == 0.4


def test_length_stats_histogram():
    stats = file_report.length_stats([10, 20, 20, 30, 1100], bins=4, max_seq_len=1024)
    assert (stats["count"], stats["min"], stats["max"], stats["p50"], stats["over_max_seq_len"]) == (5, 10, 1100, 20, 1)
    assert [b["count"] for b in stats["histogram"]] == [4, 0, 0, 1]
    assert stats["histogram"][0]["lo"] == 10 and stats["histogram"][-1]["hi"] > 1100
    same = file_report.length_stats([7, 7, 7], max_seq_len=1024)
    assert same["histogram"] == [{"lo": 7, "hi": 8, "count": 3}]
    assert file_report.length_stats([], max_seq_len=1024) is None


def test_job_row_estimates_tokens_while_running():
    from modelmill.service.store.records import JobRecord

    base = dict(id="j", created_at=0.0, model="m", base_model="m", init_adapter=None, training_file="f",
                validation_file=None, suffix=None, seed=0, metadata=None, integrations=None,
                method_type="supervised", hyperparameters={"n_epochs": 2}, hyperparameters_resolved=True,
                ft_name="ft", status="running", requested_action=None, error=None, fine_tuned_model=None,
                adapter_dir=None, model_deleted_at=None, finished_at=None, started_at=10.0, trained_tokens=None,
                total_steps=10, step=5, estimated_finish=None)
    row = jobs_view.job_row(JobRecord(**base), now=70.0, tokens_per_epoch=1000)
    assert row["tokens"] == 1000 and row["tokens_estimated"] and row["elapsed_s"] == 60.0


def test_file_report_detects_reinforcement_items(client):
    from modelmill.ml import data

    if "reinforcement" not in data.LINE_VALIDATORS:
        pytest.skip("ml.data has no reinforcement validator yet")
    lines = [json.dumps({"messages": [{"role": "user", "content": f"Calculate {i} + {i}."}], "answer": str(2 * i)})
             for i in range(12)]
    f = upload(client, ("\n".join(lines) + "\n").encode(), filename="rft.jsonl")
    rep = client.get(f"/dashboard/api/files/{f['id']}/report", params={"model": "modelmill-tiny"}).json()
    assert rep["method"] == "reinforcement" and rep["ok"], rep["problems"]
    assert rep["tokens"]["count"] == 12
    forced = client.get(f"/dashboard/api/files/{f['id']}/report",
                        params={"model": "modelmill-tiny", "method": "supervised"}).json()
    assert forced["method"] == "supervised" and not forced["ok"]  # no assistant answer to train on


def test_job_detail_has_one_sampled_trajectory_per_eval_step(client, store):
    job_id = add_job(store, "ftjob-agentic", status="running", step=4, total_steps=8)
    messages = [{"role": "user", "content": "What is 123 * 45?"},
                {"role": "assistant", "content": "", "tool_calls": [{"id": "call_1", "type": "function", "function": {
                    "name": "multiply", "arguments": '{"a": 123, "b": 45}'}}]},
                {"role": "tool", "tool_call_id": "call_1", "name": "multiply", "content": "5535"},
                {"role": "assistant", "content": [{"type": "text", "text": "Answer: 5535"}]}]
    for step, reward in ((4, 0.5), (2, 0.0), (4, 1.0)):  # step 4 again after a resume: the newer one wins
        store.events.add(job_id, "info", f"Sampled trajectory at step {step} (reward {reward:g})",
                         data={"step": step, "reward": reward, "trajectory": messages[:2 + step // 2],
                               "environment_state": {"calls": step}})
    store.events.add(job_id, "info", "unrelated", data={"trajectory": "not a list", "step": 9})
    d = client.get(f"/dashboard/api/jobs/{job_id}").json()
    assert [(t["step"], t["reward"]) for t in d["trajectories"]] == [(2, 0.0), (4, 1.0)]
    last = d["trajectories"][-1]
    assert last["environment_state"] == {"calls": 4} and [m["role"] for m in last["messages"]] == [
        "user", "assistant", "tool", "assistant"]
    assert last["messages"][1]["tool_calls"] == [{"id": "call_1", "name": "multiply", "arguments": '{"a": 123, "b": 45}'}]
    assert last["messages"][2] == {"role": "tool", "content": "5535", "tool_call_id": "call_1", "name": "multiply"}
    assert last["messages"][3]["content"] == "Answer: 5535"  # content parts flattened to text
    assert client.get(f"/dashboard/api/jobs/{add_job(store, 'ftjob-plain')}").json()["trajectories"] == []
