"""One claimed fine-tuning job, run to its outcome: validate its files -> prepare the base model ->
resolve hyperparameters -> train -> record the outcome.

The worker loop (service/worker/loop.py) claims the job under a lease and hands this FineTuneTask a
TaskContext (service/core/tasks.py: store, settings, lease, stop event), never the worker. Training
runs on the worker's own thread while a heartbeat thread keeps the lease alive, so a long training step
never lets it expire. The method (supervised, dpo, reinforcement) picks the ml functions through
service/jobs/methods.py. If a worker dies, the next one reclaims the job after the lease expires and
training resumes from the newest checkpoint in the job's output directory.
"""

from __future__ import annotations

import base64
import csv
import io
import logging
from pathlib import Path

from modelmill import errors
from modelmill.service.jobs import eval_reports as job_evals, methods
from modelmill.service.jobs.reporter import StoreReporter
from modelmill.service.store import JobRecord, Lease
from modelmill.service.core.tasks import TaskContext

log = logging.getLogger(__name__)

# Problems quoted in a failed job's error message (all of them become error events, up to EVENT_PROBLEMS).
MESSAGE_PROBLEMS = 5
EVENT_PROBLEMS = 20
# step_metrics.csv always has OpenAI's columns, in OpenAI's order.
RESULT_COLUMNS = ("step", "train_loss", "train_mean_token_accuracy", "valid_loss", "valid_mean_token_accuracy",
                  "full_valid_loss", "full_valid_mean_token_accuracy")


class JobFailed(Exception):
    """Ends a job as failed with OpenAI's error object {code, message, param}."""

    def __init__(self, code: str, message: str, param: str | None = None, details: list[str] | None = None):
        super().__init__(message)
        self.error = {"code": code, "message": message, "param": param}
        self.details = details or []  # one line per problem, each written as an error event


