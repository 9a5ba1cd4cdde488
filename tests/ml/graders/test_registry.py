"""The grader registry: every type registers grade, validate and wire model from its own module, the
package has no import circle, and the wire models agree with the hand-written checks."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from pydantic import TypeAdapter, ValidationError

from modelmill.ml import graders
from modelmill.ml.graders import GRADERS, validate_grader, wire_union

from .test_validate import CHECK, LABEL, PY, SCORE, SIM

PACKAGE = "modelmill.ml.graders"
ROOT = Path(graders.__file__).parent
BUILT_INS = ("string_check", "text_similarity", "python", "score_model", "label_model", "multi",
             "relative_score_model")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join((PACKAGE, *parts))


def _imports(path: Path, modules: set[str]) -> set[str]:
    """Every modelmill.ml.graders module `path` imports, at module level or inside a function (an
    import inside a function that closes a circle is still a circle). `from . import x` imports
    the submodule x, not the package's __init__ (which Python has already started)."""
    here = _module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            module = (f"{base}.{node.module}" if node.module else base) if node.level else node.module or ""
            subs = {f"{module}.{a.name}" for a in node.names}
            found |= subs & modules if subs <= modules else subs & modules | {module}
    return {m for m in found if m.startswith(PACKAGE)}


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    return {name: _imports(path, set(modules)) & set(modules) - {name} for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_graders_package_has_no_import_circle():
    graph = _graph()
    assert f"{PACKAGE}.engine" in graph and f"{PACKAGE}.validate" in graph
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_the_engine_validate_and_registry_import_no_grader_type():
    graph = _graph()
    types = {f"{PACKAGE}.{m}" for m in ("string_check", "text_similarity", "python_grader", "model_graders", "multi")}
    for core in ("engine", "validate", "registry", "checks"):
        assert not graph[f"{PACKAGE}.{core}"] & types, core


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_every_built_in_registers_grade_validate_and_model():
    for name in BUILT_INS:
        entry = GRADERS[name]
        assert callable(entry.grade) and callable(entry.validate) and entry.model is not None, name
        assert entry.model.model_fields["type"].annotation.__args__ == (name,)
        # all three in the type's own module
        assert entry.grade.__module__ == entry.validate.__module__ == entry.model.__module__, name


MULTI = {"type": "multi", "name": "mm", "graders": {"a": CHECK, "b": SIM, "p": PY, "s": SCORE, "l": LABEL},
         "calculate_output": "a + b + p + s + l"}


@pytest.mark.parametrize("grader", [CHECK, SIM, PY, SCORE, LABEL, MULTI, dict(MULTI, graders=CHECK,
                                                                                calculate_output="c")])
def test_the_wire_union_accepts_what_validate_accepts(grader):
    checked = validate_grader(grader)
    parsed = TypeAdapter(wire_union()).validate_python(checked)
    assert parsed.type == grader["type"]
    assert parsed.model_dump(exclude_unset=True) == checked


def test_the_wire_union_refuses_unknown_fields_and_nested_multi():
    union = TypeAdapter(wire_union())
    with pytest.raises(ValidationError):
        union.validate_python(CHECK | {"pass_treshold": 1})
    with pytest.raises(ValidationError):
        union.validate_python(dict(MULTI, graders={"m": MULTI}))


def test_wire_union_exclude():
    schema = TypeAdapter(wire_union(exclude=("label_model",))).json_schema()
    assert set(schema["discriminator"]["mapping"]) == set(BUILT_INS) - {"label_model"}


@pytest.mark.parametrize("kind", [["string_check"], {"a": 1}, None, 3])
def test_a_type_that_is_not_a_string_is_a_400_on_type(kind):
    from modelmill import errors

    with pytest.raises(errors.InvalidRequestError) as e:
        validate_grader(CHECK | {"type": kind})
    assert e.value.param == "grader.type"
