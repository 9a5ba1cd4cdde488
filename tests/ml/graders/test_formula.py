"""multi's calculate_output evaluator: OpenAI's operators and functions, and that it is safe."""

from __future__ import annotations

import builtins
import math

import pytest

from modelmill.ml.graders.formula import FormulaError, evaluate, parse

V = {"a": 0.5, "b": 0.25, "c": 4.0}


@pytest.mark.parametrize("formula, expected", [
    ("a + b", 0.75), ("a - b", 0.25), ("a * c", 2.0), ("a / b", 2.0), ("(a + b) / 2", 0.375),
    ("c ^ 2", 16.0), ("2 * c ^ 2", 32.0),  # ^ is power with power's precedence (not xor)
    ("c ** 0.5", 2.0), ("-a", -0.5), ("+a", 0.5), ("7 % 4", 3.0), ("2 ^ 3 ^ 2", 512.0),  # right-assoc
    ("min(a, b)", 0.25), ("max(a, b, c)", 4.0), ("min(a)", 0.5), ("abs(b - a)", 0.25),
    ("floor(2.7)", 2.0), ("ceil(2.1)", 3.0), ("exp(0)", 1.0), ("sqrt(c)", 2.0), ("log(1)", 0.0),
    ("log(8, 2)", 3.0), ("clip(c, 0, 1)", 1.0), ("clip(-c, 0, 1)", 0.0), ("a > b", 1.0), ("a < b", 0.0),
    ("0 <= a <= 1", 1.0), ("1e-3 * 1000", 1.0),
])
def test_values(formula, expected):
    assert evaluate(formula, V) == pytest.approx(expected)


def test_openai_example():
    assert evaluate("0.5 * function_name + 0.5 * arguments", {"function_name": 1.0, "arguments": 0.0}) == 0.5


@pytest.mark.parametrize("formula", [
    "a.__class__", "a.real", "().__class__.__bases__[0]", "__import__('os').system('true')", "open('/etc/passwd')",
    "eval('1')", "exec('x=1')", "getattr(a, 'real')", "(lambda: 1)()", "[a, b][0]", "{'x': 1}", "'text'",
    "a if b else c", "[x for x in (1, 2)]", "a and b", "not a", "a | b", "a & b", "a << 2", "~a",
    "min", "unknown + 1", "max(*[a, b])", "round(a)", "True + 1", "None", "a := 1", "x = 1", "sqrt(a, b)",
    "clip(a, 1)", "a in b", "a is b", "", "   ", "1 +", "f'{a}'", "b'x'", "1j",
])
def test_rejected(formula):
    with pytest.raises(FormulaError):
        parse(formula, V.keys())


@pytest.mark.parametrize("formula", [
    "2 ^ 2 ^ 2 ^ 2 ^ 2",  # 2 ** 65536: refused before computing
    "10 ^ 400", "c ^ 1e9", "exp(1000)", "a / 0", "a / (b - b)", "7 % 0", "sqrt(-1)", "log(0)", "log(-a)",
    "clip(a, 1, 0)", "9" * 5000,
])
def test_runtime_failures_are_formula_errors(formula):
    with pytest.raises(FormulaError):
        evaluate(formula, V)


def test_limits_on_size():
    with pytest.raises(FormulaError):
        parse("a + " * 1000 + "a", ["a"])
    with pytest.raises(FormulaError):
        parse("(" * 300 + "a" + ")" * 300, ["a"])


def test_never_uses_eval_or_exec(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("eval/exec must not be used")

    monkeypatch.setattr(builtins, "eval", forbidden)
    monkeypatch.setattr(builtins, "exec", forbidden)
    assert evaluate("max(a, b) ^ 2 + sqrt(c)", V) == pytest.approx(2.25)


def test_results_are_finite_floats():
    value = evaluate("floor(a * 10)", V)
    assert isinstance(value, float) and math.isfinite(value)
