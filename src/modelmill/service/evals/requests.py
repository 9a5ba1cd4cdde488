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
from modelmill.service import model_registry
from modelmill.service.evals import data
from modelmill.service.store import Store
from modelmill.service.store.evals import EvalRecord, EvalRunRecord, NewRun

DATA_SOURCE_CONFIG_TYPES = ("custom", "logs", "stored_completions")
RUN_DATA_SOURCE_TYPES = ("jsonl", "completions", "responses")
SAMPLING_KEYS = ("temperature", "top_p", "max_completion_tokens", "seed")
METADATA_MAX_KEYS, METADATA_MAX_KEY, METADATA_MAX_VALUE = 16, 64, 512


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

def create_eval(store: Store, body: dict[str, Any], *, project_id: str) -> EvalRecord:
    config = check_data_source_config(body.get("data_source_config"))
    criteria = check_testing_criteria(body.get("testing_criteria"))
    name = body.get("name")
    if name is not None and not isinstance(name, str):
        raise _bad("name must be a string", "name")
    return store.evals.create(name or "eval", config, criteria, check_metadata(body.get("metadata")), project_id)


def update_eval(store: Store, eval_id: str, body: dict[str, Any], *, project_id: str) -> EvalRecord:
    store.evals.get(eval_id, project_id=project_id)  # a missing (or another project's) eval: 404 before any 400
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
    if kind != "custom":
        supported = kind in DATA_SOURCE_CONFIG_TYPES
        raise _bad(f"{param}.type {kind!r} is not supported" + (" by ModelMill (it has no stored logs or "
                   "completions)" if supported else "") + "; use 'custom' with an item_schema",
                   f"{param}.type", "unsupported_value")
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
    source = check_run_data_source(store, settings, ev, body.get("data_source"))
    name = body.get("name")
    if name is not None and not isinstance(name, str):
        raise _bad("name must be a string", "name")
    model = source.get("model") if source["type"] == "completions" else None
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
    if kind not in ("jsonl", "completions"):
        raise _bad(f"{param}.type must be 'jsonl' or 'completions'; got {kind!r}" +
                   (" (responses runs are not supported by ModelMill)" if kind == "responses" else ""),
                   f"{param}.type", "unsupported_value")
    src = source.get("source")
    if not isinstance(src, dict):
        raise _bad(f"Missing required parameter: '{param}.source'.", f"{param}.source", "missing_required_parameter")
    if src.get("type") == "stored_completions":
        raise _bad(f"{param}.source.type 'stored_completions' is not supported by ModelMill; use file_content or "
                   "file_id", f"{param}.source.type", "unsupported_value")
    rows = data.load_rows(store, src, f"{param}.source", project_id=ev.project_id)
    if not rows:
        raise _bad(f"{param}.source has no items", f"{param}.source")
    data.check_items(rows, ev.data_source_config["item_schema"], _row_namer(src, f"{param}.source"))
    if kind == "completions":
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
    sampling_params(source.get("sampling_params"))
    for i, (item, _) in enumerate(rows):
        try:
            data.render_input(source["input_messages"], item)
        except (templating.InvalidVariable, data.DataSourceError) as e:
            raise _bad(f"{param}.input_messages: item {i}: {e}", f"{param}.input_messages") from None
    return source


def sampling_params(raw):
    """(ml.sampling.SamplingParams, tools | None) from a completions data source's sampling_params.
    Temperature, top_p, max_completion_tokens, seed and tools are honoured; reasoning_effort and
    response_format are accepted and ignored (local models neither reason nor constrain output)."""
    from modelmill.ml.sampling import SamplingParams

    param = "data_source.sampling_params"
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise _bad(f"{param} must be an object", param)
    tools = raw.get("tools")
    if tools is not None and not (isinstance(tools, list) and all(isinstance(t, dict) for t in tools)):
        raise _bad(f"{param}.tools must be a list of tools", f"{param}.tools")
    for key in ("max_completion_tokens", "seed"):
        v = raw.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
            raise _bad(f"{param}.{key} must be an integer", f"{param}.{key}")
    try:
        params = SamplingParams(temperature=_num(raw, "temperature", 1.0), top_p=_num(raw, "top_p", 1.0),
                                max_tokens=raw.get("max_completion_tokens"), seed=raw.get("seed", 42))
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
