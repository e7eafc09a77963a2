"""Training checkpoints: atomic writes, the last N kept plus the best, safe reading.

A checkpoint is a dict of tensors and plain containers (no pickled objects), so it loads
with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from ..models.weights import WeightsError, _atomic_write, _safe_torch_load

CKPT_RE = re.compile(r"^ckpt-(\d{8})\.pt$")
BEST = "best.pt"


class CheckpointError(RuntimeError):
    """A checkpoint could not be written (disk full, read-only) or read."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(state: dict[str, Any], directory: Path, step: int, *, keep_last: int) -> Path:
    """Write ``state`` as ``ckpt-<step>.pt`` atomically, then prune to the last ``keep_last``.

    The file appears under its final name only once complete and synced; a crash or a
    full disk while writing leaves the previous checkpoints as they were.
    """
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"ckpt-{step:08d}.pt"
    try:
        _atomic_write(path, lambda tmp: torch.save(state, tmp))
        _fsync_dir(directory)
    except OSError as e:
        raise CheckpointError(
            f"could not write checkpoint {path}: {e.strerror or e}. The previous checkpoint "
            f"is intact; free space or fix permissions, then resume with --resume"
        ) from e
    for old in list_checkpoints(directory)[:-keep_last]:
        old.unlink(missing_ok=True)
    return path


def save_best(state: dict[str, Any], directory: Path) -> None:
    try:
        _atomic_write(directory / BEST, lambda tmp: torch.save(state, tmp))
    except OSError as e:
        raise CheckpointError(f"could not write {directory / BEST}: {e.strerror or e}") from e


def list_checkpoints(directory: Path) -> list[Path]:
    """Step checkpoints in ``directory``, oldest first."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if CKPT_RE.match(p.name))


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        state = _safe_torch_load(path)
    except WeightsError as e:
        raise CheckpointError(str(e)) from None
    if not isinstance(state, dict) or "model" not in state or "step" not in state:
        raise CheckpointError(f"{path} is not a resnetlab training checkpoint")
    return state


def load_latest(directory: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that reads; unreadable newer ones are reported and skipped."""
    for path in reversed(list_checkpoints(directory)):
        try:
            return path, load_checkpoint(path)
        except CheckpointError as e:
            warnings.warn(f"skipping unreadable checkpoint {path.name}: {e}", stacklevel=2)
    return None
