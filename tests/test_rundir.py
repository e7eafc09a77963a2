"""The run directory is safe: --overwrite replaces runs only, one writer at a time (an OS
lock), a finished run is never rewritten with less, a run is extended to exactly the steps
asked for, and SIGINT/SIGTERM leave a checkpoint to resume from."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from resnetlab.config import TrainConfig, build_config
from resnetlab.engine import TrainingError, train
from resnetlab.engine.checkpoint import list_checkpoints

# 256 images at batch 16: 16 steps per epoch.
JOB = {"model": "resnet8_pool", "data": {"spec": "synthetic:n=256,test=64,size=16,classes=4",
       "batch_size": 16}, "precision": "fp32", "threads": 1, "seed": 3}  # fmt: skip


def job(run: Path, **changes) -> dict:
    return {**JOB, "output": str(run), **changes}


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def start(run: Path, *args: str, stderr=subprocess.PIPE) -> subprocess.Popen:
    """A real training process on ``run`` (OMP threads 1: the machine is shared)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "resnetlab", "train", "--model", "resnet8_pool", "--data",
         "synthetic:n=256,test=64,size=16,classes=4", "--batch-size", "16", "--output",
         str(run), "precision=fp32", "threads=1", "seed=3", "save_every_steps=1", *args],
        stdout=subprocess.PIPE, stderr=stderr, text=True, env=env,
    )  # fmt: skip


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"the training ended first: {proc.communicate()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("the training did not get there in time")
        time.sleep(0.05)


# ------------------------------------------------------------------ --overwrite and --output


def test_overwrite_refuses_a_folder_that_is_not_a_run(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "thesis.tex").write_text("years of work")
    with pytest.raises(TrainingError, match="not a resnetlab run.*thesis.tex.*runs only"):
        train(job(folder, max_iters=2), overwrite=True, progress=False)
    assert (folder / "thesis.tex").read_text() == "years of work"
    assert sorted(p.name for p in folder.iterdir()) == ["thesis.tex"]


