"""Creating and changing evals and runs: every check that can be made at once, each failure a
400 whose `param` is the request field (e.g. `testing_criteria[1].operation`,
`data_source.source.content[3].item.label`, `data_source.model`).

Runs check their whole data source up front (every item against the eval's item_schema, every
prompt rendered), so a bad item is the caller's 400, not a failed run later. An eval belongs to the
caller's project, and its runs may read only that project's files and sample only models it may
use (its own, shared ones, base models): another project's are refused exactly like missing ones.
"""

from __future__ import annotations

from typing import Any

from modelmill import errors
from modelmill.settings import Settings
from modelmill.service.models import registry as model_registry
from modelmill.service.evals import data, stored_sources
from modelmill.service.schemas import eval_requests as wire
from modelmill.service.schemas.eval_requests import fields_of
from modelmill.service.store import Store
from modelmill.service.store.evals import EvalRecord, EvalRunRecord, NewRun

DATA_SOURCE_CONFIG_TYPES = ("custom", "logs", "stored_completions")
RUN_DATA_SOURCE_TYPES = ("jsonl", "completions", "responses")
SAMPLING_KEYS = ("temperature", "top_p", "max_completion_tokens", "seed")
METADATA_MAX_KEYS, METADATA_MAX_KEY, METADATA_MAX_VALUE = 16, 64, 512
# The fields of each request shape: those of its wire model (schemas/eval_requests.py, OpenAI's
# CreateEvalRequest, UpdateEvalRequest, CreateEvalRunRequest and the run data sources). These bodies are
# checked here field by field (the checks need the store and the eval, and each 400 names its field), so
# unknown fields are refused here, with the same 400 the wire models give.
EVAL_FIELDS = fields_of(wire.CreateEvalRequest)
UPDATE_FIELDS = fields_of(wire.UpdateEvalRequest)
RUN_FIELDS = fields_of(wire.CreateEvalRunRequest)
CUSTOM_CONFIG_FIELDS = fields_of(wire.CustomDataSourceConfig)
RUN_SOURCE_FIELDS = {"jsonl": fields_of(wire.JsonlRunDataSource),
                     "completions": fields_of(wire.CompletionsRunDataSource),
                     "responses": fields_of(wire.ResponsesRunDataSource)}
SOURCE_FIELDS = {"file_content": fields_of(wire.FileContentSource), "file_id": fields_of(wire.FileIdSource)}
SAMPLING_FIELDS = fields_of(wire.CompletionsSamplingParams)


def _bad(message: str, param: str, code: str = "invalid_value") -> errors.InvalidRequestError:
    return errors.InvalidRequestError(message, param=param, code=code)


def check_metadata(metadata, param: str = "metadata") -> dict | None:
    """OpenAI's Metadata: at most 16 string pairs, keys <= 64 and values <= 512 characters."""
    if metadata is None:
        return None
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                 for k, v in metadata.items()):
        raise _bad(f"{param} must be an object of string values", param)
    if len(metadata) > METADATA_MAX_KEYS:
        raise _bad(f"{param} may have at most {METADATA_MAX_KEYS} keys", param)
    for k, v in metadata.items():
        if len(k) > METADATA_MAX_KEY or len(v) > METADATA_MAX_VALUE:
            raise _bad(f"{param} keys are at most {METADATA_MAX_KEY} characters and values at most "
                       f"{METADATA_MAX_VALUE}", f"{param}.{k}")
    return metadata


# -- evals ----------------------------------------------------------------------------------------

def create_eval(store: Store, body: dict[str, Any], *, project_id: str, settings: Settings | None = None) -> EvalRecord:
    """settings given: each model grader's judge must be one ModelMill serves to the project (400 on
    `testing_criteria[i].model` otherwise, not a failure on every item of every run later)."""
    from modelmill.service.graders import requests as graders

    errors.reject_unknown_fields(body, EVAL_FIELDS)
    config = check_data_source_config(body.get("data_source_config"))
    criteria = check_testing_criteria(body.get("testing_criteria"))
    if settings is not None:
        judges = graders.judge_checker(settings, store, project_id)
        for i, grader in enumerate(criteria):
            graders.check_judge_models(grader, judges, f"testing_criteria[{i}]")
    name = body.get("name")
    if name is not None and not isinstance(name, str):
        raise _bad("name must be a string", "name")
    return store.evals.create(name or "eval", config, criteria, check_metadata(body.get("metadata")), project_id)


