"""Only adapters that the platform wrote are ever loaded or resumed.

Every adapter and checkpoint directory a job publishes is recorded in the store with the sha256 of
each of its files (record(), called when the worker is told of a checkpoint and when a job's final
adapter is saved). Before a directory is loaded (chat, evals, judges, a job continuing an ft: model)
or resumed (a job's own checkpoints: the trainer reads its optimizer and RNG state with
torch.load(weights_only=True)), verify() checks that it

- lies inside the platform's jobs directory (after resolving symlinks),
- holds its weights as adapter_model.safetensors (never pickle: .bin / .pt are not loaded),
- holds no symbolic link and no file that is not regular,
- has a manifest in the store, and
- still holds exactly the files of that manifest with the same hashes.

Anything else raises AdapterRefused with a message that says which rule failed. Hashing a
directory costs a few milliseconds per MB, so a directory that verified is not hashed again while
the (size, mtime, ctime, inode) of each of its files stay the same.
"""

from __future__ import annotations

import logging
import threading
import uuid
from pathlib import Path
from typing import Callable

from modelmill import errors
from modelmill.settings import Settings
from modelmill.service.store import Store
from modelmill.service.store.manifests import UnsafeDirectory, digest_dir

log = logging.getLogger(__name__)

ADAPTER_WEIGHTS = "adapter_model.safetensors"

_verified: dict[str, tuple] = {}  # resolved path -> stat signature of the files when they last verified
_lock = threading.Lock()


class AdapterRefused(errors.ModelMillError):
    """An adapter or checkpoint directory the platform did not write, or that changed since."""

    status = 500
    type = "server_error"
    code = "adapter_refused"


def record(store: Store, job_id: str, path: Path) -> None:
    """Record what the platform just wrote into `path` (an adapter or checkpoint directory)."""
    path = Path(path).resolve()
    store.manifests.record(path, job_id, digest_dir(path))
    with _lock:
        _verified[str(path)] = _signature(path)


def verify(store: Store, settings: Settings, path: Path, *, what: str) -> Path:
    """The resolved `path` if the platform wrote it and it is unchanged; AdapterRefused otherwise.
    `what` names the directory in the message (e.g. "the adapter of model ft:...")."""
    given = Path(path)
    try:
        resolved = given.resolve(strict=True)
    except (OSError, RuntimeError):
        raise AdapterRefused(f"Refusing to load {what}: its directory does not exist") from None
    root = settings.jobs_dir.resolve()
    if not resolved.is_dir() or not resolved.is_relative_to(root) or resolved == root:
        log.warning("refused %s: %s is not a directory under %s", what, resolved, root)
        raise AdapterRefused(f"Refusing to load {what}: it is not in ModelMill's own output directory")
    if not (resolved / ADAPTER_WEIGHTS).is_file():
        raise AdapterRefused(f"Refusing to load {what}: it has no {ADAPTER_WEIGHTS} (ModelMill loads safetensors only)")
    signature = _signature(resolved)
    with _lock:
        if _verified.get(str(resolved)) == signature:
            return resolved
    manifest = store.manifests.get(resolved)
    if manifest is None:
        log.warning("refused %s: no manifest recorded for %s", what, resolved)
        raise AdapterRefused(f"Refusing to load {what}: ModelMill has no record of writing it")
    try:
        current = digest_dir(resolved)
    except UnsafeDirectory as e:
        raise AdapterRefused(f"Refusing to load {what}: {e}") from None
    problem = _difference(manifest, current)
    if problem:
        log.warning("refused %s (%s): %s", what, resolved, problem)
        raise AdapterRefused(f"Refusing to load {what}: it changed after ModelMill wrote it ({problem})")
    with _lock:
        _verified[str(resolved)] = signature
    return resolved


def check_resumable(store: Store, settings: Settings, output_dir: Path, warn: Callable[[str], None]) -> None:
    """Before a job resumes: every complete checkpoint in its output directory must verify. One the
    store has no record of (a crash between publishing it and recording it, or a directory placed
    there by someone else) is moved aside to checkpoints/.refused-step-N-<random> and training resumes from
    an earlier one; one that changed since it was recorded raises AdapterRefused."""
    folder = Path(output_dir) / "checkpoints"
    if not folder.is_dir():
        return
    for ckpt in sorted(p for p in folder.glob("step-*") if p.is_dir() or p.is_symlink()):
        if store.manifests.get(ckpt) is None or ckpt.is_symlink():
            aside = folder / f".refused-{ckpt.name}-{uuid.uuid4().hex[:8]}"
            ckpt.rename(aside)
            warn(f"Checkpoint {ckpt.name} was not recorded by ModelMill; moved aside to {aside.name}"
                 " and not resumed from")
            continue
        verify(store, settings, ckpt, what=f"checkpoint {ckpt.name}")


def _difference(manifest: dict[str, str], current: dict[str, str]) -> str | None:
    """The first way `current` differs from `manifest`, in words, or None."""
    for rel in sorted(set(manifest) | set(current)):
        if rel not in current:
            return f"{rel} is missing"
        if rel not in manifest:
            return f"{rel} was added"
        if manifest[rel] != current[rel]:
            return f"{rel} was modified"
    return None


def _signature(path: Path) -> tuple:
    out = []
    for p in sorted(path.rglob("*")):
        try:
            st = p.lstat()
        except OSError:
            continue
        out.append((p.relative_to(path).as_posix(), st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino))
    return tuple(out)