class FineTuneTask:
    """One claimed fine-tuning job, run to its outcome. Every write goes through ctx.queue (the
    JobQueue), fenced by ctx.lease; the StoreReporter turns training progress into those writes."""

    def __init__(self, ctx: TaskContext):
        self.ctx = ctx
        self.store, self.settings, self.queue, self.clock = ctx.store, ctx.settings, ctx.queue, ctx.queue.clock
        job = self.store.jobs.get(ctx.lease.id)
        self.reporter = StoreReporter(ctx, job.ft_name, job)  # job: its integrations (service/jobs/trackers.py)

    def run(self) -> None:
        """Process the job while a heartbeat holds its lease. A lost lease ends it quietly: whoever
        holds the job now (another worker, or the API that took it over) owns its state."""
        lease = self.ctx.lease
        try:
            with self.ctx.heartbeat(self.reporter.lost):
                self._process(lease, self.reporter)
        except errors.FencedOutError:
            log.warning("worker %s lost job %s to another claim; its result was discarded", lease.owner, lease.id)
        finally:
            self.reporter.close_trackers()  # the W&B / MLflow runs get the outcome (a no-op without integrations)

    # -- one job ------------------------------------------------------------------------

    def _process(self, lease: Lease, reporter: StoreReporter) -> None:
        job = self.store.jobs.get(lease.id)
        if job.requested_action == "cancel":
            return self.queue.finish(lease, "cancelled", message="Job cancelled")
        if job.requested_action == "pause":
            return self.queue.finish(lease, "paused", message="Job paused")
        if job.reclaims > self.settings.max_worker_losses:
            return self._fail(lease, {"code": "worker_lost", "param": None, "message":
                                      f"The job's worker stopped unexpectedly {job.reclaims} times in a row without "
                                      "saving a checkpoint (out of memory?); giving up"})
        if lease.claimed_status == "running":
            self.queue.add_event(lease, "info", f"Resuming job after its previous worker stopped (attempt "
                                                f"{lease.attempt}); training continues from the newest checkpoint")
        try:
            config = self._prepare(lease, job, reporter)
            if reporter.should_stop():
                return self._stopped(lease, reporter)
            self._train(lease, job, config, reporter)
        except JobFailed as e:
            self._fail(lease, e.error, e.details)
        except errors.FencedOutError:
            raise
        except errors.DataValidationError as e:
            self._fail(lease, {"code": e.code or "invalid_training_file", "message": e.message,
                               "param": e.param or "training_file"})
        except Exception as e:  # noqa: BLE001 - any training failure becomes the job's error
            if reporter.lost.is_set():
                raise errors.FencedOutError(str(e)) from e
            log.exception("job %s failed", lease.id)
            code = e.code if isinstance(e, errors.ModelMillError) and e.code else "training_error"
            self._fail(lease, {"code": code, "message": f"{type(e).__name__}: {e}".strip(), "param": None})

    def _prepare(self, lease: Lease, job: JobRecord, reporter: StoreReporter):
        """Validate files, resolve hyperparameters and the base model; return the method's config."""
        from modelmill.ml import models

        method = self._method(job)
        if lease.claimed_status == "validating_files":
            self.queue.add_event(lease, "info", "Validating training file: " + job.training_file)
        images = self._image_policy(job)  # None: a text-only base, which refuses image parts
        train_path, n_examples = self._validate(job.training_file, "training_file", method.data_format, images)
        valid_path = None
        if job.validation_file:
            valid_path, _ = self._validate(job.validation_file, "validation_file", method.data_format, images)

        hp = job.hyperparameters
        if not job.hyperparameters_resolved:
            hp = method.resolve_hyperparameters(job.hyperparameters, n_examples)
            self.queue.update(lease, hyperparameters=hp, hyperparameters_resolved=1)
        self.queue.add_event(lease, "info", f"Preparing base model {job.base_model}")
        base_dir = models.ensure_base(self.settings.home, job.base_model,
                                      progress=lambda msg: reporter.on_event("info", msg))
        extra = ({"grader": job.grader, "grader_context": self._grader_context(job.project_id)}
                 if method.needs_grader else {})
        if method.name == "reinforcement":  # TRL's colocated vLLM when MODELMILL_INFERENCE_BACKEND=vllm on a GPU
            from modelmill.ml import inference

            extra["rollout_backend"] = inference.rollout_backend(self.settings)
            if job.environment:  # agentic RFT (docs/agentic_rft.md)
                extra.update(environment=job.environment, tool_hosts=self.settings.rft_tool_hosts)
        init_adapter, output_dir = self._checked_adapters(job, reporter)
        config = method.build_config(
            hp, base_dir=base_dir, train_path=train_path, valid_path=valid_path,
            output_dir=output_dir, seed=job.seed, init_adapter=init_adapter, **extra,
            image_hosts=self.settings.image_hosts,  # http(s) training images (ml/vision.py)
            **self._training_options(job))
        self._check_lengths(job, config)  # still validating: an example over the limit fails the job here
        if lease.claimed_status == "validating_files":
            self.queue.update(lease, status="queued")
            self.queue.add_event(lease, "info", "Files validated, moving job to queued state")
        return config

    def _training_options(self, job: JobRecord) -> dict:
        from modelmill.service.jobs.requests import training_options

        try:
            return training_options(job.metadata, self.settings)
        except errors.InvalidRequestError as e:  # checked at creation; a job stored before that check
            raise JobFailed(e.code, e.message, "metadata") from None

    def _check_lengths(self, job: JobRecord, config) -> None:
        """Count every example's tokens as training will (the method's plan_run, ml/memory.py's limit);
        JobFailed naming each line over the limit, unless the job's metadata allows truncation."""
        from modelmill.ml import models

        try:
            config.plan_run(models.load_tokenizer(config.base_dir))
        except errors.DataValidationError as e:
            kind, file_id = (("Training", job.training_file) if e.param == "training_file"
                             else ("Validation", job.validation_file))
            raise JobFailed(e.code or f"invalid_{e.param}", f"{kind} file {file_id} is invalid: {e.message}",
                            e.param, [str(p) for p in e.problems]) from None
        except errors.InvalidRequestError as e:  # nf4 without CUDA, max_seq_len over the model's context
            from_metadata = e.param == "max_seq_len" or (job.metadata or {}).get("modelmill.quantization")
            raise JobFailed(e.code or "invalid_request", e.message, "metadata" if from_metadata else None) from None

    def _checked_adapters(self, job: JobRecord, reporter: StoreReporter) -> tuple[Path | None, Path]:
        """(the adapter to continue from, the output dir), once both hold only what the platform wrote:
        the starting ft: adapter and every checkpoint training could resume from (service/models/adapters.py).
        The starting model must also still be the job's project's to use (not deleted, still shared)."""
        from modelmill.service.models import adapters
        from modelmill.service.models import registry as model_registry

        output_dir, init = self.settings.jobs_dir / job.id, None
        try:
            if job.init_adapter:
                model_registry.resolve(self.store, self.settings, job.model, project_id=job.project_id, verify=False)
                init = adapters.verify(self.store, self.settings, Path(job.init_adapter),
                                       what=f"the adapter of model '{job.model}'")
        except errors.NotFoundError:
            raise JobFailed("model_not_available", f"Model {job.model} is no longer available to this job's project"
                            " (deleted, or no longer shared with it)", "model") from None
        except adapters.AdapterRefused as e:
            raise JobFailed(e.code, e.message, "model") from None
        try:
            adapters.check_resumable(self.store, self.settings, output_dir, lambda m: reporter.on_event("warn", m))
        except adapters.AdapterRefused as e:
            raise JobFailed(e.code, e.message) from None
        return init, output_dir

    def _grader_context(self, project_id: str | None = None):
        """How RFT graders run: as in eval runs (evals/runner.grader_context), the service judge with
        the process's one Sampler. project_id: the job's project, whose models (own and shared) a
        model grader may use."""
        from modelmill.service.evals.runner import grader_context

        return grader_context(self.settings, self.store, project_id)

    @staticmethod
    def _method(job: JobRecord) -> methods.Method:
        try:
            return methods.get(job.method_type)
        except errors.InvalidRequestError:
            raise JobFailed("unsupported_method", f"Method '{job.method_type}' is not supported yet",
                            "method") from None

    def _image_policy(self, job: JobRecord):
        """Where a vision base's training images may come from (ml/vision.py); None for a text-only base."""
        from modelmill.ml import vision

        if not vision.is_vision_base(self.settings.home, job.base_model):
            return None
        refused = "reinforcement fine-tuning does not take images yet (SFT and DPO do)" \
            if job.method_type == "reinforcement" else ""
        return vision.ImagePolicy(hosts=self.settings.image_hosts, refused=refused)

    def _validate(self, file_id: str, param: str, data_format: str, images=None) -> tuple[Path, int]:
        """The file's blob path and its number of examples; JobFailed if it is missing or invalid."""
        from modelmill.ml import data

        kind = "Training" if param == "training_file" else "Validation"
        path = self.store.files.blob_path(file_id)
        if not path.exists():
            raise JobFailed("file_not_found", f"{kind} file {file_id} no longer exists", param)
        # keep_examples=False: only the count is needed here, so a 512 MB upload is not held in memory
        report = data.validate_file(path, data_format, min_examples=10 if param == "training_file" else 1,
                                    keep_examples=False, images=images)
        if not report.ok:
            shown = "; ".join(str(p) for p in report.problems[:MESSAGE_PROBLEMS])
            more = len(report.problems) - MESSAGE_PROBLEMS
            message = f"{kind} file {file_id} is invalid: {shown}" + (f"; and {more} more" if more > 0 else "")
            raise JobFailed(f"invalid_{param}", message, param, [str(p) for p in report.problems])
        return path, report.n_examples

    def _train(self, lease: Lease, job: JobRecord, config, reporter: StoreReporter) -> None:
        fields = {"status": "running"}
        if job.started_at is None:
            fields["started_at"] = self.clock()
        self.queue.update(lease, **fields)
        self.queue.add_event(lease, "info", "Fine-tuning job started")
        reporter.start_trackers(self.store.jobs.get(job.id))  # with the hyperparameters resolved by _prepare
        if job.started_at is None:  # first attempt: the base eval, if the job wants it first (eval_reports.py)
            job_evals.before_training(self.ctx, job, reporter)
        result = self._run_method(lease, job, config, reporter)
        self.queue.forget_pruned_checkpoints(lease)
        if result.status == "succeeded":
            from modelmill.service.models import adapters

            adapters.record(self.store, job.id, Path(result.adapter_dir))  # what may be loaded as this model
            job_evals.after_training(self.ctx, job, reporter)  # before/after report, if asked for
            result_file = self._results_file(job)
            self.queue.add_event(lease, "info", f"New fine-tuned model created: {job.ft_name}")
            self.queue.finish(lease, "succeeded", fine_tuned_model=job.ft_name, adapter_dir=str(result.adapter_dir),
                              trained_tokens=int(result.trained_tokens), result_files=[result_file],
                              message="The job has successfully completed")
        else:
            self._stopped(lease, reporter, trained_tokens=int(result.trained_tokens))

    def _run_method(self, lease: Lease, job: JobRecord, config, reporter: StoreReporter):
        """Train in this process, or over several ranks (ml/distributed.py: DDP, or FSDP when the
        model does not fit one device) when MODELMILL_TRAIN_PROCESSES or the GPU count asks for it.
        This worker keeps the lease either way: the ranks only run the work."""
        from modelmill.ml import distributed

        method = self._method(job)
        plan = distributed.plan_processes(self.settings.train_processes, config.batch_size,
                                          supports_ranks=not method.needs_grader)
        if plan.processes > 1 or self.settings.train_processes != "auto":
            self.queue.add_event(lease, "info", f"Training processes: {plan.why}",
                                 data={"processes": plan.processes, "fsdp": plan.fsdp})
        return distributed.train(method.run, config, reporter, plan)

    def _stopped(self, lease: Lease, reporter: StoreReporter, **fields) -> None:
        """Record how a run that stopped early ended: the reporter knows why it said stop."""
        reason = reporter.stop_reason
        if reporter.lost.is_set():
            raise errors.FencedOutError(f"Lost the lease on job {lease.id}")
        if reason == "pause":
            self.queue.finish(lease, "paused", message="Job paused; resume it to continue from this checkpoint")
        elif reason == "shutdown":
            self.queue.finish(lease, "queued", message="Worker stopped; job re-queued to resume from its checkpoint")
        else:
            self.queue.finish(lease, "cancelled", message="Job cancelled", **fields)

    def _fail(self, lease: Lease, error: dict, details: list[str] = ()) -> None:
        """Record the job's failure. The store makes hostile text storable (store/text.py); should
        a write still refuse the text, the job fails with a plain message rather than leaving the
        worker to crash on it at every claim (which ended such jobs as worker_lost)."""
        try:
            for line in details[:EVENT_PROBLEMS]:
                self.queue.add_event(lease, "error", line)
            self.queue.add_event(lease, "error", error["message"])
            self.queue.finish(lease, "failed", error=error)
        except errors.FencedOutError:
            raise
        except Exception:  # noqa: BLE001 - whatever the text did, the job must still end failed
            log.exception("job %s: recording its failure failed; recording a plain message instead", lease.id)
            plain = {"code": str(error.get("code") or "training_error"), "param": None,
                     "message": "The job failed, but its error message could not be stored: "
                                + ascii(error.get("message"))[:2000]}
            self.queue.finish(lease, "failed", message=plain["message"], level="error", error=plain)

    def _results_file(self, job: JobRecord) -> str:
        """Write the step metrics as a CSV file (purpose fine-tune-results), as OpenAI does:
        OpenAI's supervised columns first, then any other metric the method reports (DPO's reward
        margin/accuracy, chosen/rejected log-probs), in the order they first appear. Like OpenAI's,
        the file's content is the CSV base64-encoded (the cookbook base64-decodes it)."""
        rows = [e.data or {} for e in self.store.events.all_for(job.id, type="metrics")]
        cols = list(RESULT_COLUMNS)
        for row in rows:
            cols += [k for k in row if k not in cols and k != "total_steps"]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        return self.store.files.add_bytes(base64.b64encode(buf.getvalue().encode()), "step_metrics.csv",
                                          "fine-tune-results", job.project_id).id
