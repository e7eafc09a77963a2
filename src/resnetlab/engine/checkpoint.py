"""Training checkpoints: atomic writes, the last N kept plus the best, safe reading.

A checkpoint is a dict of tensors and plain containers (no pickled objects), so it loads
with ``torch.load(weights_only=True)``; a file that asks for anything else is refused, never
loaded unsafely.

Crash safety: a checkpoint is written to a temporary file in the same directory, flushed and
fsynced, renamed to its final name, and the directory is fsynced. A crash (or SIGKILL, or a
full disk) at any moment leaves either the complete new file or none, plus perhaps a stray
``.ckpt-*.tmp`` that :func:`remove_stale_temps` clears. If a newest checkpoint is unreadable
anyway (a copy cut short, a disk error), :func:`load_latest` reports it and takes the one
before.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from ..errors import ResnetlabError
from ..models.weights import WeightsError, atomic_write, safe_torch_load

CKPT_RE = re.compile(r"^ckpt-(\d{8})\.pt$")
TEMP_RE = re.compile(r"^\.(ckpt-\d{8}|best)\.pt\..*\.tmp$")
BEST = "best.pt"
# What a training checkpoint must hold to continue a run.
REQUIRED_KEYS = ("model", "optimizer", "scheduler", "step", "epoch", "batch", "rng")


class CheckpointError(ResnetlabError, RuntimeError):
    """A checkpoint could not be written (disk full, read-only) or read."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_state(state: dict[str, Any], tmp: str) -> None:
    # Through a Python file object: a failed write (ENOSPC, EIO) then surfaces as the OSError
    # it is; torch.save given a path reports it as an opaque RuntimeError from its C++ writer.
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())


def _save(state: dict[str, Any], path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: _write_state(state, tmp))
        _fsync_dir(path.parent)
    except OSError as e:
        raise CheckpointError(
            f"could not write checkpoint {path}: {e.strerror or e}. The previous checkpoints "
            "are intact; free space or fix permissions, then continue with --resume"
        ) from e


def save_checkpoint(state: dict[str, Any], directory: Path, step: int, *, keep_last: int) -> Path:
    """Write ``state`` as ``ckpt-<step>.pt`` atomically, then prune to the last ``keep_last``.

    The file appears under its final name only once complete and synced; a crash or a
    full disk while writing leaves the previous checkpoints as they were.
    """
    path = directory / f"ckpt-{step:08d}.pt"
    _save(state, path)
    for old in list_checkpoints(directory)[:-keep_last]:
        old.unlink(missing_ok=True)
    return path


def save_best(state: dict[str, Any], directory: Path) -> None:
    """Write ``state`` as ``best.pt`` (atomically), beside the last N step checkpoints."""
    _save(state, directory / BEST)


def remove_stale_temps(directory: Path) -> list[Path]:
    """Delete temporary files left by a save that a crash interrupted; returns them."""
    if not directory.is_dir():
        return []
    stale = [p for p in directory.iterdir() if TEMP_RE.match(p.name)]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def list_checkpoints(directory: Path) -> list[Path]:
    """Step checkpoints in ``directory``, oldest first."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if CKPT_RE.match(p.name))


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        state = safe_torch_load(path)
    except WeightsError as e:
        raise CheckpointError(str(e)) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a resnetlab training checkpoint")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(
            f"{path} is not a complete resnetlab training checkpoint: it lacks {', '.join(missing)}"
        )
    return state


def load_latest(directory: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that reads; unreadable newer ones are reported and skipped."""
    for path in reversed(list_checkpoints(directory)):
        try:
            return path, load_checkpoint(path)
        except CheckpointError as e:
            warnings.warn(f"skipping unreadable checkpoint {path.name}: {e}", stacklevel=2)
    return None
