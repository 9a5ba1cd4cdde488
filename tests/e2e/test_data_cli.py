"""`modelmill data label / from-stored` and `modelmill import openai` against real ModelMill servers:
the session server (modelmill-tiny) is the teacher and the import target, a second server with
no worker is the import source."""

from __future__ import annotations

import json
import re

import httpx
import pytest

from modelmill.cli import main
from modelmill.datagen import teacher as teacher_mod
from modelmill.ml.data import validate_file

from tools.datasets import short_dataset
from tools.servers import Server

WEATHER = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city.",
                                             "parameters": {"type": "object", "properties": {
                                                 "city": {"type": "string"}}, "required": ["city"]}}}]


def prompts_file(path, n: int):
    lines = [{"messages": [{"role": "user", "content": f"say {i}"}], **({"tools": WEATHER} if i % 2 else {}),
              "answer": f"ok {i}"} for i in range(n)]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def label_args(server, prompts, out, *extra):
    return ["data", "label", str(prompts), "--teacher", "modelmill-tiny", "--teacher-base-url", server.base_url,
            "--teacher-api-key", "test-key", "--out", str(out), "--max-tokens", "3", "--concurrency", "1", *extra]


class Counting:
    """make_client with an httpx event hook counting teacher requests (and, from `interrupt_at`,
    raising KeyboardInterrupt as a Ctrl-C would)."""

    def __init__(self, interrupt_at: int | None = None):
        self.sent, self.interrupt_at = 0, interrupt_at

    def hook(self, request):
        if request.url.path.endswith("/chat/completions"):
            self.sent += 1
            if self.interrupt_at is not None and self.sent >= self.interrupt_at:
                raise KeyboardInterrupt

    def make_client(self, base_url, api_key, timeout=60.0):
        import openai

        return openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=timeout,
                             http_client=httpx.Client(event_hooks={"request": [self.hook]}))


def test_label_interrupt_and_resume_never_resends(server, tmp_path, monkeypatch, capsys):
    prompts, out = prompts_file(tmp_path / "p.jsonl", 5), tmp_path / "labelled.jsonl"
    first = Counting(interrupt_at=3)
    monkeypatch.setattr(teacher_mod, "make_client", first.make_client)
    assert main(label_args(server, prompts, out)) == 130  # Ctrl-C on the third request
    assert not out.exists() and len((tmp_path / "labelled.jsonl.cache.jsonl").read_text().splitlines()) == 2
    second = Counting()
    monkeypatch.setattr(teacher_mod, "make_client", second.make_client)
    assert main(label_args(server, prompts, out)) == 0
    assert second.sent == 3  # only the three prompts the first run never got an answer for
    err = capsys.readouterr().err
    assert "3 requests (2 answered from cache)" in err and "labelled 5 of 5" in err
    report = validate_file(out, min_examples=1)
    assert report.ok and report.n_examples == 5
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [ln["messages"][0]["content"] for ln in lines] == [f"say {i}" for i in range(5)]
    assert all(ln["messages"][-1]["role"] == "assistant" for ln in lines)
    assert lines[1]["tools"] == WEATHER and "answer" not in lines[1]
    third = Counting()
    monkeypatch.setattr(teacher_mod, "make_client", third.make_client)
    assert main(label_args(server, prompts, out)) == 0 and third.sent == 0


def test_synth_with_a_teacher_is_cached(server, tmp_path, monkeypatch, capsys):
    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps(WEATHER))
    out = tmp_path / "calls.jsonl"
    args = ["data", "synth", str(tools), "--out", str(out), "--per-function", "2", "--teacher", "modelmill-tiny",
            "--teacher-base-url", server.base_url, "--teacher-api-key", "test-key", "--max-tokens", "4"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "2 requests (0 answered from cache)" in err
    assert re.search(r"2 lines for 1 functions \(2 by (teacher|template \(teacher answered empty\))", err), err
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == 2 and validate_file(out, min_examples=1).ok
    assert {json.loads(ln["messages"][1]["tool_calls"][0]["function"]["arguments"])["city"] for ln in lines}
    again = Counting()
    monkeypatch.setattr(teacher_mod, "make_client", again.make_client)
    assert main(args) == 0 and again.sent == 0
    assert [json.loads(x) for x in out.read_text().splitlines()] == lines  # the same lines, from the cache


def test_label_best_of_n_with_a_grader(server, tmp_path, capsys):
    prompts, out = prompts_file(tmp_path / "p.jsonl", 2), tmp_path / "out.jsonl"
    grader = tmp_path / "g.json"
    # Any answer passes a `ne` check against a string no answer is; every sample is graded.
    grader.write_text(json.dumps({"type": "string_check", "name": "nonempty", "operation": "ne",
                                  "input": "{{sample.output_text}}", "reference": "{{item.answer}}"}))
    assert main(label_args(server, prompts, out, "--grader", str(grader), "--n", "2")) == 0
    assert len(out.read_text().splitlines()) == 2
    # A grader that never passes keeps nothing: said so, exit 1, no file.
    grader.write_text(json.dumps({"type": "string_check", "name": "never", "operation": "eq",
                                  "input": "{{sample.output_text}}", "reference": "no answer is this"}))
    out2 = tmp_path / "none.jsonl"
    assert main(label_args(server, prompts, out2, "--grader", str(grader))) == 1
    err = capsys.readouterr().err
    assert "rejected 2 (2 not passed by the grader; prompt lines 1, 2)" in err and not out2.exists()


def test_label_grader_erroring_on_every_sample(server, tmp_path, capsys):
    prompts, out = prompts_file(tmp_path / "p.jsonl", 2), tmp_path / "out.jsonl"
    grader = tmp_path / "g.json"
    grader.write_text(json.dumps({"type": "string_check", "name": "broken", "operation": "eq",
                                  "input": "{{sample.output_text}}", "reference": "{{item.no_such_field}}"}))
    assert main(label_args(server, prompts, out, "--grader", str(grader))) == 2
    err = capsys.readouterr().err
    assert "the grader errored on every answer (2 of them)" in err and "invalid_variable_error" in err
    assert not out.exists() and not list(tmp_path.glob("out.jsonl.partial*"))
    grader.write_text(json.dumps({"type": "string_check", "name": "bad"}))
    assert main(label_args(server, prompts, out, "--grader", str(grader))) == 2
    assert "grader" in capsys.readouterr().err and not out.exists()


def test_from_stored(server, tmp_path, capsys):
    for i in range(2):
        server.client.chat.completions.create(model="modelmill-tiny", max_tokens=3, store=True,
                                              metadata={"team": "h8-data"},
                                              messages=[{"role": "user", "content": f"stored {i}"}])
    out = tmp_path / "stored.jsonl"
    assert main(["data", "from-stored", "--base-url", server.base_url, "--api-key", "test-key",
                 "--metadata", "team=h8-data", "--out", str(out)]) == 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert sorted(ln["messages"][0]["content"] for ln in lines) == ["stored 0", "stored 1"]
    assert all(ln["messages"][-1]["role"] == "assistant" for ln in lines)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("source-home"), worker=False)
    yield s
    s.stop()


