"""The run directory: what is a run, who may write it, and how a start or a resume finds it.

One training writes a run directory at a time: :class:`RunLock` holds an OS file lock
(``fcntl.flock`` on ``.lock``) for the whole training, so a second ``train`` on the same
directory (a resume, or an ``--overwrite`` that would delete it under the first) stops with a
clear error instead of mixing two runs. The kernel drops the lock when its process dies, so
a run killed with ``kill -9`` is never left locked.

``--overwrite`` replaces runs only: a directory that is not a resnetlab run (no run
``config.yaml``) is refused, and only the run's own entries are deleted; files of the user's
that sit beside them are left where they are.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from pathlib import Path
from typing import Any

from ..config import TrainConfig
from ..errors import TrainingError
from ..io import atomic_write_text

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
LOCK_FILE = ".lock"
# Settings that may change on --resume without changing the run's meaning.
RESUMABLE_CHANGES = {"epochs", "max_iters", "budget_s", "device", "output", "keep_last",
                     "save_every_steps", "eval_every", "threads", "compile",
                     "dist_timeout_s"}  # fmt: skip
# What a run directory holds before its first checkpoint.
SETUP_ENTRIES = (CONFIG_FILE, "data_scan.json", "tensorboard", "checkpoints", LOCK_FILE)
# Everything a training writes into its run directory (what --overwrite may delete).
RUN_ENTRIES = (*SETUP_ENTRIES, METRICS_FILE, SUMMARY_FILE, "report.md", "model.safetensors",
               "model.json", "curves.png", "confusion.png")  # fmt: skip


class RunLock:
    """An exclusive OS lock on ``run_dir/.lock`` while a training writes the directory."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise TrainingError(
                f"{self.path.parent} is being written by a training that is still running "
                f"(pid {holder}): wait for it to finish, stop it, or choose another --output"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def read_run_config(run_dir: Path) -> dict[str, Any] | None:
    """The saved config of the run in ``run_dir`` as a mapping; None if there is none."""
    import yaml

    path = run_dir / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        saved = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as e:
        raise TrainingError(f"cannot read {path}: {' '.join(str(e).split())}") from None
    if not isinstance(saved, dict) or "model" not in saved or "data" not in saved:
        return None
    return saved