def update_eval(store: Store, eval_id: str, body: dict[str, Any], *, project_id: str) -> EvalRecord:
    store.evals.get(eval_id, project_id=project_id)  # a missing (or another project's) eval: 404 before any 400
    errors.reject_unknown_fields(body, UPDATE_FIELDS)
    name = body.get("name")
    if name is not None and (not isinstance(name, str) or not name):
        raise _bad("name must be a non-empty string", "name")
    return store.evals.update(eval_id, name=name, metadata=check_metadata(body.get("metadata")),
                              set_metadata="metadata" in body, project_id=project_id)


def check_data_source_config(config) -> dict:
    import jsonschema

    param = "data_source_config"
    if not isinstance(config, dict):
        raise _bad(f"Missing required parameter: '{param}'.", param, "missing_required_parameter")
    kind = config.get("type")
    if kind in stored_sources.CONFIG_TYPES:  # the project's stored completions / Responses
        return stored_sources.check_config(config)
    if kind != "custom":
        raise _bad(f"{param}.type {kind!r} is not supported; use one of "
                   f"{', '.join(repr(t) for t in DATA_SOURCE_CONFIG_TYPES)}", f"{param}.type", "unsupported_value")
    errors.reject_unknown_fields(config, CUSTOM_CONFIG_FIELDS, param)
    schema = config.get("item_schema")
    if not isinstance(schema, dict):
        raise _bad(f"{param}.item_schema must be a JSON schema object", f"{param}.item_schema")
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.exceptions.SchemaError as e:
        raise _bad(f"{param}.item_schema is not a valid JSON schema: {e.message}", f"{param}.item_schema") from None
    include = config.get("include_sample_schema", False)
    if not isinstance(include, bool):
        raise _bad(f"{param}.include_sample_schema must be a boolean", f"{param}.include_sample_schema")
    return {"type": "custom", "item_schema": schema, "include_sample_schema": include}


def check_testing_criteria(criteria, *, require_thresholds: bool = True) -> list[dict]:
    """Validated graders with unique names. Any grader type of the engine is accepted (OpenAI's
    eval variants plus multi); text_similarity needs a pass_threshold, as in OpenAI's evals."""
    from modelmill.ml.graders import validate_grader

    if not isinstance(criteria, list) or not criteria:
        raise _bad("testing_criteria must be a non-empty list of graders", "testing_criteria")
    out, names = [], {}
    for i, spec in enumerate(criteria):
        param = f"testing_criteria[{i}]"
        grader = validate_grader(spec, path=param)
        if require_thresholds and grader["type"] == "text_similarity" and grader.get("pass_threshold") is None:
            raise _bad(f"{param}.pass_threshold is required for a text_similarity testing criterion",
                       f"{param}.pass_threshold", "missing_required_parameter")
        if grader["name"] in names:
            raise _bad(f"{param}.name {grader['name']!r} is already the name of testing_criteria"
                       f"[{names[grader['name']]}]; names must be unique", f"{param}.name")
        names[grader["name"]] = i
        out.append(grader)
    return out


# -- runs -----------------------------------------------------------------------------------------

def create_run(store: Store, settings: Settings, eval_id: str, body: dict[str, Any], *,
               project_id: str) -> EvalRunRecord:
    ev = store.evals.get(eval_id, project_id=project_id)
    errors.reject_unknown_fields(body, RUN_FIELDS)
    source = check_run_data_source(store, settings, ev, body.get("data_source"))
    name = body.get("name")
    if name is not None and not isinstance(name, str):
        raise _bad("name must be a string", "name")
    model = source.get("model") if source["type"] != "jsonl" else None
    return store.evals.create_run(NewRun(eval_id=eval_id, name=name or model or "jsonl", data_source=source,
                                         model=model, metadata=check_metadata(body.get("metadata"))))


