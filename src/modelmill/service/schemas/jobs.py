"""Wire models for /v1/fine_tuning/jobs: the create request, the job, its events and checkpoints."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import Field, field_validator

from modelmill.service.schemas.common import OpenAIRequest, WireModel, finite_numbers, listing, unix
from modelmill.service.schemas.graders import TopLevelGrader
from modelmill.service.store.records import TERMINAL_STATUSES, CheckpointRecord, EventRecord, JobRecord, Page

Auto = Literal["auto"]

# Upper bounds of the RFT evaluation knobs (OpenAI states none): completions sampled per validation
# prompt per evaluation, and optimizer steps between evaluations.
MAX_EVAL_SAMPLES = 64
MAX_EVAL_INTERVAL = 100_000


class Hyperparameters(OpenAIRequest):
    """OpenAI's FineTuneSupervisedHyperparameters: each value is "auto" or a number in range."""

    n_epochs: Union[Auto, Annotated[int, Field(ge=1, le=50, strict=True)]] = "auto"
    batch_size: Union[Auto, Annotated[int, Field(ge=1, le=256, strict=True)]] = "auto"
    learning_rate_multiplier: Union[Auto, Annotated[float, Field(gt=0)]] = "auto"


class SupervisedMethod(OpenAIRequest):
    hyperparameters: Hyperparameters | None = None


class DPOHyperparameters(Hyperparameters):
    """OpenAI's FineTuneDPOHyperparameters: the supervised ones plus beta in (0, 2]."""

    beta: Union[Auto, Annotated[float, Field(gt=0, le=2)]] = "auto"


class DPOMethod(OpenAIRequest):
    hyperparameters: DPOHyperparameters | None = None


class ReinforcementHyperparameters(Hyperparameters):
    """OpenAI's FineTuneReinforcementHyperparameters: the supervised ones plus the RFT knobs
    (ml/rft/config.py resolve_rft_hyperparameters says what each one does here)."""

    reasoning_effort: Literal["default", "low", "medium", "high"] = "default"
    compute_multiplier: Union[Auto, Annotated[float, Field(gt=1e-5, le=10)]] = "auto"
    # Bounded so one job can not hold the worker for days (docs/limits.md): each evaluation samples
    # eval_samples completions for each of up to 50 validation prompts.
    eval_interval: Union[Auto, Annotated[int, Field(ge=1, le=MAX_EVAL_INTERVAL, strict=True)]] = "auto"
    eval_samples: Union[Auto, Annotated[int, Field(ge=1, le=MAX_EVAL_SAMPLES, strict=True)]] = "auto"


class ReinforcementMethod(OpenAIRequest):
    # Checked by ml.graders.validate_grader in fine_tuning.create_job, so its errors name the exact field;
    # described in /openapi.json as the grader union (schemas/graders.py).
    grader: TopLevelGrader
    hyperparameters: ReinforcementHyperparameters | None = None
    # ModelMill's extension (agentic RFT, docs/agentic_rft.md): tools the rollouts call. Checked by
    # ml.environments.validate_environment in fine_tuning.create_job, so its errors name the exact field.
    environment: dict[str, Any] | None = None


class Method(OpenAIRequest):
    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: SupervisedMethod | None = None
    dpo: DPOMethod | None = None
    reinforcement: ReinforcementMethod | None = None


class WandbSettings(OpenAIRequest):
    """OpenAI's FineTuningIntegration.wandb: the W&B run the job's metrics go to (service/jobs/trackers.py)."""

    project: str = Field(min_length=1, max_length=128)
    name: str | None = Field(default=None, max_length=128)  # the run's display name; None: the job id
    entity: str | None = Field(default=None, max_length=128)  # None: the W&B API key's default entity
    tags: list[Annotated[str, Field(max_length=64)]] | None = Field(default=None, max_length=50)


class MlflowSettings(OpenAIRequest):
    """ModelMill's MLflow integration (not OpenAI's): the run goes to the server's
    MODELMILL_MLFLOW_TRACKING_URI, in this experiment (created when missing)."""

    experiment_name: str = Field(default="modelmill", min_length=1, max_length=256)
    run_name: str | None = Field(default=None, max_length=256)  # None: the job id
    tags: dict[Annotated[str, Field(max_length=250)], Annotated[str, Field(max_length=5000)]] | None = \
        Field(default=None, max_length=50)


class Integration(OpenAIRequest):
    """One of a job's trackers, shaped like `Method`: `type` names the section that configures it
    (OpenAI's FineTuningIntegration for "wandb"; "mlflow" is ModelMill's). fine_tuning._integrations
    checks that the named section is there and no other is."""

    type: Literal["wandb", "mlflow"]
    wandb: WandbSettings | None = None
    mlflow: MlflowSettings | None = None


