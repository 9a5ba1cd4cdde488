"""Creating a fine-tuning job: check the request against the store, then queue it.

Only what can be checked at once is checked here (the model exists, the files exist and
are fine-tune files, the method is one in service/jobs/methods.py, its hyperparameters are in
range). Reading every line of the files is the worker's first step, so a large upload
never holds up the request.

The job belongs to the caller's project: its files must be that project's, and its model a
base model, one of the project's fine-tuned models, or one shared with it. Anything else is
refused exactly as a missing file or model is.
"""

from __future__ import annotations

import logging
import math
import secrets

from modelmill import errors
from modelmill.settings import Settings
from modelmill.service.graders import requests as graders
from modelmill.service.jobs import methods
from modelmill.service.models import registry as model_registry
from modelmill.service.store.ids import new_id
from modelmill.service.schemas.jobs import CreateJobRequest
from modelmill.service.store import JobRecord, NewJob, Store

log = logging.getLogger(__name__)


def create_job(store: Store, settings: Settings, req: CreateJobRequest, *, project_id: str) -> JobRecord:
    method_type, hyperparameters, hp_where = _method(req)
    grader = _grader(req, graders.judge_checker(settings, store, project_id)) \
        if methods.get(method_type).needs_grader else None
    environment = _environment(req, settings) if method_type == "reinforcement" else None
    base_model, init_adapter = _training_model(store, settings, req.model, project_id)
    _check_file(store, req.training_file, "training_file", project_id)
    if req.validation_file:
        _check_file(store, req.validation_file, "validation_file", project_id)
    if req.suffix is not None and not set(req.suffix) <= model_registry.SUFFIX_CHARS:
        raise errors.InvalidRequestError("suffix may contain only letters, digits, '-', '_' and '.'",
                                         param="suffix", code="invalid_suffix")
    _check_hyperparameters(method_type, hyperparameters, hp_where)
    _check_training_options(settings, req.metadata, base_model)
    _check_selection_options(req.metadata, method_type, req.validation_file)
    for key, method in ((META_DPO_SFT_WEIGHT, "dpo"), (META_RFT_TEMPERATURE, "reinforcement")):
        if key in (req.metadata or {}) and method_type != method:
            raise _bad_metadata(f"metadata '{key}' is for {method} jobs only; this job's method is {method_type}")
    job_id = new_id("ftjob-")
    if environment is None:  # an agentic job has no one-turn before/after eval (job_evals.enabled)
        _own_eval(store, job_id, method_type, grader, req, project_id)
    return store.jobs.create(NewJob(
        id=job_id, model=req.model, base_model=base_model, init_adapter=init_adapter,
        training_file=req.training_file, validation_file=req.validation_file, suffix=req.suffix,
        seed=req.seed if req.seed is not None else secrets.randbelow(2**31),
        metadata=req.metadata, integrations=_integrations(req, settings), method_type=method_type,
        hyperparameters=hyperparameters, grader=grader, environment=environment, project_id=project_id,
        ft_name=model_registry.fine_tuned_model_name(base_model, settings.owner, req.suffix, job_id)))


# Seconds a job creation that starts MCP servers may wait for a free slot of the sandbox's executor
# (api/routes/jobs.py) before it is refused with a 429: with the servers' own PROBE_BUDGET_SECONDS
# (ml/mcp_tools.py) this bounds the whole request.
MCP_QUEUE_WAIT_SECONDS = 30.0
ENVIRONMENT_PARAM = "method.reinforcement.environment"


def starts_mcp_servers(req: CreateJobRequest, settings: Settings) -> bool:
    """Whether create_job(req) would start MCP servers (agentic RFT) to list their tools: slow,
    sandboxed work that the route runs on the graders' bounded executor. Checks the environment's
    shape first, starting nothing (a malformed one is its 400 now, before it queues for a slot)."""
    from modelmill.ml import environments  # imports no torch

    spec = environment_of(req)
    if spec is None:
        return False
    env = environments.validate_environment(spec, ENVIRONMENT_PARAM, tool_hosts=settings.rft_tool_hosts,
                                            probe_mcp=False)
    return any(tool["type"] == "mcp" for tool in env["tools"])


def environment_of(req: CreateJobRequest) -> dict | None:
    """The request's method.reinforcement.environment as sent (agentic RFT), or None."""
    section = req.method.reinforcement if req.method and req.method.type == "reinforcement" else None
    return None if section is None else section.environment


