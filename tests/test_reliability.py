"""Nothing lost: kill -9 and resume, crashes while saving, corrupt and hostile checkpoints,
a full disk. Every run here is the same tiny job, so each can be compared bit for bit with
one uninterrupted run.
"""

import errno
import json
import os
import pickle
import random
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from resnetlab import cli
from resnetlab.engine import TrainingError, train
from resnetlab.engine import checkpoint as ckpt
from resnetlab.engine.checkpoint import (
    CheckpointError,
    list_checkpoints,
    load_checkpoint,
    load_latest,
    save_checkpoint,
)
from resnetlab.engine.trainer import rng_state, set_rng_state

# Every source of randomness of the trainer is on: augmentation, random erasing, mixup/cutmix
# (global torch RNG), stochastic depth, EMA, a warm-up + cosine schedule of the total length.
STEPS_PER_EPOCH, EPOCHS = 8, 3
JOB = {
    "model": "resnet20",
    "model_args": {"depth": 8, "drop_path_rate": 0.1},
    "data": {"spec": "synthetic:n=256,test=64,size=16,classes=4", "batch_size": 32,
             "random_erasing": 0.25},
    "optim": {"lr": 0.05},
    "schedule": {"name": "cosine", "warmup_epochs": 0.5},
    "epochs": EPOCHS, "seed": 7, "label_smoothing": 0.1, "mixup_alpha": 0.2,
    "cutmix_alpha": 1.0, "ema_decay": 0.9, "precision": "fp32", "threads": 1,
    "save_every_steps": 1, "keep_last": 100,
}  # fmt: skip
METRIC_KEYS = ("epoch", "step", "train_loss", "train_acc", "lr", "test_loss", "test_top1")


@pytest.fixture(autouse=True)
def _keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run: every step's checkpoint kept."""
    threads = torch.get_num_threads()
    run = tmp_path_factory.mktemp("reference") / "run"
    train({**JOB, "output": str(run)}, progress=False)
    torch.set_num_threads(threads)
    return run


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "model.safetensors")


def assert_same_run(run: Path, ref: Path) -> None:
    """Final weights, last checkpoint (optimizer, EMA, RNG) and logged metrics all identical."""
    a, b = final_weights(run), final_weights(ref)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    last = f"ckpt-{EPOCHS * STEPS_PER_EPOCH:08d}.pt"
    sa, sb = (load_checkpoint(r / "checkpoints" / last) for r in (run, ref))
    for key in ("model", "ema"):
        assert all(torch.equal(sa[key][k], sb[key][k]) for k in sb[key]), key
    for pa, pb in zip(sa["optimizer"]["state"].values(), sb["optimizer"]["state"].values(),
                      strict=True):  # fmt: skip
        assert torch.equal(pa["momentum_buffer"], pb["momentum_buffer"])
    assert torch.equal(sa["rng"]["torch"], sb["rng"]["torch"])

    def rows(r):
        lines = (r / "metrics.jsonl").read_text().splitlines()
        return [{k: json.loads(line).get(k) for k in METRIC_KEYS} for line in lines]

    assert rows(run) == rows(ref)  # train loss/acc of resumed epochs are exact too


def newest_position(run: Path) -> tuple[int, int, int]:
    found = load_latest(run / "checkpoints")
    assert found is not None
    state = found[1]
    return state["epoch"], state["batch"], state["step"]


# --------------------------------------------------------------------- kill -9 and resume


def start(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log, "ab") as err:
        return subprocess.Popen([sys.executable, "-m", "resnetlab", "train", "--quiet", *args],
                                stdout=subprocess.DEVNULL, stderr=err, env=env)  # fmt: skip


