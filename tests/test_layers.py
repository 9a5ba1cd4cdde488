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
        bad = {m for m in imported_modules(path) if m.startswith(("modelmill.service", "modelmill.cli", "modelmill.commands"))}
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


def test_service_modules_live_in_resource_packages():
    """service/ holds packages only (docs/ARCHITECTURE.md, "Where things live"): a resource's code goes in
    its package (service/jobs/, service/chat/...), code every resource uses in service/core/."""
    service = ML.parent / "service"
    loose = sorted(p.name for p in service.glob("*.py") if p.name != "__init__.py")
    assert not loose, f"loose modules in service/: {loose}"
    for package in ("jobs", "models", "chat", "responses", "batches", "graders", "evals", "webhooks", "worker",
                    "core", "api", "schemas", "store", "dashboard"):
        assert (service / package / "__init__.py").is_file(), package


def test_service_packages_import_each_other_without_a_circle():
    """Between service/'s packages imports point one way (docs/ARCHITECTURE.md): api/, dashboard/ and worker/
    over the resource packages, over core/, over store/. A circle means a module sits in the wrong package."""
    service = ML.parent / "service"
    uses: dict[str, set[str]] = {}
    for path in service.rglob("*.py"):
        package = path.relative_to(service).parts[0]
        for module in imported_modules(path):
            parts = module.split(".")
            if parts[:2] == ["modelmill", "service"] and len(parts) > 2 and parts[2] != package:
                uses.setdefault(package, set()).add(parts[2])

    def below(package: str) -> set[str]:
        seen, todo = set(), [package]
        while todo:
            for used in uses.get(todo.pop(), ()):
                if used not in seen:
                    seen.add(used)
                    todo.append(used)
        return seen

    circles = sorted({tuple(sorted((a, b))) for a in uses for b in uses[a] if a in below(b)})
    assert not circles, f"service packages that import each other: {circles}"
    assert "store" not in uses, f"store/ is the bottom of the service but imports {uses.get('store')}"
