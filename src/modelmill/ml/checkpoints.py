"""The checkpoint layout on disk, shared by every training method, and its atomic writes.

Output directory layout (the same for every method):
    output_dir/.staging/        the trainer writes checkpoint-<N> here; anything left here is
                                half-written and is deleted at start
    output_dir/checkpoints/step-<N>/   complete checkpoints (renamed from .staging): a PEFT adapter
                                dir (adapter_model.safetensors + adapter_config.json) plus the
                                optimizer, scheduler, RNG and trainer_state.json to resume from
    output_dir/adapter/         the final adapter, present once the run succeeded (written as
                                .adapter-<random> first, then renamed)

Every directory appears by rename, so a crash leaves either the old state or the new, never half of
one; disk_full / disk_full_error turn a full disk into one clear TrainingError.
"""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from pathlib import Path

from modelmill.errors import TrainingError
from modelmill.faults import crash_point

# The PEFT adapter a run trains (PEFT's default name). TRL's DPOTrainer may add a frozen "ref"
# copy next to it; only this one is ever saved as the run's result.
TRAINED_ADAPTER = "default"
# What PEFT's save_pretrained writes for one adapter (safetensors only): the final adapter's files.
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json", "README.md")

# Below this much free space on the output filesystem, a failed write is taken as "disk full":
# torch.save reports ENOSPC as a bare RuntimeError ("file write failed") with no errno to test.
DISK_FULL_FREE_BYTES = 1 << 20
_DISK_FULL_TEXT = ("no space left on device", "storagefull", "disk quota exceeded")


def disk_full(exc: BaseException, output_dir: Path) -> bool:
    """True when `exc` (or an exception it chains) is ENOSPC/EDQUOT, or the output filesystem is
    (nearly) full after the failure."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(text in str(seen).lower() for text in _DISK_FULL_TEXT):
            return True
        seen = seen.__cause__ or seen.__context__
    try:
        return shutil.disk_usage(output_dir).free < DISK_FULL_FREE_BYTES
    except OSError:
        return False


def disk_full_error(output_dir: Path, during: str) -> TrainingError:
    """Free the half-written save and say what is left: the checkpoints before it are complete
    (each was published by rename), so the newest one stays usable."""
    shutil.rmtree(output_dir / ".staging", ignore_errors=True)
    for tmp in output_dir.glob(".adapter-*"):
        shutil.rmtree(tmp, ignore_errors=True)
    done = checkpoints(output_dir)
    kept = (f"The checkpoints saved before it are intact; the newest is step {step_of(done[-1])}."
            if done else "No checkpoint had been saved yet.")
    return TrainingError(f"No space left on device while {during}: the job's output disk is full. {kept} "
                         "Free some space and start a new job.", code="disk_full")


def prepare_output_dir(output_dir: Path) -> Path | None:
    """Delete half-written state and return the newest complete checkpoint, if any.

    .staging only ever holds unfinished work. A step-<N> dir is complete by construction
    (created by rename), but one missing its adapter or trainer state is removed too.
    """
    shutil.rmtree(output_dir / ".staging", ignore_errors=True)
    leftovers = [*output_dir.glob(".adapter-*"), *output_dir.glob(".old-*"), *output_dir.glob("checkpoints/.old-*")]
    for tmp in leftovers:  # an unfinished adapter save, or a replaced dir not yet deleted
        shutil.rmtree(tmp, ignore_errors=True)
    (output_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    for path in checkpoints(output_dir):
        if not ((path / "trainer_state.json").is_file() and (path / "adapter_model.safetensors").is_file()):
            shutil.rmtree(path, ignore_errors=True)
    done = checkpoints(output_dir)
    return done[-1] if done else None


def checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints (step-<N> dirs, only ever created by rename), oldest first."""
    found = [p for p in (output_dir / "checkpoints").glob("step-*")
             if p.is_dir() and p.name.removeprefix("step-").isdigit()]
    return sorted(found, key=step_of)


def step_of(checkpoint: Path) -> int:
    return int(checkpoint.name.removeprefix("step-"))


def publish_checkpoint(output_dir: Path, step: int, keep: int, protect: tuple[int, ...] = ()) -> Path:
    """Rename the trainer's finished .staging/checkpoint-<step> to checkpoints/step-<step>; prune old ones.

    The newest `keep` are kept, plus the steps in `protect` (RFT keeps its best-validated checkpoint).
    """
    src = output_dir / ".staging" / f"checkpoint-{step}"
    dst = output_dir / "checkpoints" / f"step-{step}"
    crash_point("checkpoint_publish")  # staged in full, not yet published
    rename_over(src, dst)
    for old in checkpoints(output_dir)[:-keep] if keep > 0 else []:
        if step_of(old) not in protect:
            shutil.rmtree(old, ignore_errors=True)
    return dst


def copy_adapter_atomically(checkpoint: Path, output_dir: Path) -> Path:
    """output_dir/adapter from a published checkpoint's adapter files (what save_pretrained wrote there)."""
    tmp = output_dir / f".adapter-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    for name in ADAPTER_FILES:
        if (checkpoint / name).is_file():
            shutil.copy2(checkpoint / name, tmp / name)
    final = output_dir / "adapter"
    crash_point("adapter_publish")
    rename_over(tmp, final)
    return final


def save_adapter_atomically(model, output_dir: Path) -> Path:
    """Save the trained adapter alone (never DPO's frozen "ref" copy) to output_dir/adapter."""
    tmp = output_dir / f".adapter-{uuid.uuid4().hex[:8]}"
    model.save_pretrained(tmp, safe_serialization=True, selected_adapters=[TRAINED_ADAPTER])
    final = output_dir / "adapter"
    crash_point("adapter_publish")  # written in full, not yet renamed into place
    rename_over(tmp, final)
    return final


def rename_over(src: Path, dst: Path) -> None:
    """Atomically put src at dst; an existing dst (same step written again) is moved aside first."""
    if dst.exists():
        aside = dst.with_name(f".old-{dst.name}-{uuid.uuid4().hex[:8]}")
        os.rename(dst, aside)
        shutil.rmtree(aside, ignore_errors=True)
    os.rename(src, dst)
