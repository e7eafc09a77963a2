"""Files on disk that fight back: full disks, FIFOs, flipped bytes, damaged checkpoints,
a file where a folder should be, and two writers of one path."""

import errno
import os
import random
import shutil
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from resnetlab import create_model, save_weights
from resnetlab import io as rio
from resnetlab.engine.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_latest,
    save_checkpoint,
)
from resnetlab.errors import ResnetlabError
from resnetlab.io import (
    JSONFileError,
    StorageError,
    atomic_write,
    atomic_write_bytes,
    atomic_write_text,
    read_json,
    require_regular_file,
)
from resnetlab.models import weights as weights_module

TIMEOUT = 120  # seconds for any subprocess: what hangs without the fix must not hang CI


def run_cli(*args, timeout=TIMEOUT):
    return subprocess.run(
        [sys.executable, "-m", "resnetlab", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def make_state(value: float = 7.0, step: int = 1) -> dict:
    """A checkpoint as the trainer writes it, small: a model, RNG states, counters."""
    np_state = np.random.get_state()
    rng = {"torch": torch.get_rng_state(), "python": random.getstate(),
           "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]]}  # fmt: skip
    return {"model": {"w": torch.full((1000,), value)}, "optimizer": {}, "scheduler": {},
            "step": step, "epoch": 0, "batch": 0, "rng": rng}  # fmt: skip


def flip_byte_of(path: Path, pattern: bytes) -> None:
    """Invert one byte inside the first occurrence of ``pattern`` (a tensor's data)."""
    data = bytearray(path.read_bytes())
    at = data.find(pattern)
    assert at >= 0, f"{pattern!r} not in {path}"
    data[at + len(pattern) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def fail_writes_to(folder: Path, code: int, monkeypatch, after: int = 100):
    """``os.write`` to a file under ``folder`` writes ``after`` bytes, then fails with
    ``code``; every other write (pytest's own, say) goes through."""
    real = os.write

    def write(fd, data):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            target = ""
        if target.startswith(str(folder)):
            real(fd, bytes(data[:after]))
            raise OSError(code, os.strerror(code))
        return real(fd, data)

    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc/self/fd to tell the test's writes from pytest's")
    monkeypatch.setattr(rio.os, "write", write)


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A real 64 KiB file system, which a larger write fills: the kernel's own ENOSPC."""
    mnt = tmp_path / "full"
    mnt.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root and mount(8); the full-disk cases are covered "
                    "by the tests that fail os.write with ENOSPC")  # fmt: skip
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    if proc.returncode != 0:
        pytest.skip(f"mount -t tmpfs is not permitted here ({proc.stderr.strip()}); the "
                    "full-disk cases are covered by the tests that fail os.write with ENOSPC")  # fmt: skip
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)


# ------------------------------------------------------------------ the one atomic writer


def test_new_files_get_the_umask_mode_not_0600(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write_bytes(tmp_path / "a.bin", b"x")
        atomic_write(tmp_path / "b.txt", lambda tmp: Path(tmp).write_text("y"))
        save_weights(create_model("resnet20", depth=8), tmp_path / "model.safetensors")
    finally:
        os.umask(old)
    for name in ("a.bin", "b.txt", "model.safetensors", "model.json"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o640, name


def test_file_and_folder_are_fsynced(tmp_path, monkeypatch):
    kinds = []
    real = os.fsync

    def fsync(fd):
        kinds.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        return real(fd)

    monkeypatch.setattr(rio.os, "fsync", fsync)
    atomic_write_text(tmp_path / "t.json", "{}")
    assert kinds == ["file", "dir"]
    kinds.clear()
    atomic_write(tmp_path / "c.txt", lambda tmp: Path(tmp).write_text("z"))
    assert kinds == ["file", "dir"]


def test_two_writers_of_one_path_each_write_a_whole_file(tmp_path):
    """Both temporary files exist at once (a barrier holds each writer until the other has
    started); each writer renames its own, so the path ends up holding one whole version."""
    path = tmp_path / "m.onnx"
    barrier = threading.Barrier(2, timeout=30)
    temps, errors = [], []

    def writer(payload: bytes) -> None:
        def write(tmp: str) -> None:
            temps.append(tmp)
            barrier.wait()
            Path(tmp).write_bytes(payload)
            barrier.wait()

        try:
            atomic_write(path, write)
        except Exception as e:  # collected: a thread's exception would be lost
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(c * 100_000,)) for c in (b"a", b"b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(set(temps)) == 2
    assert path.read_bytes() in (b"a" * 100_000, b"b" * 100_000)
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (errno.ENOSPC, "no space left on device"),
        (errno.EACCES, "permission denied"),
        (errno.EROFS, "read-only file system"),
    ],  # fmt: skip
)
def test_failed_write_keeps_the_old_file_and_says_what_happened(tmp_path, monkeypatch, code, words):
    path = tmp_path / "model.json"
    path.write_text("old")
    fail_writes_to(tmp_path, code, monkeypatch)
    with pytest.raises(StorageError) as info:
        atomic_write_text(path, "new" * 10_000)
    assert str(info.value).startswith(f"{words}: {path}") and "unchanged" in str(info.value)
    assert info.value.errno == code and isinstance(info.value, (OSError, ResnetlabError))
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.json"]  # no temporary file left


def test_a_file_where_a_folder_should_be(tmp_path):
    (tmp_path / "out").write_text("a file")
    for target in (tmp_path / "out" / "x.onnx", tmp_path / "out" / "deeper" / "x.onnx"):
        with pytest.raises(StorageError, match=rf"cannot write .*: {tmp_path / 'out'} is a file"):
            atomic_write_bytes(target, b"x")
    assert (tmp_path / "out").read_text() == "a file"


def test_real_full_disk_keeps_the_old_file(tiny_tmpfs):
    path = tiny_tmpfs / "w.bin"
    path.write_bytes(b"old")
    with pytest.raises(StorageError, match=rf"^no space left on device: {path}") as info:
        atomic_write_bytes(path, b"\0" * 1_000_000)
    assert info.value.errno == errno.ENOSPC
    assert path.read_bytes() == b"old" and [p.name for p in tiny_tmpfs.iterdir()] == ["w.bin"]


@pytest.mark.parametrize(("fmt", "name"), [("torch-export", "m.pt2"), ("onnx", "m.onnx"),
                                           ("safetensors", "m.safetensors")])  # fmt: skip
def test_export_onto_a_real_full_disk_is_one_line_not_an_abort(tmp_path, tiny_tmpfs, fmt, name):
    run = tmp_path / "run"
    save_weights(create_model("resnet20", depth=8, num_classes=3), run / "model.safetensors")
    out = tiny_tmpfs / name
    out.write_bytes(b"previous export")
    proc = run_cli("export", run, "--format", fmt, "--output", out)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])  # not -6 (SIGABRT)
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert f"no space left on device: {out}" in proc.stderr
    assert out.read_bytes() == b"previous export"
    assert [p.name for p in tiny_tmpfs.iterdir()] == [name]


