"""Checks on a python grader's source for the API, before anything runs: size, compiles, and
defines grade(sample, item) at module level."""

from __future__ import annotations

import ast

from modelmill import errors

from .config import MAX_CODE_BYTES


def check_source(source: str, max_code_bytes: int = MAX_CODE_BYTES) -> None:
    """Validate a python grader's source for the API: at most max_code_bytes of UTF-8, compiles, and
    defines grade(sample, item) at module level. Raises errors.InvalidRequestError(param="grader.source")."""
    def bad(message: str) -> errors.InvalidRequestError:
        return errors.InvalidRequestError(message, param="grader.source", code="invalid_value")

    if not isinstance(source, str):
        raise bad("grader.source must be a string of Python code")
    size = len(source.encode("utf-8", "surrogatepass"))
    if size > max_code_bytes:
        raise bad(f"grader.source is {size} bytes; the limit is {max_code_bytes} bytes")
    try:
        tree = ast.parse(source, filename="<grader>")
        compile(tree, "<grader>", "exec")
    except SyntaxError as e:
        raise bad(f"grader.source does not compile: {e.msg} (line {e.lineno})") from None
    except (ValueError, RecursionError, MemoryError) as e:  # null bytes, absurd nesting
        raise bad(f"grader.source does not compile: {e}") from None
    grade = _module_level_grade(tree)
    if grade is None:
        raise bad("grader.source must define a function grade(sample, item) at module level")
    if isinstance(grade, (ast.FunctionDef, ast.AsyncFunctionDef)):
        if isinstance(grade, ast.AsyncFunctionDef):
            raise bad("grade must be a plain function, not async def")
        args = grade.args
        positional = len(args.posonlyargs) + len(args.args)
        required_kwonly = [a for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is None]
        if (positional < 2 and args.vararg is None) or required_kwonly or \
                positional - len(args.defaults) > 2:
            raise bad("grade must accept two positional arguments: grade(sample, item)")


def _module_level_grade(tree: ast.Module):
    """The last module-level statement binding the name `grade` (def, assignment, import), or None."""
    found = None
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == "grade":
            found = node
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if any(isinstance(n, ast.Name) and n.id == "grade" for n in ast.walk(target)):
                    found = node
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                if (alias.asname or alias.name.split(".")[0]) == "grade":
                    found = node
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            inner = _module_level_grade(ast.Module(body=[n for n in ast.iter_child_nodes(node)
                                                         if isinstance(n, ast.stmt)], type_ignores=[]))
            if inner is not None:
                found = inner
    return found