def kill_when(proc: subprocess.Popen, ready, timeout: float = 240.0) -> bool:
    """SIGKILL ``proc`` as soon as ``ready()``; False if it finished first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.0005)
    proc.kill()
    raise AssertionError("the training process did not reach the kill point in time")


@pytest.mark.slow
def test_kill_9_at_several_points_then_resume_is_bit_exact(tmp_path, reference):
    run, log = tmp_path / "run", tmp_path / "train.log"
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(JOB))
    ckdir = run / "checkpoints"

    def exists(step):
        return lambda: (ckdir / f"ckpt-{step:08d}.pt").exists()

    def writing_after(step):
        # A checkpoint is being written: its temporary file is there (or, failing to catch
        # that brief moment, a later checkpoint already exists).
        def ready():
            names = os.listdir(ckdir) if ckdir.is_dir() else []
            temps = [n for n in names if n.startswith(".ckpt-") and ckpt.TEMP_RE.match(n)]
            return any(int(n[6:14]) >= step for n in temps) or exists(15)()

        return ready

    points = [("mid-epoch 1", exists(3)), ("end of epoch 1", exists(STEPS_PER_EPOCH)),
              ("during a save in epoch 2", writing_after(12))]  # fmt: skip
    positions, torn = [], []
    for i, (_, ready) in enumerate(points):
        args = ["--config", str(config), "--output", str(run)] if i == 0 else ["--resume", str(run)]
        assert kill_when(start(args, log), ready), log.read_text()[-3000:]
        positions.append(newest_position(run))
        torn += [p.name for p in ckdir.iterdir() if ckpt.TEMP_RE.match(p.name)]
    proc = start(["--resume", str(run)], log)
    assert proc.wait(timeout=240) == 0, log.read_text()[-3000:]
    print(f"killed at (epoch, batch, step) = {positions}; half-written files left: {torn}")

    assert len({p[2] for p in positions}) == 3
    assert any(0 < batch < STEPS_PER_EPOCH for _, batch, _ in positions)  # mid-epoch
    assert any(step % STEPS_PER_EPOCH == 0 for _, _, step in positions)  # epoch boundary
    assert_same_run(run, reference)
    assert not [p for p in ckdir.iterdir() if ckpt.TEMP_RE.match(p.name)]


# ------------------------------------------------------------- crash while saving, corruption


def copy_run_until(ref: Path, dst: Path, step: int) -> Path:
    """A run directory as a crash right after checkpoint ``step`` would leave it."""
    (dst / "checkpoints").mkdir(parents=True)
    for name in ("config.yaml", "metrics.jsonl"):
        (dst / name).write_bytes((ref / name).read_bytes())
    for path in list_checkpoints(ref / "checkpoints")[:step]:
        (dst / "checkpoints" / path.name).write_bytes(path.read_bytes())
    config = yaml.safe_load((dst / "config.yaml").read_text())
    (dst / "config.yaml").write_text(yaml.safe_dump({**config, "output": str(dst)}))
    return dst


class _Evil:
    """Unpickling this runs a shell command (which would create ``marker``)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(self.marker)}",))


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage", "evil pickle"])
def test_crash_during_save_or_corrupt_newest_resumes_from_previous(tmp_path, reference, damage):
    run = copy_run_until(reference, tmp_path / "run", 13)
    newest = run / "checkpoints" / "ckpt-00000014.pt"
    whole = (reference / "checkpoints" / newest.name).read_bytes()
    marker = tmp_path / "code-ran"
    if damage == "truncated":  # a copy cut short, a torn write
        newest.write_bytes(whole[: len(whole) // 3])
    elif damage == "empty":
        newest.write_bytes(b"")
    elif damage == "garbage":
        newest.write_bytes(random.Random(0).randbytes(4096))
    else:
        torch.save({"model": _Evil(str(marker)), "step": 14}, newest)
    # ... and the temporary file of an interrupted save, and a metrics line cut short.
    (run / "checkpoints" / ".ckpt-00000015.pt.abc123.tmp").write_bytes(whole[:1000])
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 3, "step": 2')

    with pytest.warns(UserWarning, match=r"skipping unreadable checkpoint ckpt-00000014\.pt"):
        train({**JOB, "output": str(run)}, resume=True, progress=False)
    assert not marker.exists()
    assert_same_run(run, reference)
    assert not list((run / "checkpoints").glob(".*.tmp"))


def test_no_readable_checkpoint_is_a_clear_error(tmp_path, reference):
    run = copy_run_until(reference, tmp_path / "run", 1)
    (run / "checkpoints" / "ckpt-00000001.pt").write_bytes(b"\x00" * 100)
    with pytest.warns(UserWarning), pytest.raises(TrainingError, match="no readable checkpoint"):
        train({**JOB, "output": str(run)}, resume=True, progress=False)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_evil_pickle_checkpoint_is_refused_and_never_runs(tmp_path):
    marker, path = tmp_path / "code-ran", tmp_path / "ckpt-00000001.pt"
    torch.save({"model": {}, "step": 1, "x": _Evil(str(marker))}, path)
    with pytest.raises(CheckpointError, match=r"refused to load .*weights_only=True.*GLOBAL"):
        load_checkpoint(path)
    with open(path, "wb") as f:  # a plain pickle, not torch's zip format
        pickle.dump({"model": _Evil(str(marker))}, f)
    with pytest.raises(CheckpointError, match="refused to load"):
        load_checkpoint(path)
    assert not marker.exists()


def test_checkpoint_loads_with_weights_only_and_holds_the_whole_state(reference):
    path = reference / "checkpoints" / "ckpt-00000013.pt"
    state = torch.load(path, weights_only=True)
    assert {"model", "optimizer", "scheduler", "scaler", "ema", "step", "epoch", "batch",
            "best", "rng", "epoch_sums", "config", "model_meta"} <= set(state)  # fmt: skip
    assert (state["epoch"], state["batch"], state["step"]) == (1, 5, 13)
    assert state["epoch_sums"]["seen"] == 5 * 32
    assert {"torch", "numpy", "python"} <= set(state["rng"])
    assert state["config"]["seed"] == 7 and state["config"]["epochs"] == EPOCHS
    assert state["scheduler"]["last_epoch"] == 13
    assert "n_averaged" in state["ema"]
    assert (reference / "checkpoints" / "best.pt").exists()


def test_rng_states_round_trip_through_a_checkpoint(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    state = {"model": {}, "optimizer": {}, "scheduler": {}, "step": 0, "epoch": 0, "batch": 0,
             "rng": rng_state()}  # fmt: skip
    expected = torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)]
    save_checkpoint(state, tmp_path, 1, keep_last=1)
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    set_rng_state(load_checkpoint(tmp_path / "ckpt-00000001.pt")["rng"])
    got = torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)]
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])
    assert got[2] == expected[2]


