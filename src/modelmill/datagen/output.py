"""Writing datasets: every line validated, written to a temporary file, renamed when complete.

A run that fails part way leaves no file at the output path (never a partial one passed off as
complete): the lines go to `OUT.partial-<pid>` next to it, renamed over OUT only at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
from collections.abc import Iterator
from pathlib import Path

from modelmill.errors import InvalidRequestError
from modelmill.ml.data.methods import validate_supervised_line


class OutputError(InvalidRequestError):
    """A line we produced failed validation: a bug or a bad input, never written."""

    code = "invalid_output_line"


@contextlib.contextmanager
def atomic_jsonl(path: Path) -> Iterator:
    """Yields `write(obj)`; OUT appears only when the block ends without an exception."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.partial-{os.getpid()}")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            yield lambda obj: f.write(json.dumps(obj, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def check_sft_line(obj: dict, what: str) -> None:
    """ModelMill's own training-file validator (ml.data), on one line before it is written."""
    _, problems = validate_supervised_line(obj, 1)
    if problems:
        p = problems[0]
        raise OutputError(f"{what}: not a valid training line: {p.field or 'line'}: {p.message}", param=p.field)


def write_lines(path: Path, lines: list[dict]) -> None:
    with atomic_jsonl(path) as write:
        for obj in lines:
            write(obj)


def split_groups(groups: dict[str, list], rng: random.Random, test_size: int, valid_size: int
                 ) -> tuple[list, list, list]:
    """(train, valid, test) rows from {group key: rows}: keys sorted then shuffled with `rng`, and
    whole groups fill test up to `test_size` rows, then valid up to `valid_size`, then train.
    examples/smart_home/generate.py and `data synth --split` both split this way."""
    keys = sorted(groups)
    rng.shuffle(keys)
    test: list = []
    valid: list = []
    train: list = []
    for key in keys:  # whole argument combinations go to one split only
        split = test if len(test) < test_size else valid if len(valid) < valid_size else train
        split.extend(groups[key])
    return train, valid, test


def split_paths(out: Path) -> dict[str, Path]:
    """Where --split writes: OUT.jsonl -> OUT.train.jsonl ...; a directory -> DIR/train.jsonl ..."""
    if out.suffix == ".jsonl":
        return {s: out.with_name(f"{out.stem}.{s}.jsonl") for s in ("train", "valid", "test")}
    return {s: out / f"{s}.jsonl" for s in ("train", "valid", "test")}
