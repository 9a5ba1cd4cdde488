"""Reading tracker runs back in tests: a W&B offline run's records and an MLflow run's data.

wandb 0.31 no longer ships a Python reader for its run files (.wandb), so this reads them by hand:
the file is a LevelDB-style log (wandb's "datastore": a 7-byte header ':W&B', magic 0xBEE1, version;
then 32 KiB blocks of records, each a 7-byte header of CRC-32 over type + data, length and type
FULL/FIRST/MIDDLE/LAST) whose payloads are wandb's own protobuf Records. Every record's CRC is
checked, so a format change fails loudly instead of reading garbage.
"""

from __future__ import annotations

import json
import struct
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

BLOCK = 32 * 1024
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def wandb_records(path: Path):
    """The protobuf Records of one .wandb file, in order."""
    from wandb.proto import wandb_internal_pb2 as pb

    buf = Path(path).read_bytes()
    ident, magic, _version = struct.unpack("<4sHB", buf[:HEADER])
    assert ident == b":W&B" and magic == 0xBEE1, f"{path} is not a W&B run file"
    pos, pending = HEADER, b""
    while pos + HEADER <= len(buf):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # a block's tail too short for a header is zero padding
            pos += left
            continue
        crc, length, kind = struct.unpack("<IHB", buf[pos:pos + HEADER])
        if kind == 0 and length == 0:
            break
        data = buf[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        assert zlib.crc32(data, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF == crc, f"bad record CRC in {path}"
        if kind in (FULL, FIRST):
            pending = data
        elif kind in (MIDDLE, LAST):
            pending += data
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(pending)
            yield record


@dataclass
class WandbRun:
    run_id: str = ""
    project: str = ""
    name: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    history: dict[int, dict] = field(default_factory=dict)  # step -> logged values
    summary: dict = field(default_factory=dict)
    exit_code: int | None = None


def read_wandb_run(run_file: Path, timeout: float = 30.0) -> WandbRun:
    """The run as its file holds it once its exit record is there. wandb-core (a separate process) writes an
    offline run's records some time after `run.finish()` returns: seen here with only the file's 7-byte
    header on disk right after finish, and every record a moment later, when the machine was busy."""
    deadline = time.monotonic() + timeout
    run = _read_wandb_run(run_file)
    while run.exit_code is None and time.monotonic() < deadline:
        time.sleep(0.2)
        run = _read_wandb_run(run_file)
    return run


def _read_wandb_run(run_file: Path) -> WandbRun:
    run = WandbRun()
    for r in wandb_records(run_file):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            run.run_id, run.project, run.name = r.run.run_id, r.run.project, r.run.display_name
            run.tags = list(r.run.tags)
            run.config.update(_items(r.run.config.update))
        elif kind == "config":
            run.config.update(_items(r.config.update))
        elif kind == "history":
            values = {k: v for k, v in _items(r.history.item).items() if not k.startswith("_")}
            run.history.setdefault(r.history.step.num, {}).update(values)
        elif kind == "summary":
            run.summary.update(_items(r.summary.update))
        elif kind == "exit":
            run.exit_code = r.exit.exit_code
    return run


def _items(items) -> dict:
    """key -> value of a record's items; a key is in `key` or, as wandb-core writes it, `nested_key`."""
    return {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in items if i.key or i.nested_key}


def wandb_run_files(wandb_dir: Path, run_id: str) -> list[Path]:
    """The run files of a run id under WANDB_DIR, oldest first (a resumed run has one per attempt)."""
    return sorted(Path(wandb_dir).glob(f"wandb/offline-run-*-{run_id}/run-{run_id}.wandb"))
