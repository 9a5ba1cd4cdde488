"""Dependencies point one way: nothing under modelmill.ml imports modelmill.service or the CLI, and the\nAPI's client-side modules import neither."""

from __future__ import annotations

import ast
from pathlib import Path

ML = Path(__file__).resolve().parents[1] / "src" / "modelmill" / "ml"


def imported_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_ml_never_imports_service_or_cli():
    files = sorted(ML.rglob("*.py"))
    assert len(files) >= 5
    for path in files:
        bad = {m for m in imported_modules(path) if m.startswith(("modelmill.service", "modelmill.cli"))}
        assert not bad, f"{path.relative_to(ML.parent)} imports {bad}"


def test_api_clients_never_reach_into_the_service():
    """watch.py (jobs / eval runs followed over HTTP) and reports.py (what both sides show) are clients of
    the API: they read its objects, never the service's modules or store."""
    for name in ("watch.py", "reports.py", "progress.py", "local_server.py"):
        path = ML.parent / name
        bad = {m for m in imported_modules(path) if m.startswith(("modelmill.service", "modelmill.ml"))}
        assert not bad, f"{name} imports {bad}"


def test_the_dashboard_reads_through_the_store_and_tokenises_through_ml():
    """service/dashboard/ calls store and service functions (no SQL of its own) and counts tokens with
    ml/file_stats.py (no tokenizer library of its own)."""
    for path in sorted((ML.parent / "service" / "dashboard").glob("*.py")):
        bad = {m for m in imported_modules(path) if m.split(".")[0] in ("transformers", "tokenizers", "sqlite3",
                                                                         "psycopg")}
        assert not bad, f"{path.name} imports {bad}"
        assert ".execute(" not in path.read_text(), f"{path.name} runs SQL itself"


def test_errors_subclass_builtins():
    from modelmill import errors

    assert issubclass(errors.InvalidRequestError, ValueError)
    assert issubclass(errors.NotFoundError, LookupError)
    assert issubclass(errors.AuthenticationError, PermissionError)
    assert errors.NotFoundError("x").to_dict()["error"]["type"] == "invalid_request_error"