def test_keep_last_n_plus_best(tmp_path):
    state = {"model": {}, "optimizer": {}, "scheduler": {}, "epoch": 0, "batch": 0, "rng": {}}
    for step in range(1, 6):
        save_checkpoint({**state, "step": step}, tmp_path, step, keep_last=2)
        if step == 2:
            ckpt.save_best({**state, "step": step}, tmp_path)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt-00000004.pt", "ckpt-00000005.pt"]
    assert load_checkpoint(tmp_path / "best.pt")["step"] == 2


# ------------------------------------------------------------------ full disk, read-only


def failing_save(fail_at: int, code: int):
    """torch.save that works ``fail_at - 1`` times, then writes a few bytes and fails."""
    real, calls = torch.save, []

    def save(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) >= fail_at:
            f.write(b"PK\x03\x04 half a checkpoint")
            raise OSError(code, os.strerror(code))
        return real(obj, f, *args, **kwargs)

    return save


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_failed_write_keeps_previous_checkpoint(tmp_path, monkeypatch, code):
    state = {"model": {"w": torch.ones(3)}, "optimizer": {}, "scheduler": {}, "epoch": 0,
             "batch": 0, "rng": {}}  # fmt: skip
    save_checkpoint({**state, "step": 1}, tmp_path, 1, keep_last=1)
    monkeypatch.setattr(ckpt.torch, "save", failing_save(1, code))
    with pytest.raises(CheckpointError, match=re.escape(os.strerror(code)) + ".*intact"):
        save_checkpoint({**state, "step": 2}, tmp_path, 2, keep_last=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-00000001.pt"]
    assert load_checkpoint(tmp_path / "ckpt-00000001.pt")["step"] == 1


def test_real_enospc_from_the_kernel(tmp_path, monkeypatch):
    """The checkpoint bytes go to /dev/full, which fails every write with ENOSPC."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    state = {"model": {"w": torch.ones(1000)}, "optimizer": {}, "scheduler": {}, "epoch": 0,
             "batch": 0, "rng": {}}  # fmt: skip
    save_checkpoint({**state, "step": 1}, tmp_path, 1, keep_last=3)
    to_full = lambda path, mode: open("/dev/full", mode)  # noqa: E731, SIM115
    monkeypatch.setattr(ckpt, "open", to_full, raising=False)
    with pytest.raises(CheckpointError, match="No space left on device"):
        save_checkpoint({**state, "step": 2}, tmp_path, 2, keep_last=3)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt-00000001.pt"]


def test_full_disk_stops_the_run_cleanly_and_resume_loses_nothing(
    tmp_path, monkeypatch, capsys, reference
):
    run = tmp_path / "run"
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(JOB))
    with monkeypatch.context() as patch:
        # Saves 1-9: steps 1-7, epoch 1's end (step 8) and best.pt; then steps 9-11; step 12
        # fails.
        patch.setattr(ckpt.torch, "save", failing_save(13, errno.ENOSPC))
        code = cli.main(["train", "--config", str(config), "--output", str(run), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert re.search(r"stopped at step 12.*No space left on device.*intact.*--resume", err)
    assert [p.name for p in list_checkpoints(run / "checkpoints")][-1] == "ckpt-00000011.pt"
    assert not list((run / "checkpoints").glob(".*.tmp"))
    assert cli.main(["train", "--resume", str(run), "--quiet"]) == 0  # space freed
    assert_same_run(run, reference)


def test_resume_with_incompatible_settings_is_refused_on_one_line(tmp_path, capsys, reference):
    run = copy_run_until(reference, tmp_path / "run", 3)
    assert cli.main(["train", "--resume", str(run), "--quiet", "--lr", "0.5"]) == 2
    err = capsys.readouterr().err
    assert re.search(r"error: --resume with settings that differ.*optim\.lr: 0\.05 -> 0\.5", err)
    assert "epochs" in err and len(err.strip().splitlines()) == 1
    # The checkpoint's own config is checked too, whatever config.yaml now says.
    config = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.safe_dump({**config, "seed": 8}))
    with pytest.raises(TrainingError, match=r"ckpt-00000003\.pt: seed: 7 -> 8"):
        train({**JOB, "seed": 8, "output": str(run)}, resume=True, progress=False)
