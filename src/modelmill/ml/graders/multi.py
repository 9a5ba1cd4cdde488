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

from . import formula
from .engine import GradeResult, GraderContext, merge_errors, register, run_grader


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


register("multi", grade_batch)
