"""multi: several graders, one reward from `calculate_output` over their rewards.

`graders` is either a map name -> grader (OpenAI's documented form; each name is a variable of
the formula) or one grader object (the form in OpenAI's schema); a single grader is named by
its `name` when that is an identifier, and by its `type` as well. Sub-graders run in parallel,
each over the whole batch. Per sample: sub_rewards = {name: reward}; reward = the formula (see
formula.py); errors are OR-ed across sub-graders; token usage is summed per judge model.
A formula that cannot be computed for a sample (division by zero, log of 0, overflow) is
formula_parse_error with reward 0. Nested multi graders are refused, as OpenAI does.
"""

from __future__ import annotations

import keyword
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

from . import checks, formula
from .engine import GradeResult, GraderContext, merge_errors, run_grader
from .registry import register
from .validate import validate_grader


def is_variable_name(name) -> bool:
    return isinstance(name, str) and name.isidentifier() and not keyword.iskeyword(name)


def sub_graders(spec: dict) -> dict[str, dict]:
    """name -> grader spec, in the order the grader lists them."""
    graders = spec["graders"]
    if isinstance(graders.get("type"), str):  # one grader object, not a map
        return {single_name(graders): graders}
    return dict(graders)


def single_name(grader: dict) -> str:
    name = grader.get("name")
    return name if is_variable_name(name) else grader["type"]


def formula_names(spec: dict) -> list[str]:
    """The variables calculate_output may use."""
    names = list(sub_graders(spec))
    graders = spec["graders"]
    if isinstance(graders.get("type"), str) and graders["type"] not in names:
        names.append(graders["type"])  # the single grader's type is an alias of its name
    return names


def _combine(spec: dict, tree, subs: dict[str, GradeResult]) -> GradeResult:
    result = GradeResult(sub_rewards={name: float(r.reward) for name, r in subs.items()})
    per_model: dict = {}
    token_usage = None
    for r in subs.values():
        merge_errors(result.errors, r.errors)
        if r.token_usage is not None:
            token_usage = (token_usage or 0) + r.token_usage
        for model, usage in r.model_grader_token_usage_per_model.items():
            total = per_model.setdefault(model, dict.fromkeys(usage, 0))
            for key, value in usage.items():
                total[key] = total.get(key, 0) + value
    result.token_usage = token_usage
    result.model_grader_token_usage_per_model = per_model
    result.scores = {name: r.scores for name, r in subs.items() if r.scores}
    variables = dict(result.sub_rewards)
    graders = spec["graders"]
    if isinstance(graders.get("type"), str):
        variables.setdefault(graders["type"], next(iter(variables.values())))
    try:
        result.reward = formula.evaluate(tree, variables)
    except formula.FormulaError:
        result.errors["formula_parse_error"] = True
        result.reward = 0.0
    return result


def grade_batch(spec: dict, samples: list[dict], items: list[dict], context: GraderContext) -> list[GradeResult]:
    started = time.perf_counter()
    tree = formula.parse(spec["calculate_output"], formula_names(spec))  # validated: does not raise
    subs = sub_graders(spec)
    workers = min(max(1, context.max_workers), len(subs))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="multi") as pool:
        per_grader = list(pool.map(lambda sub: run_grader(sub, samples, items, context), subs.values()))
    by_name = dict(zip(subs, per_grader))
    results = [_combine(spec, tree, {name: by_name[name][i] for name in subs}) for i in range(len(samples))]
    elapsed = time.perf_counter() - started
    for r in results:
        r.execution_time = elapsed
    return results


class MultiGrader(checks.GraderWire):
    """OpenAI's GraderMulti: graders is a map name -> grader (or one grader object) of any other
    type; calculate_output a formula over their names (formula.py). SubGrader is the union of the
    other registered types, filled in by registry.wire_union."""

    type: Literal["multi"]
    graders: dict[str, SubGrader] | SubGrader  # noqa: F821  resolved by registry.wire_union
    calculate_output: str


def validate(spec: dict, path: str) -> dict:
    graders = spec.get("graders")
    if not isinstance(graders, dict) or not graders:
        raise checks.bad(f"{path}.graders", f"{path}.graders must be a grader object or a non-empty map of "
                                            "name -> grader")
    single = isinstance(graders.get("type"), str)
    entries = {None: graders} if single else graders
    normalised = {}
    for name, sub in entries.items():
        sub_path = f"{path}.graders" if single else f"{path}.graders.{name}"
        if not single and not is_variable_name(name):
            raise checks.bad(sub_path, f"grader name {name!r} must be an identifier (letters, digits, _) so "
                                       "calculate_output can use it")
        if isinstance(sub, dict) and sub.get("type") == "multi":
            raise checks.bad(f"{sub_path}.type", "a multi grader cannot contain another multi grader")
        normalised[name] = validate_grader(sub, path=sub_path)
    out = dict(spec, graders=normalised[None] if single else normalised)
    if not isinstance(spec.get("calculate_output"), str):
        raise checks.bad(f"{path}.calculate_output", f"{path}.calculate_output must be a string")
    try:
        formula.parse(spec["calculate_output"], formula_names(out))
    except formula.FormulaError as e:
        raise checks.bad(f"{path}.calculate_output", f"{path}.calculate_output: {e}") from None
    return out


register("multi", grade_batch, validate=validate, model=MultiGrader)