class CreateJobRequest(OpenAIRequest):
    model: str = Field(min_length=1)
    training_file: str = Field(min_length=1)
    validation_file: str | None = None
    suffix: str | None = Field(default=None, min_length=1, max_length=64)
    seed: int | None = Field(default=None, ge=0, le=2147483647)
    metadata: dict[str, str] | None = None
    integrations: list[Integration] | None = Field(default=None, max_length=8)
    hyperparameters: Hyperparameters | None = None  # legacy; `method` wins when both are given
    method: Method | None = None

    @field_validator("metadata")
    @classmethod
    def _metadata_limits(cls, v):
        if v is None:
            return v
        if len(v) > 16:
            raise ValueError("metadata may have at most 16 keys")
        for key, value in v.items():
            if len(key) > 64 or len(value) > 512:
                raise ValueError("metadata keys are at most 64 characters and values at most 512")
        return v


# -- responses -------------------------------------------------------------------------


class JobError(WireModel):
    code: str
    message: str
    param: str | None


class JobObject(WireModel):
    """OpenAI's FineTuningJob. `status` may also be "paused" (ModelMill's documented extension)."""

    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    error: JobError | None
    fine_tuned_model: str | None
    finished_at: int | None
    hyperparameters: dict[str, Any]
    model: str
    organization_id: str
    result_files: list[str]
    status: str
    trained_tokens: int | None
    training_file: str
    validation_file: str | None
    integrations: list[dict[str, Any]] | None
    seed: int
    estimated_finish: int | None
    method: dict[str, Any]
    metadata: dict[str, str] | None
    # The job's automatic before/after eval (service/jobs/eval_reports.py), which OpenAI's cookbook reads as
    # job.eval_id. Not in OpenAI's FineTuningJob schema, which allows extra fields; omitted when none.
    eval_id: str | None = None
    omit_if_none: ClassVar[frozenset[str]] = frozenset({"eval_id"})

    @classmethod
    def of(cls, job: JobRecord, organization_id: str, eval_id: str | None = None) -> "JobObject":
        hp = dict(job.hyperparameters)
        status = wire_status(job)
        # The top-level field is OpenAI's legacy (supervised) shape: it carries the shared keys only.
        legacy = {k: hp[k] for k in ("n_epochs", "batch_size", "learning_rate_multiplier") if k in hp}
        return cls(
            id=job.id, created_at=unix(job.created_at),
            error=JobError(**job.error) if job.error else None,
            fine_tuned_model=job.fine_tuned_model, finished_at=unix(job.finished_at), hyperparameters=legacy,
            model=job.model, organization_id=organization_id, result_files=list(job.result_files),
            status=status, trained_tokens=job.trained_tokens, training_file=job.training_file,
            validation_file=job.validation_file, integrations=job.integrations, seed=job.seed,
            estimated_finish=unix(job.estimated_finish) if status == "running" else None, eval_id=eval_id,
            method={"type": job.method_type, job.method_type: {
                "hyperparameters": hp, **({"grader": job.grader} if job.grader else {}),
                **({"environment": job.environment} if job.environment else {})}},
            metadata=job.metadata)


# What a pending cancel / pause request shows as (store/jobs.py): the state the request put the job
# in, as OpenAI answers. The worker reaching its next step boundary to honour it stays internal.
REQUESTED_STATUS = {"cancel": "cancelled", "pause": "paused"}


def wire_status(job: JobRecord) -> str:
    if job.status in TERMINAL_STATUSES or job.status == "paused":
        return job.status
    return REQUESTED_STATUS.get(job.requested_action or "", job.status)


class JobList(WireModel):
    object: Literal["list"] = "list"
    data: list[JobObject]
    has_more: bool


class EventObject(WireModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: str
    message: str
    type: str
    data: dict[str, Any]

    @classmethod
    def of(cls, e: EventRecord) -> "EventObject":
        return cls(id=e.id, created_at=unix(e.created_at), level=e.level, message=e.message, type=e.type,
                   data=e.data or {})


class EventList(WireModel):
    object: Literal["list"] = "list"
    data: list[EventObject]
    has_more: bool

    @classmethod
    def of(cls, page: Page[EventRecord]) -> "EventList":
        return cls(data=[EventObject.of(e) for e in page.items], has_more=page.has_more)


class CheckpointObject(WireModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    metrics: dict[str, float]
    step_number: int

    @classmethod
    def of(cls, c: CheckpointRecord) -> "CheckpointObject":
        metrics = {"step": c.step_number, **finite_numbers(c.metrics)}
        return cls(id=c.id, created_at=unix(c.created_at), fine_tuned_model_checkpoint=c.fine_tuned_model_checkpoint,
                   fine_tuning_job_id=c.job_id, metrics=metrics, step_number=c.step_number)


class CheckpointList(WireModel):
    object: Literal["list"] = "list"
    data: list[CheckpointObject]
    first_id: str | None
    last_id: str | None
    has_more: bool

    @classmethod
    def of(cls, page: Page[CheckpointRecord]) -> "CheckpointList":
        data = [CheckpointObject.of(c) for c in page.items]
        return cls(**listing(data, page.has_more, empty=None))
