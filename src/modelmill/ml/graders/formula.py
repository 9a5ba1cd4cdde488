"""A small, safe evaluator for a multi grader's `calculate_output`.

OpenAI documents the language: the sub-graders' names as variables, the operators + - * / and
^ (power), and the functions min, max, abs, floor, ceil, exp, sqrt, log. ModelMill also accepts
** (power), % (modulo), unary + and -, comparisons (true = 1.0), clip(x, lo, hi) and log(x, base).

Why by hand: the formula is user input evaluated inside the server, so it is parsed with
Python's `ast` and walked against a whitelist; nothing is ever passed to eval/exec, attribute
access / subscripts / lambdas / keywords are refused, and all arithmetic is on floats with
explicit guards (no big-integer powers, no inf / nan results). Every failure raises
FormulaError, which grading reports as `formula_parse_error`.
"""

from __future__ import annotations

import ast
import math
import operator

MAX_FORMULA_CHARS = 2000
MAX_NODES = 500
MAX_ABS_EXPONENT = 1000.0  # 2 ** 1000 is about 1e301: anything larger only overflows


class FormulaError(ValueError):
    """The formula is malformed, uses something outside the whitelist, or cannot be computed."""


def _pow(base: float, exponent: float) -> float:
    if abs(exponent) > MAX_ABS_EXPONENT:
        raise FormulaError(f"exponent {exponent:g} is too large")
    return math.pow(base, exponent)


def _clip(x: float, lo: float, hi: float) -> float:
    if lo > hi:
        raise FormulaError("clip(x, lo, hi) needs lo <= hi")
    return min(max(x, lo), hi)


def _log(x: float, base: float | None = None) -> float:
    return math.log(x) if base is None else math.log(x, base)


_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.Pow: _pow, ast.Mod: math.fmod}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}
_COMPARE = {ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
            ast.Eq: operator.eq, ast.NotEq: operator.ne}
# name -> (function, least args, most args)
FUNCTIONS = {
    "min": (lambda *a: min(a), 1, 64), "max": (lambda *a: max(a), 1, 64), "abs": (abs, 1, 1),
    "floor": (math.floor, 1, 1),
    "ceil": (math.ceil, 1, 1), "exp": (math.exp, 1, 1), "sqrt": (math.sqrt, 1, 1), "log": (_log, 1, 2),
    "clip": (_clip, 3, 3),
}


def parse(formula: str, names) -> ast.Expression:
    """Parse and check a formula against the allowed variable names; raises FormulaError."""
    if not isinstance(formula, str) or not formula.strip():
        raise FormulaError("the formula is empty")
    if len(formula) > MAX_FORMULA_CHARS:
        raise FormulaError(f"the formula is longer than {MAX_FORMULA_CHARS} characters")
    # OpenAI's power operator is ^; rewriting before parsing gives it **'s precedence.
    source = formula.replace("^", "**")
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        raise FormulaError(f"cannot parse the formula: {getattr(e, 'msg', e)}") from None
    nodes = list(ast.walk(tree))
    if len(nodes) > MAX_NODES:
        raise FormulaError(f"the formula has more than {MAX_NODES} parts")
    # A function name is only allowed where it is called.
    callees = {id(n.func) for n in nodes if isinstance(n, ast.Call)}
    for node in nodes:
        _check_node(node, set(names), callees)
    return tree


def _check_node(node: ast.AST, names: set, callees: set) -> None:
    if isinstance(node, (ast.Expression, ast.Load)) or type(node) in _BINARY or type(node) in _UNARY \
            or type(node) in _COMPARE:
        return
    if isinstance(node, (ast.BinOp, ast.UnaryOp, ast.Compare)):
        op = getattr(node, "op", None)
        ops = node.ops if isinstance(node, ast.Compare) else [op]
        allowed = _COMPARE if isinstance(node, ast.Compare) else _BINARY if isinstance(node, ast.BinOp) else _UNARY
        bad = [type(o).__name__ for o in ops if type(o) not in allowed]
        if bad:
            raise FormulaError(f"operator {bad[0]} is not allowed")
        return
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise FormulaError(f"only numbers are allowed as constants, not {node.value!r}"[:120])
        return
    if isinstance(node, ast.Name):
        if node.id not in names and not (id(node) in callees and node.id in FUNCTIONS):
            raise FormulaError(f"unknown name {node.id!r}; the variables are {', '.join(sorted(names)) or 'none'}")
        return
    if isinstance(node, ast.Call):
        _check_call(node, names)
        return
    raise FormulaError(f"{type(node).__name__} is not allowed in a formula")


def _check_call(node: ast.Call, names: set) -> None:
    if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
        what = node.func.id if isinstance(node.func, ast.Name) else type(node.func).__name__
        raise FormulaError(f"calling {what!r} is not allowed; functions: {', '.join(FUNCTIONS)}")
    if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
        raise FormulaError(f"{node.func.id}() takes plain positional arguments only")
    _, least, most = FUNCTIONS[node.func.id]
    if not least <= len(node.args) <= most:
        raise FormulaError(f"{node.func.id}() takes {least}{'' if least == most else f' to {most}'} arguments, "
                           f"got {len(node.args)}")


def evaluate(formula: str | ast.Expression, variables: dict[str, float]) -> float:
    """The formula's value (a finite float) for these variable values; raises FormulaError."""
    tree = formula if isinstance(formula, ast.Expression) else parse(formula, variables.keys())
    try:
        value = _eval(tree.body, variables)
    except FormulaError:
        raise
    except ZeroDivisionError:
        raise FormulaError("division by zero") from None
    except (OverflowError, ValueError, TypeError, RecursionError) as e:
        raise FormulaError(f"cannot compute the formula: {e}") from None
    if not math.isfinite(value):
        raise FormulaError(f"the formula's value is not finite ({value})")
    return value


def _eval(node: ast.AST, env: dict[str, float]) -> float:
    if isinstance(node, ast.Constant):
        return float(node.value)
    if isinstance(node, ast.Name):
        if node.id not in env:
            raise FormulaError(f"unknown name {node.id!r}")
        return float(env[node.id])
    if isinstance(node, ast.BinOp):
        return float(_BINARY[type(node.op)](_eval(node.left, env), _eval(node.right, env)))
    if isinstance(node, ast.UnaryOp):
        return float(_UNARY[type(node.op)](_eval(node.operand, env)))
    if isinstance(node, ast.Compare):
        left = _eval(node.left, env)
        for op, right_node in zip(node.ops, node.comparators):
            right = _eval(right_node, env)
            if not _COMPARE[type(op)](left, right):
                return 0.0
            left = right
        return 1.0
    if isinstance(node, ast.Call):
        fn = FUNCTIONS[node.func.id][0]
        return float(fn(*[_eval(a, env) for a in node.args]))
    raise FormulaError(f"{type(node).__name__} is not allowed in a formula")