def test_empty_output_never_touches_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.txt").write_text("k")
    with pytest.raises(TrainingError, match="output is empty"):
        train(job(Path(""), max_iters=2) | {"output": ""}, overwrite=True, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_output_that_is_a_file_is_a_clear_error(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(TrainingError, match="is a file, not a directory"):
        train(job(tmp_path / "f", max_iters=2), progress=False)
    with pytest.raises(TrainingError, match="is a file, not a directory"):
        train(job(tmp_path / "f" / "run", max_iters=2), progress=False)


def test_overwrite_replaces_a_run_and_leaves_the_users_own_files(tmp_path):
    run = tmp_path / "run"
    train(job(run, max_iters=3, eval_every=0), progress=False)
    (run / "notes.txt").write_text("my notes")
    train(job(run, max_iters=2, eval_every=0), overwrite=True, progress=False)
    assert (run / "notes.txt").read_text() == "my notes"
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["ckpt-00000002.pt"]
    assert json.loads((run / "summary.json").read_text())["steps"] == 2


# ------------------------------------------------------------------ one writer per run


def test_a_second_writer_is_refused_while_a_training_runs(tmp_path):
    run = tmp_path / "run"
    proc = start(run, "--epochs", "100000")
    try:
        wait_for(lambda: len(list_checkpoints(run / "checkpoints")) >= 2, proc)
        with pytest.raises(TrainingError, match=r"being written by a training.*still running "
                           rf"\(pid {proc.pid}\)"):  # fmt: skip
            train(job(run, epochs=100000, save_every_steps=1), resume=True, progress=False)
        with pytest.raises(TrainingError, match="being written by a training"):
            train(job(run, epochs=100000, save_every_steps=1), overwrite=True, progress=False)
        assert (run / "config.yaml").exists() and list_checkpoints(run / "checkpoints")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # the kernel drops the lock of a killed process: the run resumes
    before = max(int(p.stem.split("-")[1]) for p in list_checkpoints(run / "checkpoints"))
    summary = train(job(run, max_iters=before + 2, save_every_steps=1, epochs=100000),
                    resume=True, progress=False)  # fmt: skip
    assert summary["steps"] == before + 2


# ------------------------------------------------------------------ finished runs, extensions


def test_resuming_a_finished_run_keeps_its_results(tmp_path):
    run = tmp_path / "run"
    train(job(run, epochs=1), progress=False)
    kept = {name: (run / name).read_bytes() for name in ("summary.json", "report.md",
                                                         "metrics.jsonl", "model.safetensors")}  # fmt: skip
    with pytest.raises(TrainingError, match=r"is a finished run \(16 steps, test top-1 "
                       r".*results are kept.*--epochs 2"):  # fmt: skip
        train(job(run, epochs=1), resume=True, progress=False)
    assert {name: (run / name).read_bytes() for name in kept} == kept


def test_a_run_killed_during_its_final_export_is_finished_by_resume(tmp_path):
    run = tmp_path / "run"
    done = train(job(run, epochs=1), progress=False)
    for name in ("summary.json", "report.md", "model.safetensors", "model.json"):
        (run / name).unlink()  # as if killed after the last checkpoint, before these
    again = train(job(run, epochs=1), resume=True, progress=False)
    assert again["test_top1"] == done["test_top1"]
    assert again["train_time_s"] == pytest.approx(done["train_time_s"], rel=1e-6)
    assert (run / "model.safetensors").exists() and (run / "report.md").exists()
    assert [r["epoch"] for r in metrics(run)] == [1]


@pytest.mark.parametrize("longer", [40, 30])
def test_extending_a_run_trains_exactly_to_the_new_max_iters(tmp_path, longer):
    run = tmp_path / "run"
    first = train(job(run, max_iters=20, eval_every=0), progress=False)
    assert first["steps"] == 20
    summary = train(job(run, max_iters=longer, eval_every=0), resume=True, progress=False)
    assert summary["steps"] == longer
    # one row per epoch, a partial one last: the row of step 20 (inside epoch 2) was
    # replaced by the resumed epoch's
    assert [r["step"] for r in metrics(run)] == {40: [16, 32, 40], 30: [16, 30]}[longer]
    assert summary["train_time_s"] > first["train_time_s"]


def test_resume_of_a_run_stopped_before_its_first_checkpoint_starts_it(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    cfg = job(run, max_iters=3, eval_every=0)
    (run / "config.yaml").write_text(yaml.safe_dump(build_config(TrainConfig, cfg).to_dict()))
    summary = train(cfg, resume=True, progress=False)
    assert summary["steps"] == 3
    assert "stopped before its first checkpoint: starting it again" in capsys.readouterr().err


# ------------------------------------------------------------------ signals, progress


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_sigint_or_sigterm_saves_a_checkpoint_to_resume_from(tmp_path, sig):
    run = tmp_path / "run"
    proc = start(run, "--epochs", "100000", "save_every_steps=0", "eval_every=0")
    wait_for(lambda: (run / "metrics.jsonl").exists(), proc)  # past epoch 1
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    step = int(err.split("interrupted at step ")[1].split(":")[0])
    assert f"resnetlab train --resume {run}" in err
    assert list_checkpoints(run / "checkpoints")[-1].name == f"ckpt-{step:08d}.pt"
    summary = train(job(run, max_iters=step + 3, epochs=100000, save_every_steps=0, eval_every=0),
                    resume=True, progress=False)  # fmt: skip
    assert summary["steps"] == step + 3


def test_progress_off_a_terminal_is_lines_not_redraws(tmp_path):
    log = tmp_path / "err.txt"
    with open(log, "w") as err:
        proc = start(tmp_path / "run", "--epochs", "2", "save_every_steps=0", stderr=err)
        out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, log.read_text()
    assert "\r" not in log.read_text()  # no bar redraws in a log file
    epochs = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [e["epoch"] for e in epochs] == [1, 2]
    # --quiet drops the progress, not the per-epoch metric lines
    proc = start(tmp_path / "quiet", "--epochs", "1", "--quiet", "save_every_steps=0")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert [json.loads(line)["epoch"] for line in out.splitlines() if line.startswith("{")] == [1]


def test_full_disk_during_the_final_export_keeps_the_run_finishable(tmp_path, monkeypatch):
    import errno

    from resnetlab.engine import tasks

    run = tmp_path / "run"

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(run / "model.safetensors"))

    with monkeypatch.context() as patch:
        patch.setattr(tasks, "save_weights", full)
        with pytest.raises(TrainingError, match=r"no space left on device: .*model\.safetensors"
                           r".*last checkpoint is intact.*--resume"):  # fmt: skip
            train(job(run, epochs=1), progress=False)
    assert not (run / "summary.json").exists()
    summary = train(job(run, epochs=1), resume=True, progress=False)  # space freed
    assert summary["steps"] == 16 and summary["test_top1"] is not None
    assert (run / "model.safetensors").exists()


def test_eval_of_an_interrupted_run_points_to_its_checkpoint(tmp_path, capsys):
    from resnetlab import cli

    run = tmp_path / "run"
    train(job(run, epochs=1), progress=False)
    (run / "model.safetensors").unlink()
    assert cli.main(["eval", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"resnetlab eval {run}/checkpoints/best.pt" in err and "--resume" in err
    assert cli.main(["eval", str(run / "checkpoints" / "best.pt"), "--json"]) == 0
