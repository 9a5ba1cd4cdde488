"""The code stays readable top to bottom (docs/ARCHITECTURE.md, Style 1): no module under src/ over 500
lines, and no function over 60 lines unless a `# long: <why>` comment says why, on the line above the
def or between the def and its first statement."""

from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "modelmill"
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60
LONG = re.compile(r"#\s*long:\s*\S")


def python_files() -> list[Path]:
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 50, f"found only {len(files)} modules under {SRC}"
    return files


def long_functions(path: Path) -> list[str]:
    """'name (N lines, line L)' for each function of `path` over MAX_FUNCTION_LINES without a `# long:` reason."""
    source = path.read_text()
    lines = source.splitlines()
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        start = min([node.lineno] + [d.lineno for d in node.decorator_list])
        n = node.end_lineno - start + 1
        if n <= MAX_FUNCTION_LINES:
            continue
        body = node.body
        has_doc = isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
            and isinstance(body[0].value.value, str)
        first = body[1] if has_doc and len(body) > 1 else body[0]
        header = lines[max(start - 2, 0):first.lineno - 1]  # the line above, the def, its docstring
        if not any(LONG.search(line) for line in header):
            found.append(f"{node.name} ({n} lines, line {node.lineno})")
    return found


def test_no_module_over_500_lines():
    over = {str(p.relative_to(SRC)): n for p in python_files() if (n := len(p.read_text().splitlines()))
            > MAX_MODULE_LINES}
    assert not over, f"modules over {MAX_MODULE_LINES} lines (split them at a seam): {over}"


def test_no_function_over_60_lines_without_a_reason():
    over = {str(p.relative_to(SRC)): found for p in python_files() if (found := long_functions(p))}
    assert not over, (f"functions over {MAX_FUNCTION_LINES} lines (split them, or say why in a `# long: ...` "
                      f"comment above the def or before its first statement): {over}")


def test_the_checker_sees_a_long_function_and_its_reason(tmp_path):
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES))
    plain = tmp_path / "plain.py"
    plain.write_text(f"def f():\n{body}")
    assert long_functions(plain) == [f"f ({MAX_FUNCTION_LINES + 1} lines, line 1)"]
    reasoned = tmp_path / "reasoned.py"
    reasoned.write_text(f'def f():\n    """Doc."""\n    # long: one table of steps reads best in one place\n{body}')
    assert long_functions(reasoned) == []


def test_modelmill_settings_are_read_only_in_settings():
    """MODELMILL_* variables are read in settings.py (Settings, ClientSettings) and passed down, never
    looked up where they are used."""
    read = re.compile(r"""(environ\.get\(|environ\[|getenv\()\s*["']MODELMILL_""")
    found = [f"{p.relative_to(SRC)}:{i}" for p in python_files() if p.name != "settings.py"
             for i, line in enumerate(p.read_text().splitlines(), 1) if read.search(line)]
    assert not found, f"MODELMILL_* read outside settings.py: {found}"


def test_nothing_outside_tests_imports_tests():
    """Tools, benches and examples share code through tools/ (or src/), never through tests/."""
    repo = SRC.parents[1]
    found = []
    for folder in ("src", "tools", "bench", "examples"):
        for path in sorted((repo / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
                found += [f"{path.relative_to(repo)} imports {n}" for n in names
                          if n == "tests" or n.startswith("tests.")]
    assert not found, found
