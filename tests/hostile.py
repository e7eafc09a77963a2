"""A hostile-input suite: every command given what a careless or malicious user could give it.

Each case builds its files in a fresh directory that also holds a finished run (``done/``),
runs one ``resnetlab`` command and is classified:

- ``ok``: the command did what was asked (exit 0) — hostile input that is fine to accept;
- ``clear error``: exit 2 (or 1 for predict's unreadable files) with a one-line
  ``resnetlab <cmd>: error: ...`` and no traceback;
- ``traceback``: anything else (an uncaught exception, a hang, a crash by signal).

After every case the finished run must be byte-identical (else: a result lost) and no
canary file written by a malicious pickle or YAML tag may exist (else: foreign code run).

Most cases run in this process through ``cli.main`` (fast); those that could hang or that
need signals run in a real subprocess with a timeout. ``python tests/hostile.py`` prints
the counts; tests/test_hostile.py runs the same suite and checks README's counts.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

TINY = [
    "--model",
    "resnet8_pool",
    "--data",
    "synthetic:n=64,test=32,size=16,classes=4",
    "--batch-size",
    "16",
    "precision=fp32",
    "threads=1",
]
CANARY = "PWNED"


class _Evil:
    """Unpickling this runs code that writes the canary file (never must it run)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.write_text, (Path(self.path), "foreign code ran"))


@dataclass
class Case:
    name: str
    argv: Callable[[Path], list[str]]  # the command line, given the case's directory
    setup: Callable[[Path], None] | None = None
    subprocess: bool = False  # run in a real process with a timeout (hangs, signals)
    expect_ok: bool = False  # the input is hostile-looking but valid: exit 0 expected


# ------------------------------------------------------------------ helpers to build inputs


def _images(folder: Path, classes=("cat", "dog"), n=6, size=20, mode="RGB") -> None:
    g = torch.Generator().manual_seed(0)
    for c in classes:
        (folder / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            arr = (torch.rand(size, size, 3, generator=g) * 255).to(torch.uint8).numpy()
            Image.fromarray(arr).convert(mode).save(folder / c / f"{i}.png")


def _write(rel: str, data: bytes | str) -> Callable[[Path], None]:
    def setup(d: Path) -> None:
        path = d / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)

    return setup


def _copy_run(rel: str, change: Callable[[Path], None] | None = None) -> Callable[[Path], None]:
    def setup(d: Path) -> None:
        shutil.copytree(d / "done", d / rel)
        if change is not None:
            change(d / rel)

    return setup


def _evil_pickle(d: Path) -> bytes:
    return pickle.dumps(_Evil(str(d / CANARY)))


def _sidecar(value) -> Callable[[Path], None]:
    def change(run: Path) -> None:
        meta = json.loads((run / "model.json").read_text())
        (run / "model.json").write_text(json.dumps(value(meta)))

    return _copy_run("copy", change)


