"""validate_grader: check a grader object against OpenAI's shapes, return it normalised.

Shapes: GraderStringCheck, GraderTextSimilarity, GraderPython, GraderScoreModel,
GraderLabelModel and GraderMulti in OpenAI's spec, plus what OpenAI's guide documents on top
(pass_threshold on text_similarity / python / score_model, a map of named graders in multi).
Every problem raises errors.InvalidRequestError whose `param` is the path of the bad field,
e.g. `grader.graders.a.operation` or `grader.input[1].content[0].text`. Templates are checked
too (namespace item or sample, a known sample variable, a parseable path), and so is a multi
grader's formula. A field the grader's type does not have (FIELDS below: OpenAI's shapes plus the
documented pass_threshold) is refused as OpenAI refuses it, "Unrecognized request argument
supplied: grader.<field>", so a misspelled `modle` or `pass_treshold` is never silently ignored.

Normalised means: a missing `name` becomes the grader's type (every result needs a name).
"""

from __future__ import annotations

import math
from typing import Callable

from modelmill import errors

from . import formula, multi, python_grader, templating
from .model_graders import DEFAULT_RANGE
from .string_check import OPERATIONS
from .text_similarity import ALL_METRICS

ROLES = ("user", "assistant", "system", "developer")
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
TEXT_PARTS = ("input_text", "output_text")

# The fields each grader type has: OpenAI's Grader* shapes, plus pass_threshold where OpenAI's eval
# variants (EvalGraderTextSimilarity / Python / ScoreModel) add it.
FIELDS = {
    "string_check": ("input", "reference", "operation"),
    "text_similarity": ("input", "reference", "evaluation_metric", "pass_threshold"),
    "python": ("source", "image_tag", "pass_threshold"),
    "score_model": ("input", "model", "range", "sampling_params", "pass_threshold"),
    "label_model": ("input", "model", "labels", "passing_labels"),
    "multi": ("graders", "calculate_output"),
}
COMMON_FIELDS = ("type", "name")
MESSAGE_FIELDS = ("role", "content", "type")
PART_FIELDS = {"input_text": ("type", "text"), "output_text": ("type", "text"),
               "input_image": ("type", "image_url", "detail"), "input_audio": ("type", "input_audio")}
SAMPLING_FIELDS = ("seed", "top_p", "temperature", "max_completions_tokens", "reasoning_effort")


def _bad(param: str, message: str) -> errors.InvalidRequestError:
    return errors.InvalidRequestError(message, param=param, code="invalid_value")


def _string(spec: dict, key: str, path: str, *, template: bool = False, required: bool = True) -> None:
    value = spec.get(key)
    if value is None and not required:
        return
    if not isinstance(value, str):
        raise _bad(f"{path}.{key}", f"{path}.{key} must be a string")
    if template:
        _template(value, f"{path}.{key}")


def _template(text: str, param: str) -> None:
    try:
        templating.check_template(text)
    except templating.InvalidVariable as e:
        raise _bad(param, f"{param}: invalid template variable {{{{{e.variable}}}}}: {e.reason}") from None


def _number(spec: dict, key: str, path: str) -> None:
    value = spec.get(key)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _bad(f"{path}.{key}", f"{path}.{key} must be a finite number")


def _enum(spec: dict, key: str, path: str, allowed) -> None:
    if spec.get(key) not in allowed:
        raise _bad(f"{path}.{key}", f"{path}.{key} must be one of {', '.join(allowed)}; got {spec.get(key)!r}")


# -- per type ------------------------------------------------------------------------------------------

def _string_check(spec: dict, path: str) -> None:
    _string(spec, "input", path, template=True)
    _string(spec, "reference", path, template=True)
    _enum(spec, "operation", path, tuple(OPERATIONS))


def _text_similarity(spec: dict, path: str) -> None:
    _string(spec, "input", path, template=True)
    _string(spec, "reference", path, template=True)
    _enum(spec, "evaluation_metric", path, ALL_METRICS)
    _number(spec, "pass_threshold", path)


def _python(spec: dict, path: str) -> None:
    python_grader.check_source(spec.get("source"), param=f"{path}.source")
    _string(spec, "image_tag", path, required=False)
    _number(spec, "pass_threshold", path)


def _content_part(part, param: str) -> None:
    if isinstance(part, str):
        return _template(part, param)
    if not isinstance(part, dict):
        raise _bad(param, f"{param} must be a string or a content object")
    kind = part.get("type")
    if kind in PART_FIELDS:
        errors.reject_unknown_fields(part, PART_FIELDS[kind], param)
    if kind in TEXT_PARTS:
        _string(part, "text", param, template=True)
    elif kind == "input_image":
        _string(part, "image_url", param, template=True)
        _string(part, "detail", param, required=False)
    elif kind == "input_audio":
        audio = part.get("input_audio")
        if not isinstance(audio, dict) or not isinstance(audio.get("data"), str):
            raise _bad(f"{param}.input_audio", f"{param}.input_audio must be an object with data and format")
        _enum(audio, "format", f"{param}.input_audio", ("mp3", "wav"))
    else:
        raise _bad(f"{param}.type", f"{param}.type must be one of input_text, output_text, input_image, "
                                    f"input_audio; got {kind!r}")