def check_run_data_source(store: Store, settings: Settings, ev: EvalRecord, source, *,
                          check_model: bool = True) -> dict:
    """The run's data source, checked against the store and the eval (files and models as the
    eval's project sees them); returned as stored."""
    param = "data_source"
    if not isinstance(source, dict):
        raise _bad(f"Missing required parameter: '{param}'.", param, "missing_required_parameter")
    kind = source.get("type")
    if kind not in RUN_DATA_SOURCE_TYPES:
        raise _bad(f"{param}.type must be 'jsonl', 'completions' or 'responses'; got {kind!r}",
                   f"{param}.type", "unsupported_value")
    errors.reject_unknown_fields(source, RUN_SOURCE_FIELDS[kind], param)
    src = source.get("source")
    if not isinstance(src, dict):
        raise _bad(f"Missing required parameter: '{param}.source'.", f"{param}.source", "missing_required_parameter")
    if src.get("type") in SOURCE_FIELDS:
        errors.reject_unknown_fields(src, SOURCE_FIELDS[src["type"]], f"{param}.source")
    stored = {"completions": "stored_completions", "responses": "responses"}.get(kind)
    if stored_sources.is_stored(src) and src["type"] != stored:
        raise _bad(f"{param}.source.type {src['type']!r} is not a source of a {kind} run", f"{param}.source.type",
                   "unsupported_value")
    rows = data.load_rows(store, src, f"{param}.source", project_id=ev.project_id)
    if not rows:
        raise _bad(f"{param}.source has no items", f"{param}.source")
    data.check_items(rows, ev.data_source_config["item_schema"], _row_namer(src, f"{param}.source"))
    if kind != "jsonl" and (source.get("model") is not None or not stored_sources.is_stored(src)):
        # sample the model anew (a stored source without a model grades what was stored)
        source = _check_completions(store, settings, source, rows, check_model, ev.project_id)
    return source


def _row_namer(src: dict, param: str):
    if src.get("type") == "file_content":
        return lambda i: (f"{param}.content[{i}].item", f"{param}.content[{i}].item")
    return lambda i: (f"{param}.id", f"{param}.id: item {i + 1} of file {src.get('id')}")


def _check_completions(store: Store, settings: Settings, source: dict, rows, check_model: bool,
                       project_id: str) -> dict:
    from modelmill.ml.graders import templating

    param = "data_source"
    model = source.get("model")
    if not isinstance(model, str) or not model:
        raise _bad(f"Missing required parameter: '{param}.model'.", f"{param}.model", "missing_required_parameter")
    if check_model:
        model_registry.resolve(store, settings, model, param=f"{param}.model",  # 404 model_not_found
                               project_id=project_id)
    data.check_input_messages(source.get("input_messages"), f"{param}.input_messages")
    source = {**source, "input_messages": data.normalize_input_messages(source["input_messages"])}
    sampling_params(stored_sources.chat_sampling_params(source))
    for i, (item, _) in enumerate(rows):
        try:
            data.render_input(source["input_messages"], item)
        except (templating.InvalidVariable, data.DataSourceError) as e:
            raise _bad(f"{param}.input_messages: item {i}: {e}", f"{param}.input_messages") from None
    return source


def sampling_params(raw):
    """(ml.sampling.SamplingParams, tools | None) from a completions data source's sampling_params.
    Temperature, top_p, max_completion_tokens, seed, tools and response_format (json_schema /
    json_object, enforced by grammar-constrained decoding) are honoured; reasoning_effort other than
    "none" is a 400, as on chat completions (the served models do not reason)."""
    from modelmill.ml.sampling import SamplingParams

    param = "data_source.sampling_params"
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise _bad(f"{param} must be an object", param)
    errors.reject_unknown_fields(raw, SAMPLING_FIELDS, param)
    if raw.get("reasoning_effort") not in (None, "none"):
        raise _bad(f"{param}.reasoning_effort: the models ModelMill serves are not reasoning models; leave it "
                   f"unset or 'none'", f"{param}.reasoning_effort", "unsupported_value")
    tools = raw.get("tools")
    if tools is not None and not (isinstance(tools, list) and all(isinstance(t, dict) for t in tools)):
        raise _bad(f"{param}.tools must be a list of tools", f"{param}.tools")
    from modelmill.ml import constraints

    try:  # a strict tool's schema is enforced by a grammar (ml/constraints.py): a 400 now, not a failed run
        constraints.check_tools(tools)
    except errors.InvalidRequestError as e:
        raise _bad(f"{param}.{e.param}: {e.message}", f"{param}.{e.param}") from None
    for key in ("max_completion_tokens", "seed"):
        v = raw.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
            raise _bad(f"{param}.{key} must be an integer", f"{param}.{key}")
    try:
        params = SamplingParams(temperature=_num(raw, "temperature", 1.0), top_p=_num(raw, "top_p", 1.0),
                                max_tokens=raw.get("max_completion_tokens"), seed=raw.get("seed", 42),
                                response_format=raw.get("response_format"))  # enforced (ml/constraints.py)
    except errors.InvalidRequestError as e:
        key = {"max_tokens": "max_completion_tokens"}.get(e.param, e.param)
        raise _bad(f"{param}.{key}: {e.message}", f"{param}.{key}") from None
    return params, tools


def _num(raw: dict, key: str, default: float):
    v = raw.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _bad(f"data_source.sampling_params.{key} must be a number", f"data_source.sampling_params.{key}")
    return float(v)