def _flip_bytes(run: Path) -> None:
    path = run / "model.safetensors"
    data = bytearray(path.read_bytes())
    for i in range(len(data) - 4000, len(data) - 3000):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _checkpoint_with(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def edit(run: Path) -> None:
        (run / "summary.json").unlink()  # a run killed before its end: resume would load
        for path in (run / "checkpoints").glob("*.pt"):
            state = torch.load(path, weights_only=True)
            change(state)
            torch.save(state, path)

    return _copy_run("copy", edit)


def _damaged_checkpoints(damage: Callable[[Path, Path], bytes]) -> Callable[[Path], None]:
    """A copy of the finished run, cut before its end, whose checkpoints hold ``damage``'s
    bytes (given each checkpoint's path and the run)."""

    def edit(run: Path) -> None:
        (run / "summary.json").unlink()  # a run killed before its end: resume would load
        for path in (run / "checkpoints").glob("*.pt"):
            path.write_bytes(damage(path, run))

    return _copy_run("copy", edit)


def _fifo(rel: str) -> Callable[[Path], None]:
    def setup(d: Path) -> None:
        shutil.copytree(d / "done", d / "copy")
        target = d / "copy" / rel
        target.unlink()
        os.mkfifo(target)

    return setup


def _symlink_loop(d: Path) -> None:
    _images(d / "imgs" / "train")
    _images(d / "imgs" / "val", n=2)
    (d / "imgs" / "train" / "cat" / "loop").symlink_to("..")
    (d / "imgs" / "train" / "dog" / "out").symlink_to(d / "imgs" / "val")


def _eval_then_readonly(d: Path) -> None:
    shutil.copytree(d / "done", d / "ro")
    for p in [d / "ro", *(d / "ro").rglob("*")]:
        p.chmod(0o555 if p.is_dir() else 0o444)


def _train(d: Path, *extra: str) -> list[str]:
    return ["train", *TINY, "--max-iters", "2", "eval_every=0", *extra]


CASES: list[Case] = [
    # ---- run directories
    Case(
        "overwrite a folder that is not a run",
        lambda d: _train(d, "--output", str(d / "mine"), "--overwrite"),
        _write("mine/thesis.tex", "years of work"),
    ),
    Case("empty --output with --overwrite", lambda d: _train(d, "--output", "", "--overwrite")),
    Case("--output is a file", lambda d: _train(d, "--output", str(d / "f")), _write("f", "x")),
    Case(
        "--output under a file",
        lambda d: _train(d, "--output", str(d / "f" / "run")),
        _write("f", "x"),
    ),
    Case("resume a finished run", lambda d: ["train", "--resume", str(d / "done")]),
    Case("resume a missing folder", lambda d: ["train", "--resume", str(d / "nope")]),
    Case(
        "resume a folder that is not a run",
        lambda d: ["train", "--resume", str(d / "x")],
        _write("x/a.txt", "a"),
    ),
    Case(
        "train into an existing run without --overwrite",
        lambda d: _train(d, "--output", str(d / "done")),
    ),
    Case(
        "resume with a changed lr", lambda d: ["train", "--resume", str(d / "done"), "--lr", "0.5"]
    ),
    # ---- configs and overrides
    Case(
        "--config is a directory", lambda d: _train(d, "--config", str(d), "--output", str(d / "r"))
    ),
    Case("--config is missing", lambda d: _train(d, "--config", str(d / "no.yaml"))),
    Case(
        "--config is not YAML",
        lambda d: _train(d, "--config", str(d / "c.yaml"), "--output", str(d / "r")),
        _write("c.yaml", "a: [b\n"),
    ),
    Case(
        "--config is a list",
        lambda d: _train(d, "--config", str(d / "c.yaml"), "--output", str(d / "r")),
        _write("c.yaml", "- 1\n- 2\n"),
    ),
    Case(
        "--config with a python tag",
        lambda d: _train(d, "--config", str(d / "c.yaml"), "--output", str(d / "r")),
        lambda d: _write(
            "c.yaml", f"epochs: !!python/object/apply:os.system ['touch {d / CANARY}']\n"
        )(d),
    ),
    Case(
        "--config is binary",
        lambda d: _train(d, "--config", str(d / "c.yaml"), "--output", str(d / "r")),
        _write("c.yaml", bytes(range(256))),
    ),
    Case(
        "optim.lr=1e-3 (a number YAML 1.1 reads as text)",
        lambda d: _train(d, "--output", str(d / "r"), "optim.lr=1e-3"),
        expect_ok=True,
    ),
    Case("optim.lr=abc", lambda d: _train(d, "--output", str(d / "r"), "optim.lr=abc")),
    Case("optim.lr=-1", lambda d: _train(d, "--output", str(d / "r"), "optim.lr=-1")),
    Case("optim.lr=nan", lambda d: _train(d, "--output", str(d / "r"), "optim.lr=nan")),
    Case("epochs=0", lambda d: _train(d, "--output", str(d / "r"), "epochs=0")),
    Case("unknown key", lambda d: _train(d, "--output", str(d / "r"), "optim.lrr=1")),
    Case(
        "model_args.num_classes=5",
        lambda d: _train(d, "--output", str(d / "r"), "model_args.num_classes=5"),
    ),
    Case(
        "model_args.drop_path_rate=abc",
        lambda d: _train(d, "--output", str(d / "r"), "model_args.drop_path_rate=abc"),
    ),
    Case("model_args.bogus=1", lambda d: _train(d, "--output", str(d / "r"), "model_args.bogus=1")),
    Case(
        "model_args.depth=10**6",
        lambda d: _train(d, "--output", str(d / "r"), "model_args.depth=1000000"),
    ),
    Case(
        "unknown model",
        lambda d: ["train", "--model", "resnet21", "--data", "synthetic", "--output", str(d / "r")],
    ),
    Case("unknown dataset", lambda d: ["train", "--data", "cifar11", "--output", str(d / "r")]),
    Case(
        "batch larger than the data",
        lambda d: [
            "train",
            "--model",
            "resnet8_pool",
            "--data",
            "synthetic:n=16",
            "--batch-size",
            "64",
            "--output",
            str(d / "r"),
        ],
    ),
    # ---- image folders
    Case(
        "image folder that does not exist",
        lambda d: [
            "train",
            "--model",
            "resnet8_pool",
            "--data",
            f"imagefolder:{d / 'none'}",
            "--output",
            str(d / "r"),
        ],
    ),
    Case(
        "empty image folder",
        lambda d: [
            "train",
            "--model",
            "resnet8_pool",
            "--data",
            f"imagefolder:{d / 'imgs'}",
            "--output",
            str(d / "r"),
            "--max-iters",
            "2",
        ],
        lambda d: (d / "imgs" / "train").mkdir(parents=True),
    ),
    Case(
        "image folder of one class",
        lambda d: [
            "train",
            "--model",
            "resnet8_pool",
            "--data",
            f"imagefolder:{d / 'imgs'}",
            "--output",
            str(d / "r"),
            "--max-iters",
            "2",
        ],
        lambda d: _images(d / "imgs" / "train", classes=("cat",)),
    ),
    Case(
        "image folder of broken files",
        lambda d: [
            "train",
            "--model",
            "resnet8_pool",
            "--data",
            f"imagefolder:{d / 'imgs'}",
            "--output",
            str(d / "r"),
            "--max-iters",
            "2",
        ],
        lambda d: [
            _write(f"imgs/{c}/{i}.png", b"\x89PNG\r\n\x1a\n" + b"x" * 40)(d)
            for c in ("a", "b")
            for i in range(12)
        ],
    ),
    Case(
        "image folder with a symlink loop",
        lambda d: [
            "train",
            "--model",
            "resnet8_pool",
            "--data",
            f"imagefolder:{d / 'imgs'}",
            "--output",
            str(d / "r"),
            "--max-iters",
            "2",
            "eval_every=0",
        ],
        _symlink_loop,
        expect_ok=True,
    ),
    # ---- checkpoints
    Case(
        "checkpoint with rng={}",
        lambda d: ["train", "--resume", str(d / "copy")],
        _checkpoint_with(lambda s: s.update(rng={})),
    ),
    Case(
        "checkpoint without a model",
        lambda d: ["train", "--resume", str(d / "copy")],
        _checkpoint_with(lambda s: s.pop("model")),
    ),
    Case(
        "checkpoint that is a malicious pickle",
        lambda d: ["train", "--resume", str(d / "copy")],
        _damaged_checkpoints(lambda path, run: _evil_pickle(run.parent)),
    ),
    Case(
        "checkpoints cut short",
        lambda d: ["train", "--resume", str(d / "copy")],
        _damaged_checkpoints(lambda path, run: path.read_bytes()[:500]),
    ),
    Case(
        "a FIFO named like the newest checkpoint",
        lambda d: ["train", "--resume", str(d / "copy")],
        lambda d: (
            _fifo("checkpoints/ckpt-00000008.pt")(d),
            (d / "copy" / "summary.json").unlink(),
        ),
        subprocess=True,
        expect_ok=True,  # skipped with a warning: the run resumes from the one before
    ),
    # ---- weights, sidecars: predict, eval, export
    Case("predict a missing file", lambda d: ["predict", str(d / "done"), str(d / "cat.png")]),
    Case(
        "predict a folder without images",
        lambda d: ["predict", str(d / "done"), str(d / "docs")],
        _write("docs/a.txt", "text"),
    ),
    Case(
        "predict a truncated PNG",
        lambda d: ["predict", str(d / "done"), str(d / "t.png")],
        _write("t.png", b"\x89PNG\r\n\x1a\n\x00\x00"),
    ),
    Case(
        "predict with garbage weights",
        lambda d: ["predict", "--weights", str(d / "w.safetensors"), str(d / "done")],
        _write("w.safetensors", b"\x00garbage" * 10),
    ),
    Case(
        "predict with a malicious .pth",
        lambda d: [
            "predict",
            "--model",
            "resnet8_pool",
            "--weights",
            str(d / "w.pth"),
            str(d / "x"),
        ],
        lambda d: (_write("w.pth", _evil_pickle(d))(d), _images(d / "x", n=1)),
    ),
    Case(
        "model.json is a list",
        lambda d: ["predict", str(d / "copy"), str(d / "x")],
        lambda d: (_sidecar(lambda m: [m])(d), _images(d / "x", n=1)),
    ),
    Case(
        "model.json config null",
        lambda d: ["predict", str(d / "copy"), str(d / "x")],
        lambda d: (_sidecar(lambda m: {**m, "config": None})(d), _images(d / "x", n=1)),
    ),
    Case(
        "model.json drop_path_rate a string",
        lambda d: ["eval", str(d / "copy")],
        _sidecar(lambda m: {**m, "config": {**m["config"], "drop_path_rate": "abc"}}),
    ),
    Case(
        "model.json num_classes 10**9",
        lambda d: ["export", str(d / "copy"), "--format", "onnx", "--output", str(d / "m.onnx")],
        _sidecar(lambda m: {**m, "config": {**m["config"], "num_classes": 10**9}}),
    ),
    Case(
        "flipped bytes in model.safetensors",
        lambda d: ["eval", str(d / "copy")],
        _copy_run("copy", _flip_bytes),
    ),
    Case(
        "a FIFO named model.safetensors",
        lambda d: ["predict", str(d / "copy"), str(d / "x")],
        lambda d: (_fifo("model.safetensors")(d), _images(d / "x", n=1)),
        subprocess=True,
    ),
    Case("eval a missing run", lambda d: ["eval", str(d / "nope")]),
    Case(
        "eval a run interrupted before its final weights",
        lambda d: ["eval", str(d / "copy")],
        _copy_run("copy", lambda r: (r / "model.safetensors").unlink()),
    ),
    Case(
        "eval on data of other classes",
        lambda d: ["eval", str(d / "done"), "--data", "synthetic:classes=7,size=16"],
    ),
    Case(
        "eval a weights file beside a stranger's config.yaml",
        lambda d: ["eval", str(d / "w" / "weights.safetensors")],
        lambda d: (
            shutil.copytree(d / "done", d / "w"),
            (d / "w" / "model.safetensors").rename(d / "w" / "weights.safetensors"),
            (d / "w" / "model.json").rename(d / "w" / "weights.json"),
            (d / "w" / "config.yaml").write_text("tool: something-else\n"),
        ),
    ),
    Case(
        "eval a read-only run",
        lambda d: ["eval", str(d / "ro")],
        _eval_then_readonly,
        expect_ok=True,
    ),
    Case(
        "export under a file",
        lambda d: [
            "export",
            str(d / "done"),
            "--format",
            "onnx",
            "--output",
            str(d / "f" / "x.onnx"),
        ],
        _write("f", "x"),
    ),
    Case(
        "export to an unknown format",
        lambda d: ["export", str(d / "done"), "--output", str(d / "x.onnx"), "--format", "caffe"],
    ),
    Case(
        "export a missing source",
        lambda d: ["export", str(d / "nope"), "--format", "onnx", "--output", str(d / "x.onnx")],
    ),
]


# ------------------------------------------------------------------ running


@dataclass
class Outcome:
    case: str
    kind: str  # ok | clear error | traceback | unexpected success
    lost: bool
    foreign: bool
    detail: str


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink() and p.name != ".lock"  # (a lock is no result)
    }


