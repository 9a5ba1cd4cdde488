"""service/jobs/trackers.py: W&B (offline) and MLflow (file store) runs read back, and a failing or slow
tracker that never fails or holds up the job. The full path through a real job is
tests/e2e/test_operations.py."""

from __future__ import annotations

import sys
import threading
import time

from modelmill.settings import Settings
from modelmill.service.jobs import trackers
from tests.service.tracker_runs import read_wandb_run, wandb_run_files

INFO = trackers.RunInfo(job_id="ftjob-abc123", model="modelmill-tiny", base_model="modelmill-tiny",
                        method="supervised", hyperparameters={"n_epochs": 2, "batch_size": 4,
                                                              "learning_rate_multiplier": 1.5},
                        training_file="file-t", validation_file=None, seed=7, suffix=None,
                        fine_tuned_model="ft:modelmill-tiny:modelmill::abc123")
DONE = trackers.Outcome("succeeded", INFO.fine_tuned_model, 1234, None)


def run_through(tracked: trackers.JobTrackers, steps=((1, {"train_loss": 2.0}), (2, {"train_loss": 1.5,
                                                                                      "valid_loss": 1.7}))):
    tracked.start(INFO)
    for step, values in steps:
        tracked.on_step(step, values)
    tracked.close(DONE)


def test_wandb_offline_run_has_hyperparameters_each_step_and_the_model(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    warnings = []
    spec = {"type": "wandb", "wandb": {"project": "mm-tests", "tags": ["mine"]}}
    run_through(trackers.JobTrackers([spec], Settings(home=tmp_path), warnings.append))
    assert warnings == []
    [run_file] = wandb_run_files(tmp_path / "wb", INFO.job_id)
    run = read_wandb_run(run_file)
    assert (run.run_id, run.project, run.name) == (INFO.job_id, "mm-tests", INFO.job_id)
    assert {"mine", "modelmill/finetune", f"modelmill/{INFO.job_id}"} <= set(run.tags)
    assert run.config["hyperparameters"] == INFO.hyperparameters and run.config["method"] == "supervised"
    assert run.history[1] == {"train_loss": 2.0}
    assert run.history[2] == {"train_loss": 1.5, "valid_loss": 1.7}
    assert run.summary["fine_tuned_model"] == INFO.fine_tuned_model and run.summary["trained_tokens"] == 1234
    assert run.config["fine_tuned_model"] == INFO.fine_tuned_model and run.exit_code == 0


def test_mlflow_file_store_run_and_a_resume_continues_it(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3.x keeps the file store behind this switch
    uri = (tmp_path / "mlruns").as_uri()
    settings = Settings(home=tmp_path, mlflow_tracking_uri=uri)
    spec = {"type": "mlflow", "mlflow": {"experiment_name": "mm", "tags": {"team": "a"}}}
    warnings = []
    tracked = trackers.JobTrackers([spec], settings, warnings.append)
    tracked.start(INFO)
    tracked.on_step(1, {"train_loss": 2.0})
    tracked.close(trackers.Outcome("paused", None, None, None))
    resumed = trackers.JobTrackers([spec], settings, warnings.append)  # the job's next attempt
    resumed.start(INFO)
    resumed.on_step(2, {"train_loss": 1.5})
    resumed.close(DONE)
    assert warnings == []

    client = MlflowClient(tracking_uri=uri)
    [run] = client.search_runs([client.get_experiment_by_name("mm").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == INFO.job_id
    assert run.data.params["hyperparameters.n_epochs"] == "2" and run.data.params["base_model"] == "modelmill-tiny"
    assert run.data.tags["team"] == "a" and run.data.tags["fine_tuned_model"] == INFO.fine_tuned_model
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train_loss")] == [(1, 2.0), (2, 1.5)]
    assert run.data.metrics["trained_tokens"] == 1234


class Broken:
    def __init__(self, spec, settings):
        pass

    def start(self, info):
        raise RuntimeError("entity 'nobody' does not exist")


class Slow:
    calls: list = []

    def __init__(self, spec, settings):
        pass

    def start(self, info):
        pass

    def log_metrics(self, step, metrics):
        time.sleep(0.3)
        Slow.calls.append(step)

    def finish(self, outcome):
        Slow.calls.append(outcome.status)


def test_a_failing_tracker_is_one_warning_and_the_others_go_on(tmp_path, monkeypatch):
    monkeypatch.setitem(trackers.TRACKERS, "wandb", Broken)
    monkeypatch.setitem(trackers.TRACKERS, "mlflow", Slow)
    Slow.calls = []
    warnings = []
    tracked = trackers.JobTrackers([{"type": "wandb", "wandb": {"project": "p"}}, {"type": "mlflow", "mlflow": {}}],
                                   Settings(home=tmp_path), warnings.append)
    tracked.start(INFO)
    started = time.monotonic()
    for step in range(1, 4):
        tracked.on_step(step, {"train_loss": 1.0})
    assert time.monotonic() - started < 0.2  # a slow tracker never holds up the training thread
    tracked.close(DONE)
    assert Slow.calls == [1, 2, 3, "succeeded"]
    assert len(warnings) == 1 and "W&B integration failed" in warnings[0] and "nobody" in warnings[0]


def test_a_tracker_that_is_not_installed_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    warnings = []
    run_through(trackers.JobTrackers([{"type": "wandb", "wandb": {"project": "p"}}], Settings(home=tmp_path),
                                     warnings.append))
    assert len(warnings) == 1 and "ModuleNotFoundError" in warnings[0] and "modelmill[trackers]" in warnings[0]


def test_an_unknown_stored_type_is_a_warning_not_a_crash(tmp_path):
    warnings = []
    tracked = trackers.JobTrackers([{"type": "comet", "comet": {}}], Settings(home=tmp_path), warnings.append)
    run_through(tracked)
    assert warnings == ["integrations[0]: unknown integration type 'comet'; it was ignored"]
    assert not tracked.running


def test_close_gives_up_on_a_hung_tracker(tmp_path, monkeypatch):
    release = threading.Event()

    class Hung(Slow):
        def finish(self, outcome):
            release.wait(10)

    monkeypatch.setitem(trackers.TRACKERS, "wandb", Hung)
    monkeypatch.setattr(trackers, "CLOSE_TIMEOUT_S", 0.2)
    warnings = []
    run_through(trackers.JobTrackers([{"type": "wandb", "wandb": {"project": "p"}}], Settings(home=tmp_path),
                                     warnings.append), steps=())
    release.set()
    assert len(warnings) == 1 and "still sending" in warnings[0]