def _integrations(req: CreateJobRequest, settings: Settings) -> list[dict] | None:
    """The job's trackers as stored and echoed (service/jobs/trackers.py runs them). The schema has checked
    each one's type and fields; here: one of each type, and MLflow only where the server has a URI."""
    if not req.integrations:
        return None
    seen: set[str] = set()
    for i, integration in enumerate(req.integrations):
        if getattr(integration, integration.type) is None:
            raise errors.InvalidRequestError(f"Missing required parameter: 'integrations[{i}].{integration.type}'.",
                                             param=f"integrations[{i}].{integration.type}",
                                             code="missing_required_parameter")
        other = [k for k in ("wandb", "mlflow") if k != integration.type and getattr(integration, k) is not None]
        if other:
            raise errors.InvalidRequestError(
                f"integrations[{i}] is of type '{integration.type}' but configures '{other[0]}'",
                param=f"integrations[{i}].{other[0]}", code="invalid_value")
        if integration.type in seen:
            raise errors.InvalidRequestError(f"integrations[{i}]: a job may have one {integration.type} integration",
                                             param=f"integrations[{i}].type", code="invalid_value")
        seen.add(integration.type)
        if integration.type == "mlflow" and not settings.mlflow_tracking_uri:
            raise errors.InvalidRequestError(
                "The mlflow integration needs the server's MODELMILL_MLFLOW_TRACKING_URI, which is not set",
                param=f"integrations[{i}].type", code="integration_not_configured")
    return [integration.model_dump(exclude_none=True) for integration in req.integrations]


def _own_eval(store: Store, job_id: str, method_type: str, grader: dict | None, req: CreateJobRequest,
              project_id: str) -> None:
    """Make the job's before/after eval now (service/jobs/eval_reports.py), so the job object shows its
    eval_id from the create response on, as the cookbook expects. Not when the job runs an eval of
    the caller's (metadata eval_id) or has none; a failure only means the worker makes it later."""
    from modelmill.service.jobs import eval_reports as job_evals

    if (not job_evals.enabled_for(req.metadata, req.validation_file) or (req.metadata or {}).get("eval_id")
            or method_type not in job_evals.METHODS):
        return
    try:
        job_evals.create_own_eval(store, job_id, method_type, grader, project_id)
    except errors.ModelMillError as e:
        log.warning("job %s: its before/after eval will be made by the worker: %s", job_id, e.message)


# Job metadata keys ModelMill reads: OpenAI's API has no field for them, and metadata values are strings.
# docs/models.md ("Precision, memory and sequence length") documents them; ml/memory.py has the rule.
META_MAX_SEQ_LEN = "modelmill.max_seq_len"  # a whole number of tokens; default: model context / memory estimate
META_TRUNCATION = "modelmill.truncation"  # "allow": cut over-long examples (warn event); "error" (default): fail
META_QUANTIZATION = "modelmill.quantization"  # "auto" | "none" | "nf4"; default: the server's MODELMILL_QUANTIZATION
# Early stopping and the best checkpoint (docs/api.md, "Early stopping and the best checkpoint"):
META_EARLY_STOPPING = "modelmill.early_stopping"  # "off" (default) | N: stop after N evaluations without improvement
META_FINAL_MODEL = "modelmill.final_model"  # "last" (default, OpenAI's rule) | "best": the best-validated checkpoint
# DPO's supervised term (ml/dpo.py DPOConfig.sft_weight): "auto" (default: the measured rule) | a number 0..10
META_DPO_SFT_WEIGHT = "modelmill.dpo_sft_weight"
MAX_DPO_SFT_WEIGHT = 10.0
# RFT's sampling temperature for rollouts and sampled evaluations (ml/rft/config.py AUTO_TEMPERATURE):
# "auto" (default: the measured rule) | a number > 0 and <= 2
META_RFT_TEMPERATURE = "modelmill.rft_temperature"
MAX_RFT_TEMPERATURE = 2.0
MAX_PATIENCE = 100
META_PREFIX = "modelmill."
MAX_SEQ_LEN_LIMIT = 1 << 20