def _messages(spec: dict, path: str) -> None:
    messages = spec.get("input")
    if not isinstance(messages, list) or not messages:
        raise _bad(f"{path}.input", f"{path}.input must be a non-empty list of messages")
    for i, message in enumerate(messages):
        param = f"{path}.input[{i}]"
        if not isinstance(message, dict):
            raise _bad(param, f"{param} must be a message object with role and content")
        errors.reject_unknown_fields(message, MESSAGE_FIELDS, param)
        _enum(message, "role", param, ROLES)
        if message.get("type", "message") != "message":
            raise _bad(f"{param}.type", f"{param}.type must be 'message'")
        content = message.get("content")
        if isinstance(content, list):
            for j, part in enumerate(content):
                _content_part(part, f"{param}.content[{j}]")
        elif content is None:
            raise _bad(f"{param}.content", f"{param}.content is required")
        else:
            _content_part(content, f"{param}.content")


def _model(spec: dict, path: str) -> None:
    if not isinstance(spec.get("model"), str) or not spec["model"].strip():
        raise _bad(f"{path}.model", f"{path}.model must be a non-empty model name")
    _messages(spec, path)


def _sampling_params(spec: dict, path: str) -> None:
    params = spec.get("sampling_params")
    if params is None:
        return
    param = f"{path}.sampling_params"
    if not isinstance(params, dict):
        raise _bad(param, f"{param} must be an object")
    errors.reject_unknown_fields(params, SAMPLING_FIELDS, param)
    for key in ("temperature", "top_p"):
        _number(params, key, param)
    for key, least in (("seed", None), ("max_completions_tokens", 1)):
        value = params.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or (least is not None and value < least)):
            raise _bad(f"{param}.{key}", f"{param}.{key} must be an integer" + (f" >= {least}" if least else ""))
    if params.get("reasoning_effort") is not None:
        _enum(params, "reasoning_effort", param, REASONING_EFFORTS)


def _score_model(spec: dict, path: str) -> None:
    _model(spec, path)
    _sampling_params(spec, path)
    _number(spec, "pass_threshold", path)
    bounds = spec.get("range") if spec.get("range") is not None else DEFAULT_RANGE
    ok = (isinstance(bounds, (list, tuple)) and len(bounds) == 2
          and all(not isinstance(b, bool) and isinstance(b, (int, float)) and math.isfinite(b) for b in bounds))
    if not ok or bounds[0] >= bounds[1]:
        raise _bad(f"{path}.range", f"{path}.range must be [min, max] with min < max")


def _label_list(spec: dict, key: str, path: str) -> list:
    labels = spec.get(key)
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) and x for x in labels):
        raise _bad(f"{path}.{key}", f"{path}.{key} must be a non-empty list of non-empty strings")
    if len(set(labels)) != len(labels):
        raise _bad(f"{path}.{key}", f"{path}.{key} has duplicates")
    return labels


def _label_model(spec: dict, path: str) -> None:
    _model(spec, path)
    _sampling_params(spec, path)
    labels = _label_list(spec, "labels", path)
    passing = _label_list(spec, "passing_labels", path)
    missing = [x for x in passing if x not in labels]
    if missing:
        raise _bad(f"{path}.passing_labels", f"{path}.passing_labels must be a subset of labels; "
                                             f"not in labels: {', '.join(missing)}")


def _multi(spec: dict, path: str) -> dict:
    graders = spec.get("graders")
    if not isinstance(graders, dict) or not graders:
        raise _bad(f"{path}.graders", f"{path}.graders must be a grader object or a non-empty map of "
                                      "name -> grader")
    single = isinstance(graders.get("type"), str)
    entries = {None: graders} if single else graders
    normalised = {}
    for name, sub in entries.items():
        sub_path = f"{path}.graders" if single else f"{path}.graders.{name}"
        if not single and not multi.is_variable_name(name):
            raise _bad(sub_path, f"grader name {name!r} must be an identifier (letters, digits, _) so "
                                 "calculate_output can use it")
        if isinstance(sub, dict) and sub.get("type") == "multi":
            raise _bad(f"{sub_path}.type", "a multi grader cannot contain another multi grader")
        normalised[name] = _validate(sub, sub_path)
    out = dict(spec, graders=normalised[None] if single else normalised)
    if not isinstance(spec.get("calculate_output"), str):
        raise _bad(f"{path}.calculate_output", f"{path}.calculate_output must be a string")
    try:
        formula.parse(spec["calculate_output"], multi.formula_names(out))
    except formula.FormulaError as e:
        raise _bad(f"{path}.calculate_output", f"{path}.calculate_output: {e}") from None
    return out


# type -> check(spec, path); a check may return a normalised copy (multi does).
VALIDATORS: dict[str, Callable[[dict, str], dict | None]] = {
    "string_check": _string_check, "text_similarity": _text_similarity, "python": _python,
    "score_model": _score_model, "label_model": _label_model, "multi": _multi,
}


def _validate(spec, path: str) -> dict:
    from .engine import GRADERS

    if not isinstance(spec, dict):
        raise _bad(path, f"{path} must be a grader object")
    kind = spec.get("type")
    if kind not in GRADERS:
        raise _bad(f"{path}.type", f"{path}.type must be one of {', '.join(sorted(GRADERS))}; got {kind!r}")
    if spec.get("name") is not None and not isinstance(spec["name"], str):
        raise _bad(f"{path}.name", f"{path}.name must be a string")
    if kind in FIELDS:  # a type registered without a FIELDS entry keeps its own fields
        errors.reject_unknown_fields(spec, COMMON_FIELDS + FIELDS[kind], path)
    check = VALIDATORS.get(kind)  # a registered type without a validator gets the generic checks only
    out = (check(spec, path) if check else None) or dict(spec)
    if not out.get("name"):
        out["name"] = kind
    return out


def validate_grader(spec: dict, *, path: str = "grader") -> dict:
    """The grader, checked and normalised; raises InvalidRequestError(param=<field path>)."""
    return _validate(spec, path)