def make_done_run(folder: Path) -> Path:
    """A finished tiny run: the result every case must leave untouched."""
    from resnetlab import cli

    run = folder / "done"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert (
            cli.main(
                [
                    "train",
                    *TINY,
                    "--epochs",
                    "2",
                    "--output",
                    str(run),
                    "--quiet",
                    "save_every_steps=0",
                ]
            )
            == 0
        )
    return run


def _run_here(argv: list[str], cwd: Path) -> tuple[int | None, str]:
    from resnetlab import cli

    err, threads, old = io.StringIO(), torch.get_num_threads(), os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            code = cli.main(argv)
    except SystemExit as e:  # argparse's usage errors
        code = e.code if isinstance(e.code, int) else 2
    except BaseException:  # an uncaught exception is a traceback to the user
        return None, err.getvalue() + traceback.format_exc()
    finally:
        os.chdir(old)
        torch.set_num_threads(threads)
    return code, err.getvalue()


def _run_process(argv: list[str], cwd: Path, timeout: float = 120) -> tuple[int | None, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "resnetlab", *argv],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return None, f"hung: no exit within {timeout} s"
    return (proc.returncode if proc.returncode >= 0 else None), proc.stderr


def run_case(case: Case, folder: Path, done: Path) -> Outcome:
    folder.mkdir(parents=True)
    shutil.copytree(done, folder / "done")
    before = _digest(folder / "done")
    if case.setup is not None:
        case.setup(folder)
    argv = case.argv(folder)
    code, err = (_run_process if case.subprocess else _run_here)(argv, folder)
    one_line_error = "Traceback" not in err and any(
        line.startswith(f"resnetlab {argv[0]}: error: ") for line in err.splitlines()
    )
    if code is None or "Traceback" in err:
        kind = "traceback"
    elif case.expect_ok:
        kind = "ok" if code == 0 else "clear error" if one_line_error else "traceback"
    elif code == 2 and one_line_error or code == 1 and argv[0] == "predict":
        kind = "clear error"  # (predict: 1 when some files could not be read, each named)
    elif code == 0:
        kind = "unexpected success"
    else:
        kind = "traceback"
    lost = _digest(folder / "done") != before
    foreign = (folder / CANARY).exists()
    return Outcome(
        case.name, kind, lost, foreign, err.strip().splitlines()[-1] if err.strip() else ""
    )


def run_suite(root: Path) -> list[Outcome]:
    done = make_done_run(root / "reference")
    return [run_case(c, root / f"case{i:02d}", done) for i, c in enumerate(CASES)]


def counts(outcomes: list[Outcome]) -> dict[str, int]:
    return {
        "cases": len(outcomes),
        "accepted (valid input)": sum(o.kind == "ok" for o in outcomes),
        "clear errors": sum(o.kind == "clear error" for o in outcomes),
        "tracebacks, hangs, crashes": sum(o.kind == "traceback" for o in outcomes),
        "wrong successes": sum(o.kind == "unexpected success" for o in outcomes),
        "results lost": sum(o.lost for o in outcomes),
        "foreign code run": sum(o.foreign for o in outcomes),
    }


def render(table: dict[str, int]) -> str:
    lines = ["| hostile-input suite | count |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in table.items()]
    return "\n".join(lines)


if __name__ == "__main__":
    import tempfile

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        outcomes = run_suite(Path(tmp))
    for o in outcomes:
        flags = (" LOST" if o.lost else "") + (" FOREIGN" if o.foreign else "")
        print(f"{o.kind:18s}{flags} {o.case}: {o.detail[:150]}")
    print()
    print(render(counts(outcomes)))