def is_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` is a resnetlab run (it holds a run's ``config.yaml``)."""
    try:
        return run_dir.is_dir() and read_run_config(run_dir) is not None
    except TrainingError:  # an unreadable config.yaml: not something we may delete
        return False


def never_started(run_dir: Path) -> bool:
    """True if ``run_dir`` holds set-up files only (no checkpoint, metrics or weights)."""
    names = {p.name for p in run_dir.iterdir()} - {LOCK_FILE}
    if not names or not names <= set(SETUP_ENTRIES) or CONFIG_FILE not in names:
        return False
    return not any((run_dir / "checkpoints").glob("*.pt"))


def remove_entries(run_dir: Path, entries: tuple[str, ...]) -> None:
    for entry in entries:
        if entry == LOCK_FILE:
            continue  # held by this process
        path = run_dir / entry
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def finished_message(run_dir: Path, cfg: TrainConfig) -> str | None:
    """What to say when ``run_dir`` already finished the schedule of ``cfg``; None if not.

    A run is finished when its summary (written last) has reached ``cfg``'s length; a
    longer ``epochs``/``max_iters`` extends it, and a checkpoint beyond a stale summary (an
    extension killed during its final export) is finished by the resume instead.
    """
    try:
        summary = json.loads((run_dir / SUMMARY_FILE).read_text())
        steps, epochs = int(summary["steps"]), int(summary["epochs"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if cfg.budget_s is not None:
        # a budgeted run ends where its plan did; a larger budget extends it
        planned, budget = summary.get("planned_steps"), summary.get("budget_s")
        if not planned or steps < planned or budget is None or cfg.budget_s > budget:
            return None
    elif steps < (cfg.max_iters or 0) or (not cfg.max_iters and epochs < cfg.epochs):
        return None
    top1, split = summary.get("test_top1"), summary.get("eval_split") or "test"
    result = f", {split} top-1 {100 * top1:.2f}%" if isinstance(top1, (int, float)) else ""
    if cfg.budget_s is not None:
        longer = f"budget_s={2 * cfg.budget_s:g}"
    elif cfg.max_iters:
        longer = f"--max-iters {2 * steps}"
    else:
        longer = f"--epochs {2 * max(epochs, 1)} (or --max-iters {2 * steps})"
    return (
        f"{run_dir} is a finished run ({steps} steps{result}); its results are kept. To train "
        f"it longer, resume with a longer schedule: resnetlab train --resume {run_dir} "
        f"{longer}; to evaluate it: resnetlab eval {run_dir}"
    )


def write_config(path: Path, cfg: TrainConfig) -> None:
    import yaml

    text = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    try:
        atomic_write_text(path, text)
    except OSError as e:
        raise TrainingError(f"could not write {path}: {e.strerror or e}") from None


def config_diffs(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict) and key != "model_args":
            out += config_diffs(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def check_resumable(old: dict[str, Any], cfg: TrainConfig, where: str) -> None:
    """Refuse a resume whose settings change the run (anything but RESUMABLE_CHANGES)."""
    refused = [
        d
        for d in config_diffs(old, cfg.to_dict())
        if d.split(":")[0].split(".")[0] not in RESUMABLE_CHANGES
    ]
    if refused:
        raise TrainingError(
            f"--resume with settings that differ from {where}: "
            + "; ".join(refused)
            + ". Resume with the original settings (only "
            + ", ".join(sorted(RESUMABLE_CHANGES))
            + " may change), or start a new run with another --output"
        )


def check_output(output: str) -> Path:
    """The run directory named by ``output``; refuses an empty name or a file."""
    if not str(output).strip():
        raise TrainingError("output is empty: name a run directory, e.g. --output runs/my_run")
    run_dir = Path(output)
    if run_dir.exists() and not run_dir.is_dir():
        raise TrainingError(
            f"--output {run_dir} is a file, not a directory: choose another --output"
        )
    for parent in run_dir.parents:
        if parent.exists():
            if not parent.is_dir():
                raise TrainingError(f"--output {run_dir}: {parent} is a file, not a directory")
            break
    return run_dir


def open_run(cfg: TrainConfig, *, resume: bool, overwrite: bool) -> tuple[RunLock, bool]:
    """Take the run directory of ``cfg`` for one training: checked, locked and prepared.

    Returns the held lock and whether the run continues from a checkpoint (a resume of a run
    that was stopped before its first checkpoint starts it afresh). Nothing is created in a
    directory that is refused.
    """
    run_dir = check_output(cfg.output)
    if resume and read_run_config(run_dir) is None:
        raise TrainingError(f"nothing to resume in {run_dir}: no run {CONFIG_FILE} there")
    others = [p.name for p in run_dir.iterdir() if p.name != LOCK_FILE] if run_dir.exists() else []
    if not resume and others and not is_run(run_dir):
        raise TrainingError(
            f"{run_dir} is not empty and is not a resnetlab run ({len(others)} entries, e.g. "
            f"{', '.join(sorted(others)[:3])}): --overwrite replaces runs only; choose a new "
            "or empty --output"
        )
    lock = RunLock(run_dir)
    lock.acquire()
    try:
        return lock, _prepare(cfg, run_dir, resume=resume, overwrite=overwrite)
    except BaseException:
        lock.release()
        raise


def _prepare(cfg: TrainConfig, run_dir: Path, *, resume: bool, overwrite: bool) -> bool:
    saved_path = run_dir / CONFIG_FILE
    if resume:
        saved = read_run_config(run_dir)
        if saved is None:
            raise TrainingError(f"nothing to resume in {run_dir}: no run {CONFIG_FILE} there")
        check_resumable(saved, cfg, f"the run in {run_dir}")
        done = finished_message(run_dir, cfg)
        if done:
            raise TrainingError(done)  # and nothing of it is rewritten
        if not never_started(run_dir):
            return True  # (its config.yaml is rewritten once the resume is sure to train)
        remove_entries(run_dir, SETUP_ENTRIES)  # stopped before its first checkpoint: restart
        write_config(saved_path, cfg)
        return False
    if never_started(run_dir):
        # a start that failed (bad data, a missing file) or was killed before its first
        # checkpoint left only set-up files: nothing to lose, start again in place
        remove_entries(run_dir, SETUP_ENTRIES)
    if any(p.name != LOCK_FILE for p in run_dir.iterdir()):
        if not overwrite:
            raise TrainingError(
                f"{run_dir} already holds a run: pass --resume to continue it, --overwrite to "
                "replace it, or another --output"
            )
        remove_entries(
            run_dir, RUN_ENTRIES + tuple(p.name for p in run_dir.glob("confusion-*.png"))
        )
    write_config(saved_path, cfg)
    return False