def training_options(metadata: dict[str, str] | None, settings: Settings) -> dict:
    """The ml config fields a job's metadata (else the server's settings) sets: max_seq_len, truncation,
    quantization, quantization_from. Raises InvalidRequestError (param "metadata") naming the key of a
    bad value or an unknown modelmill.* key (a misspelled key is refused, never ignored)."""
    meta = metadata or {}
    known = (META_MAX_SEQ_LEN, META_TRUNCATION, META_QUANTIZATION, META_EARLY_STOPPING, META_FINAL_MODEL,
             META_DPO_SFT_WEIGHT, META_RFT_TEMPERATURE)
    for key in meta:
        if key.startswith(META_PREFIX) and key not in known:
            raise _bad_metadata(f"unknown metadata key '{key}'; ModelMill reads {', '.join(known)}")
    out = {"truncation": _choice(meta, META_TRUNCATION, ("error", "allow"), "error") == "allow",
           "quantization": settings.quantization,
           "quantization_from": f"MODELMILL_QUANTIZATION={settings.quantization}"}
    if META_QUANTIZATION in meta:
        out["quantization"] = _choice(meta, META_QUANTIZATION, ("auto", "none", "nf4"), "auto")
        out["quantization_from"] = f"job metadata '{META_QUANTIZATION}'"
    out["final_model"] = _choice(meta, META_FINAL_MODEL, ("last", "best"), "last")
    patience = meta.get(META_EARLY_STOPPING, "off").strip().lower()
    if patience != "off":
        if not patience.isdigit() or not 1 <= int(patience) <= MAX_PATIENCE:
            raise _bad_metadata(f"metadata '{META_EARLY_STOPPING}' must be 'off' or a whole number of evaluations "
                                f"between 1 and {MAX_PATIENCE}, got {meta[META_EARLY_STOPPING]!r}")
        out["early_stopping_patience"] = int(patience)
    weight = _number(meta, META_DPO_SFT_WEIGHT)  # DPO jobs only: create_job refuses it for other methods
    if weight is not None:
        if not 0.0 <= weight <= MAX_DPO_SFT_WEIGHT:  # also refuses nan
            raise _bad_metadata(f"metadata '{META_DPO_SFT_WEIGHT}' must be 'auto' or a number between 0 and "
                                f"{MAX_DPO_SFT_WEIGHT:g}, got {meta[META_DPO_SFT_WEIGHT]!r}")
        out["sft_weight"] = weight
    temperature = _number(meta, META_RFT_TEMPERATURE)  # reinforcement jobs only, as above
    if temperature is not None:
        if not 0.0 < temperature <= MAX_RFT_TEMPERATURE:  # also refuses nan
            raise _bad_metadata(f"metadata '{META_RFT_TEMPERATURE}' must be 'auto' or a number greater than 0 and "
                                f"at most {MAX_RFT_TEMPERATURE:g}, got {meta[META_RFT_TEMPERATURE]!r}")
        out["temperature"] = temperature
    raw = meta.get(META_MAX_SEQ_LEN)
    if raw is not None:
        if not raw.strip().isdigit() or not 1 <= int(raw) <= MAX_SEQ_LEN_LIMIT:
            raise _bad_metadata(f"metadata '{META_MAX_SEQ_LEN}' must be a whole number of tokens between 1 and "
                                f"{MAX_SEQ_LEN_LIMIT}, got {raw!r}")
        out["max_seq_len"] = int(raw)
    return out


def _check_selection_options(metadata: dict[str, str] | None, method_type: str, validation_file: str | None) -> None:
    """Early stopping and final_model "best" rank validation evaluations: SFT and DPO evaluate only a
    validation_file (RFT holds one out when none is given), so without one they would do nothing."""
    meta = metadata or {}
    asked = [k for k, off in ((META_EARLY_STOPPING, "off"), (META_FINAL_MODEL, "last"))
             if meta.get(k, off).strip().lower() != off]
    if asked and method_type != "reinforcement" and not validation_file:
        raise _bad_metadata(f"metadata '{asked[0]}' needs a validation_file: it ranks the job's validation "
                            f"evaluations, and a {method_type} job without one has none")


def _number(meta: dict[str, str], key: str) -> float | None:
    """A numeric metadata value; None for "auto" or no key, nan for text that is not a number (the
    caller's range check refuses nan, naming the key and the value)."""
    value = meta.get(key, "auto").strip().lower()
    if value == "auto":
        return None
    try:
        return float(value)
    except ValueError:
        return math.nan


def _choice(meta: dict[str, str], key: str, choices: tuple[str, ...], default: str) -> str:
    value = meta.get(key, default).strip().lower()
    if value not in choices:
        raise _bad_metadata(f"metadata '{key}' must be one of {', '.join(repr(c) for c in choices)}, "
                            f"got {meta[key]!r}")
    return value


def _bad_metadata(message: str) -> errors.InvalidRequestError:
    return errors.InvalidRequestError(message, param="metadata", code="invalid_metadata")