# ------------------------------------------------------------------ safe reading


def test_fifos_and_folders_are_refused_unopened(tmp_path):
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    with pytest.raises(StorageError, match="named pipe"):
        require_regular_file(fifo, "sidecar")
    with pytest.raises(StorageError, match="named pipe"):
        read_json(fifo)  # would block forever if opened
    with pytest.raises(StorageError, match="a folder, not a regular file"):
        read_json(tmp_path)
    with pytest.raises(StorageError, match="not found"):
        read_json(tmp_path / "nope.json")


def test_read_json_refuses_what_is_not_small_json(tmp_path):
    big, bad, binary = tmp_path / "big.json", tmp_path / "bad.json", tmp_path / "bin.json"
    big.write_text("[" + "0," * 100 + "0]")
    bad.write_text('{"a": ')
    binary.write_bytes(b"\xff\xfe{}")
    with pytest.raises(JSONFileError, match="more than the 64"):
        read_json(big, max_bytes=64)
    with pytest.raises(JSONFileError, match=r"bad\.json is not valid JSON"):
        read_json(bad)
    with pytest.raises(JSONFileError, match="not UTF-8"):
        read_json(binary)
    assert read_json(big) == [0] * 101


def _fifo_run(tmp_path: Path, fifo_name: str) -> Path:
    run = tmp_path / "run"
    save_weights(create_model("resnet20", depth=8, num_classes=3), run / "model.safetensors")
    (run / fifo_name).unlink()
    os.mkfifo(run / fifo_name)
    return run


@pytest.mark.parametrize("fifo_name", ["model.safetensors", "model.json"])
def test_predict_on_a_fifo_fails_at_once_instead_of_hanging(tmp_path, fifo_name):
    from PIL import Image

    run = _fifo_run(tmp_path, fifo_name)
    Image.new("RGB", (32, 32)).save(tmp_path / "x.png")
    proc = run_cli("predict", run, tmp_path / "x.png")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "named pipe (FIFO)" in proc.stderr
    assert str(run / fifo_name) in proc.stderr


# ------------------------------------------------------------------ checkpoints


