"""Distributed training with a real 2-process torchrun (gloo on CPU)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

DATA = "synthetic:n=256,test=67,size=16,classes=4"


def torchrun(*args, nproc=2, extra=(), timeout=600, wait=True, wait_log=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={nproc}", *extra, "-m", "resnetlab", *args]  # fmt: skip
    if not wait:  # output to a file: a full pipe would block the job
        log = open(wait_log, "w")  # noqa: SIM115
        return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def train_args(out, *more):
    return ["train", "--model", "resnet20", "--data", DATA, "--output", str(out), "--quiet",
            "model_args={depth: 8}", "precision=fp32", *more]  # fmt: skip


@pytest.mark.slow
@pytest.mark.distributed
def test_two_process_training_completes_and_evaluates(tmp_path):
    out = tmp_path / "ddp"
    proc = torchrun(*train_args(out, "--epochs", "5", "--batch-size", "16", "optim.lr=0.1",
                                "data.augment=none"))  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5]  # rank 0 alone writes: no duplicates
    # 256 images / (2 ranks x 16) = 8 steps per epoch.
    assert rows[-1]["step"] == 40
    assert proc.stdout.count("done:") == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["eval_n"] == 67  # the whole odd-sized test set, each sample once
    assert summary["world_size"] == 2
    assert summary["test_top1"] > 0.6  # 4 classes: chance is 0.25
    assert (out / "model.safetensors").exists() and (out / "curves.png").exists()


@pytest.mark.slow
@pytest.mark.distributed
def test_sync_bn_two_processes_equal_one_process(tmp_path):
    common = ["--epochs", "1", "data.augment=none", "sync_bn=true", "optim.lr=0.05",
              "schedule.name=constant"]  # fmt: skip
    one = torchrun(*train_args(tmp_path / "one", "--batch-size", "32", *common), nproc=1)
    assert one.returncode == 0, one.stderr[-3000:]
    two = torchrun(*train_args(tmp_path / "two", "--batch-size", "16", *common), nproc=2)
    assert two.returncode == 0, two.stderr[-3000:]
    a = load_file(tmp_path / "one" / "model.safetensors")
    b = load_file(tmp_path / "two" / "model.safetensors")
    for key in a:
        if a[key].is_floating_point():
            torch.testing.assert_close(b[key], a[key], rtol=1e-3, atol=1e-5, msg=key)


def _children(pid):
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


@pytest.mark.slow
@pytest.mark.distributed
def test_killed_worker_restarts_and_finishes(tmp_path):
    out = tmp_path / "elastic"
    proc = torchrun(*train_args(out, "--epochs", "3", "--batch-size", "16",
                                "--save-every-steps", "2"),
                    extra=["--max-restarts=2"], wait=False, wait_log=tmp_path / "log")  # fmt: skip
    ckpts = out / "checkpoints"
    deadline = time.time() + 300
    while time.time() < deadline and not (ckpts.exists() and any(ckpts.glob("ckpt-*0006.pt"))):
        time.sleep(0.2)
    assert proc.poll() is None, (tmp_path / "log").read_text()
    workers = _children(proc.pid)
    assert len(workers) == 2, "expected two worker processes"
    os.kill(workers[-1], signal.SIGKILL)
    proc.wait(timeout=600)
    output = (tmp_path / "log").read_text()
    assert proc.returncode == 0, output[-4000:]
    assert "resuming from ckpt-" in output
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3] and rows[-1]["step"] == 24