def _check_training_options(settings: Settings, metadata: dict[str, str] | None, base_model: str) -> None:
    """What can be checked now: the metadata keys' values, and a requested max_seq_len against the
    base model's context when its directory is already built (a cheap read of config.json). nf4 on a
    worker without CUDA fails the job there: the API process may run on another machine."""
    from modelmill.ml import memory  # imports no torch

    options = training_options(metadata, settings)
    context = memory.model_context(settings.models_dir / base_model)
    if "max_seq_len" in options and context is not None and options["max_seq_len"] > context:
        raise _bad_metadata(f"metadata '{META_MAX_SEQ_LEN}' is {options['max_seq_len']}, longer than the context "
                            f"of {base_model} ({context} tokens)")


def _method(req: CreateJobRequest) -> tuple[str, dict, str]:
    """(method type, requested hyperparameters, where they came from in the request).
    `method` wins over the legacy top-level field, which still fills in the keys a method
    shares with supervised when method gives none."""
    where = "hyperparameters"
    if req.method is None:
        method, given = methods.get("supervised"), None
    else:
        method = methods.get(req.method.type)
        section = getattr(req.method, method.name, None)
        given = section.hyperparameters if section is not None else None
        if given is not None:
            where = f"method.{method.name}.hyperparameters"
    hp = given or req.hyperparameters
    requested = hp.model_dump() if hp else {}
    # A key left out is "auto", except reasoning_effort, whose OpenAI enum has "default" instead.
    return method.name, {k: requested.get(k, "default" if k == "reasoning_effort" else "auto")
                         for k in method.hyperparameter_keys}, where


def _grader(req: CreateJobRequest, judges) -> dict:
    """method.reinforcement.grader, validated and normalised. As in OpenAI's API, a label_model
    grader (a label, not a reward) is allowed only inside a multi grader, and a judge model must be
    one ModelMill serves (judges: graders.judge_checker). Errors name the field, e.g.
    method.reinforcement.grader.graders.a.operation."""
    section = req.method.reinforcement if req.method else None
    if section is None:
        raise errors.InvalidRequestError("method.reinforcement.grader is required for reinforcement fine-tuning",
                                         param="method.reinforcement.grader", code="missing_required_parameter")
    path = "method.reinforcement.grader"
    grader = graders.validate_top_level(section.grader, path=path)
    graders.check_judge_models(grader, judges, path)
    return grader


def _environment(req: CreateJobRequest, settings: Settings) -> dict | None:
    """method.reinforcement.environment (agentic RFT, docs/agentic_rft.md), validated with its defaults
    filled in, or None. Errors name the exact field, e.g. method.reinforcement.environment.tools[0].url."""
    from modelmill.ml import environments  # imports no torch

    section = req.method.reinforcement if req.method else None
    if section is None or section.environment is None:
        return None
    # MCP servers are started once here (in the graders' sandbox) to list their tools: a 400 if one cannot.
    return environments.validate_environment(section.environment, ENVIRONMENT_PARAM,
                                             tool_hosts=settings.rft_tool_hosts,
                                             sandbox=graders.sandbox_config(settings))


def _check_hyperparameters(method_type: str, requested: dict, where: str) -> None:
    """Explicit values must be ones training accepts; "auto" is resolved later, once the
    worker has counted the examples (resolving is cheap; only the import is not).
    The error names the field as the request spelled it, e.g. method.dpo.hyperparameters.beta."""
    try:
        methods.get(method_type).resolve_hyperparameters(requested, n_train_examples=100)
    except errors.InvalidRequestError as e:
        key = (e.param or "").rsplit(".", 1)[-1]
        if key in requested:
            e.param = f"{where}.{key}"
        raise


def _training_model(store: Store, settings: Settings, name: str, project_id: str) -> tuple[str, str | None]:
    """(base model, adapter to continue from). An ft: or checkpoint model continues its adapter."""
    try:
        served = model_registry.resolve(store, settings, name, project_id=project_id)
    except errors.NotFoundError:
        raise errors.InvalidRequestError(f"Model {name} is not available for fine-tuning or does not exist",
                                         param="model", code="model_not_available") from None
    return served.base_model, (str(served.adapter_dir) if served.adapter_dir else None)


def _check_file(store: Store, file_id: str, param: str, project_id: str) -> None:
    try:
        f = store.files.get(file_id, param=param, project_id=project_id)
    except errors.NotFoundError:
        raise errors.InvalidRequestError(f"invalid {param}: {file_id} does not exist", param=param,
                                         code="file_not_found") from None
    if f.purpose != "fine-tune":
        raise errors.InvalidRequestError(f"invalid {param}: {file_id} has purpose '{f.purpose}';"
                                         " upload it with purpose 'fine-tune'", param=param,
                                         code="invalid_file_purpose")
