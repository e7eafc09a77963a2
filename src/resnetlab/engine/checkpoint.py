"""Training checkpoints: atomic writes, the last N kept plus the best, safe reading.

A checkpoint is a dict of tensors and plain containers (no pickled objects), so it loads
with ``torch.load(weights_only=True)``; a file that asks for anything else is refused, never
loaded unsafely.

Crash safety: a checkpoint is written through :func:`resnetlab.io.atomic_write`: to a
temporary file in the same directory, flushed and fsynced, renamed to its final name, and
the directory is fsynced. A crash (or SIGKILL, or a full disk) at any moment leaves either
the complete new file or none, plus perhaps a stray ``.ckpt-*.tmp`` that
:func:`remove_stale_temps` clears.

Integrity: a checkpoint holds the sha256 of its content (``sha256``), checked on loading,
and its structure (the keys a resume needs, and their types) is checked too. If the newest
checkpoint is unreadable anyway (a copy cut short, flipped bytes, a FIFO in its place),
:func:`load_latest` reports it and takes the one before. Checkpoints written before
checksums existed load without the check.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import torch

from ..errors import ResnetlabError
from ..io import StorageError, atomic_write
from ..models.weights import (
    WeightsError,
    safe_torch_load,
    verify_checksum,
    with_checksum,
)

CKPT_RE = re.compile(r"^ckpt-(\d{8})\.pt$")
# The temporary files of resnetlab.io.atomic_write: ".<name>.<random>.tmp".
TEMP_RE = re.compile(r"^\.(ckpt-\d{8}|best)\.pt\..*\.tmp$")
BEST = "best.pt"
# What a training checkpoint must hold to continue a run, and of which type.
REQUIRED_KEYS = ("model", "optimizer", "scheduler", "step", "epoch", "batch", "rng")
_REQUIRED_TYPES = {"model": dict, "optimizer": dict, "scheduler": dict, "step": int,
                   "epoch": int, "batch": int, "rng": dict}  # fmt: skip
# Optional keys: None or a value of this type.
_OPTIONAL_TYPES = {"ema": dict, "scaler": dict, "best": (int, float), "epoch_sums": dict,
                   "config": dict, "model_meta": dict, "timing": dict}  # fmt: skip


class CheckpointError(ResnetlabError, RuntimeError):
    """A checkpoint could not be written (disk full, read-only) or read."""


def _write_state(state: dict[str, Any], tmp: str) -> None:
    # Through a Python file object: a failed write (ENOSPC, EIO) then surfaces as the OSError
    # it is; torch.save given a path reports it as an opaque RuntimeError from its C++ writer.
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()


def _save(state: dict[str, Any], path: Path) -> None:
    state = with_checksum(state)
    try:
        atomic_write(path, lambda tmp: _write_state(state, tmp))
    except StorageError as e:
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


def _type_name(types: Any) -> str:
    names = {dict: "a dict", int: "an integer", float: "a number"}
    types = types if isinstance(types, tuple) else (types,)
    return " or ".join(dict.fromkeys(names[t] for t in types))


def _check_structure(state: Any, path: Path, *, for_resume: bool) -> None:
    if not isinstance(state, dict):
        raise CheckpointError(
            f"{path} is not a resnetlab training checkpoint: it holds a {type(state).__name__}"
        )
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(
            f"{path} is not a complete resnetlab training checkpoint: it lacks {', '.join(missing)}"
        )
    for key, types in (*_REQUIRED_TYPES.items(), *_OPTIONAL_TYPES.items()):
        value = state.get(key)
        if value is None and key in _OPTIONAL_TYPES:
            continue
        if not isinstance(value, types) or isinstance(value, bool):
            raise CheckpointError(
                f"{path} is damaged: its {key!r} is a {type(value).__name__}, expected "
                f"{_type_name(types)}"
            )
    for key in ("step", "epoch", "batch"):
        if state[key] < 0:
            raise CheckpointError(f"{path} is damaged: its {key!r} is {state[key]} (< 0)")
    bad = [k for k, v in state["model"].items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path} is damaged: its model entry {bad[0]!r} is not a tensor")
    if for_resume:
        _check_rng(state["rng"], path)


def _check_rng(rng: dict[str, Any], path: Path) -> None:
    """The random-number states a resume restores (see engine.state.rng_state)."""
    torch_state, np_state, py_state = (rng.get(k) for k in ("torch", "numpy", "python"))
    if not (isinstance(torch_state, torch.Tensor) and torch_state.dtype == torch.uint8):
        problem = "torch's state is missing or not a byte tensor"
    elif not (
        isinstance(np_state, (list, tuple))
        and len(np_state) == 5
        and isinstance(np_state[1], torch.Tensor)
    ):
        problem = "numpy's state is missing or malformed"
    elif not (
        isinstance(py_state, (list, tuple))
        and len(py_state) == 3
        and isinstance(py_state[1], (list, tuple))
    ):
        problem = "python's state is missing or malformed"
    else:
        return
    raise CheckpointError(
        f"{path} cannot continue a run: its random-number state is damaged ({problem})"
    )


def load_checkpoint(path: Path, *, for_resume: bool = False) -> dict[str, Any]:
    """Read a checkpoint: only a regular file, with weights_only=True, checksum verified,
    its structure (the keys a resume needs, and their types) checked.

    ``for_resume`` also checks the random-number states that a resume restores. Returns
    the state as it was saved (without the checksum); anything wrong is a CheckpointError.
    """
    path = Path(path)
    try:
        state = verify_checksum(safe_torch_load(path), path)
    except WeightsError as e:
        raise CheckpointError(str(e)) from None
    _check_structure(state, path, for_resume=for_resume)
    return state


def load_latest(directory: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that reads and can continue a run; unreadable newer ones
    (damaged, or not regular files) are reported and skipped."""
    for path in reversed(list_checkpoints(directory)):
        try:
            return path, load_checkpoint(path, for_resume=True)
        except CheckpointError as e:
            warnings.warn(f"skipping unreadable checkpoint {path.name}: {e}", stacklevel=2)
    return None