def test_import_openai_from_a_second_server(source, server, tmp_path, capsys):
    src = source.client
    train = src.files.create(file=("import-train.jsonl", short_dataset(12, seed=5)), purpose="fine-tune")
    valid = src.files.create(file=("import-valid.jsonl", short_dataset(10, seed=6)), purpose="fine-tune")
    hp = {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 0.5}
    job = src.fine_tuning.jobs.create(training_file=train.id, validation_file=valid.id, model="modelmill-tiny",
                                      suffix="moved", seed=11, metadata={"team": "search"},
                                      method={"type": "supervised", "supervised": {"hyperparameters": hp}})
    gone = src.files.create(file=("gone.jsonl", short_dataset(10, seed=7)), purpose="fine-tune")
    orphan = src.fine_tuning.jobs.create(training_file=gone.id, model="modelmill-tiny")
    src.files.delete(gone.id)
    unmapped = src.fine_tuning.jobs.create(training_file=train.id, model="SmolLM2-135M-Instruct")
    rft_lines = "".join(json.dumps({"messages": [{"role": "user", "content": f"{i} + 1 = ?"}], "answer": str(i + 1)})
                        + "\n" for i in range(10)).encode()
    rft_file = src.files.create(file=("import-rft.jsonl", rft_lines), purpose="fine-tune")
    grader = {"type": "string_check", "name": "exact", "operation": "eq", "input": "{{sample.output_text}}",
              "reference": "{{item.answer}}"}
    rft = src.fine_tuning.jobs.create(training_file=rft_file.id, model="modelmill-tiny", method={
        "type": "reinforcement", "reinforcement": {"grader": grader, "hyperparameters": {"n_epochs": 1}}})
    args = ["import", "openai", "--source-base-url", source.base_url, "--source-api-key", "k",
            "--base-url", server.base_url, "--api-key", "test-key", "--model-map", "modelmill-tiny=modelmill-tiny"]
    before = {j.id for j in server.client.fine_tuning.jobs.list(limit=100)}

    assert main([*args, "--dry-run"]) == 0
    report = capsys.readouterr().out
    assert "would create 2 job(s)" in report and f"{job.id} -> (dry run)" in report
    assert {j.id for j in server.client.fine_tuning.jobs.list(limit=100)} == before
    assert f"file {gone.id} (training_file of job {orphan.id}): the source refused the download (404" in report
    assert f"job {unmapped.id}: no --model-map entry for its base model SmolLM2-135M-Instruct" in report

    assert main(args) == 0
    report = capsys.readouterr().out
    new = {j.metadata["imported_from"]: j for j in server.client.fine_tuning.jobs.list(limit=100)
           if j.id not in before}
    assert set(new) == {job.id, rft.id}, report
    made = server.client.fine_tuning.jobs.retrieve(new[job.id].id)
    made_rft = server.client.fine_tuning.jobs.retrieve(new[rft.id].id)
    assert made_rft.method.type == "reinforcement" and made_rft.method.reinforcement.grader.to_dict() == grader
    assert server.client.files.content(made_rft.training_file).read() == rft_lines
    assert made.status == "paused" or "not paused" in report
    assert made.model == "modelmill-tiny" and made.seed == 11 and made.metadata == {"team": "search",
                                                                                   "imported_from": job.id}
    assert made.method.type == "supervised"
    assert {k: getattr(made.method.supervised.hyperparameters, k) for k in hp} == hp
    assert server.client.files.content(made.training_file).read() == short_dataset(12, seed=5)
    assert server.client.files.content(made.validation_file).read() == short_dataset(10, seed=6)

    assert main(args) == 0  # a rerun carries nothing twice
    assert f"job {job.id}: already imported" in capsys.readouterr().out
    assert len([j for j in server.client.fine_tuning.jobs.list(limit=100) if j.id not in before]) == 2