def test_checkpoint_with_flipped_bytes_is_refused_and_resume_takes_the_previous(tmp_path):
    save_checkpoint(make_state(7.0, step=1), tmp_path, 1, keep_last=3)
    newest = save_checkpoint(make_state(7.0, step=2), tmp_path, 2, keep_last=3)
    flip_byte_of(newest, torch.full((8,), 7.0).numpy().tobytes())
    with pytest.raises(CheckpointError, match=rf"{newest} is damaged.*sha256"):
        load_checkpoint(newest)
    with pytest.warns(
        UserWarning, match=r"skipping unreadable checkpoint ckpt-00000002\.pt.*sha256"
    ):
        path, state = load_latest(tmp_path)
    assert path.name == "ckpt-00000001.pt" and state["step"] == 1
    assert "sha256" not in state and torch.equal(state["model"]["w"], torch.full((1000,), 7.0))


def test_checkpoint_from_before_checksums_still_loads(tmp_path):
    path = tmp_path / "ckpt-00000001.pt"
    torch.save(make_state(3.0), path)  # what older versions wrote: no checksum
    assert load_checkpoint(path)["model"]["w"][0] == 3.0
    assert load_latest(tmp_path)[0] == path


def test_fifo_checkpoint_is_skipped_without_hanging(tmp_path):
    save_checkpoint(make_state(step=1), tmp_path, 1, keep_last=3)
    os.mkfifo(tmp_path / "ckpt-00000002.pt")
    code = (
        "import sys, warnings; from pathlib import Path\n"
        "from resnetlab.engine.checkpoint import load_latest\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    path, state = load_latest(Path(sys.argv[1]))\n"
        "print(path.name, state['step']); print(*[str(x.message) for x in w], sep='\\n')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                          text=True, timeout=TIMEOUT)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    first, *warned = proc.stdout.splitlines()
    assert first == "ckpt-00000001.pt 1"
    assert any("ckpt-00000002.pt" in w and "named pipe" in w for w in warned)


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        ({"rng": {}}, "random-number state is damaged"),
        ({"rng": {"torch": torch.zeros(3)}}, "random-number state is damaged"),
        ({"step": "3"}, r"'step' is a str, expected an integer"),
        ({"model": [1, 2]}, r"'model' is a list, expected a dict"),
        ({"model": {"w": 1.0}}, "model entry 'w' is not a tensor"),
        ({"epoch": -1}, r"'epoch' is -1"),
        ({"ema": "x"}, r"'ema' is a str"),
        ({"rng": None}, r"'rng' is a NoneType"),
    ],
)
def test_damaged_checkpoint_structure_is_unreadable_for_resume(tmp_path, damage, match):
    save_checkpoint(make_state(step=1), tmp_path, 1, keep_last=3)
    bad = save_checkpoint({**make_state(step=2), **damage}, tmp_path, 2, keep_last=3)
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(bad, for_resume=True)
    with pytest.warns(UserWarning, match=r"skipping unreadable checkpoint ckpt-00000002\.pt"):
        path, state = load_latest(tmp_path)
    assert path.name == "ckpt-00000001.pt"
    for key in ("optimizer", "rng"):
        state = make_state()
        del state[key]
        torch.save(state, tmp_path / "old.pt")
        with pytest.raises(CheckpointError, match=f"lacks {key}"):
            load_checkpoint(tmp_path / "old.pt")


def test_checkpoint_weights_through_create_model_are_verified_too(tmp_path):
    model = create_model("resnet20", depth=8, num_classes=3)
    state = {**make_state(), "model": model.state_dict()}
    path = save_checkpoint(state, tmp_path, 1, keep_last=1)
    create_model("resnet20", depth=8, weights=path)  # intact: loads
    flip_byte_of(path, model.state_dict()["fc.weight"].numpy().tobytes()[:16])
    with pytest.raises(weights_module.WeightsError, match=rf"{path} is damaged"):
        create_model("resnet20", depth=8, weights=path)


def test_hashing_is_quick_enough_to_run_on_every_load():
    tensors = {f"t{i}": torch.randn(256, 1024) for i in range(16)}  # 16 MiB
    start = time.perf_counter()
    digest = weights_module.content_sha256(tensors)
    assert time.perf_counter() - start < 2.0
    assert digest == weights_module.content_sha256(dict(reversed(tensors.items())))
    tensors["t3"][0, 0] += 1
    assert digest != weights_module.content_sha256(tensors)
    odd = {"b": torch.ones(3, dtype=torch.bfloat16), "m": torch.ones(2, dtype=torch.bool),
           "s": torch.tensor(1.0), "t": torch.randn(3, 4).t()}  # fmt: skip
    assert weights_module.content_sha256(odd) == weights_module.content_sha256(
        {k: v.contiguous().clone() for k, v in odd.items()}
    )
