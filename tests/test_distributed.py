"""Distributed training with a real 2-process torchrun (gloo on CPU)."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file

from resnetlab.engine.distributed import agree_on_session

DATA = "synthetic:n=256,test=67,size=16,classes=4"


def torchrun(*args, nproc=2, extra=(), timeout=600, wait=True, wait_log=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = [] if any(e.startswith("--nnodes") for e in extra) else ["--standalone"]
    cmd = [sys.executable, "-m", "torch.distributed.run", *launch,
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


# 128 steps per epoch: long enough that the kill lands while the group is still training (at
# 32, a fast CPU finished the run before the kill).
ELASTIC = ("--data", "synthetic:n=4096,test=67,size=16,classes=4", "--epochs", "3",
           "--batch-size", "16", "--save-every-steps", "2")  # fmt: skip


def _kill_a_worker_and_finish(agents, victim, out, logs):
    """SIGKILL the ``victim()`` worker once step 6 is saved; every agent must then finish."""
    ckpts = out / "checkpoints"
    deadline = time.time() + 300

    def saved_step_6() -> bool:  # older checkpoints are pruned: any step >= 6 counts
        steps = (
            [int(p.stem.split("-")[1]) for p in ckpts.glob("ckpt-*.pt")] if ckpts.exists() else []
        )
        return any(s >= 6 for s in steps)

    while time.time() < deadline and not saved_step_6():
        time.sleep(0.1)
    assert all(a.poll() is None for a in agents), logs()
    os.kill(victim(), signal.SIGKILL)
    try:
        codes = [a.wait(timeout=300) for a in agents]  # a healthy restart takes seconds
    except subprocess.TimeoutExpired:
        for a in agents:
            subprocess.run(["pkill", "-KILL", "-P", str(a.pid)])
            a.kill()
        pytest.fail("the restarted group hung:\n" + logs())
    assert codes == [0] * len(agents), logs()
    assert "resuming from ckpt-" in logs() and "already holds a run" not in logs()
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3] and rows[-1]["step"] == 384


@pytest.mark.slow
@pytest.mark.distributed
def test_killed_worker_restarts_and_finishes(tmp_path):
    out, log = tmp_path / "elastic", tmp_path / "log"
    proc = torchrun(*train_args(out, *ELASTIC), extra=["--max-restarts=1"], wait=False,
                    wait_log=log)  # fmt: skip

    def victim():
        workers = _children(proc.pid)
        assert len(workers) == 2, "expected two worker processes"
        return workers[-1]

    _kill_a_worker_and_finish([proc], victim, out, lambda: log.read_text()[-4000:])


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.distributed
def test_two_node_group_restarts_once_and_finishes(tmp_path):
    # Two torchrun agents ("nodes") with one worker each. A failure on node 1 makes its agent
    # count a restart; node 0's agent restarts its worker too but counts none. With only one
    # restart allowed, both workers must still agree to resume the run.
    out, port = tmp_path / "run", _free_port()
    agents = [
        torchrun(*train_args(out, *ELASTIC), nproc=1, wait=False, wait_log=tmp_path / f"log{n}",
                 extra=["--nnodes=2", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}",
                        "--rdzv-id=two-nodes", "--max-restarts=1"])
        for n in (0, 1)
    ]  # fmt: skip
    _kill_a_worker_and_finish(
        agents, lambda: _children(agents[1].pid)[0], out,
        lambda: "\n".join((tmp_path / f"log{n}").read_text()[-3000:] for n in (0, 1)),
    )  # fmt: skip


def _session_round(port, world, order, timeout_s=20):
    """Ranks of one worker group agreeing on a token, each with its own store client."""
    tokens, errors = {}, []

    def rank_main(rank):
        try:
            client = dist.TCPStore("127.0.0.1", port, world, is_master=False)
            tokens[rank] = agree_on_session(client, rank, world, timedelta(seconds=timeout_s))
        except Exception as e:  # noqa: BLE001 - reported by the test
            errors.append(e)

    threads = [threading.Thread(target=rank_main, args=(r,)) for r in order]
    for t in threads:
        t.start()
        time.sleep(0.05)  # the later ranks see the earlier ones' keys
    for t in threads:
        t.join(timeout_s + 5)
    assert not errors, errors
    return tokens


def test_restarted_group_agrees_on_a_new_session_despite_stale_keys():
    # torchrun hands every restarted worker group the same store, with the keys of the dead
    # group still in it: the new group must neither reuse nor be misled by them.
    server = dist.TCPStore("127.0.0.1", 0, 1, is_master=True, wait_for_workers=False)
    seen = set()
    for order in ([0, 1, 2], [2, 1, 0], [1, 0, 2]):  # rank 0 first, last, in between
        tokens = _session_round(server.port, 3, order)
        assert len(set(tokens.values())) == 1, tokens  # all ranks hold the same token
        token = tokens[0]
        assert token not in seen  # and it is new to this group
        seen.add(token)


def test_session_handshake_times_out_with_the_missing_ranks_named():
    server = dist.TCPStore("127.0.0.1", 0, 1, is_master=True, wait_for_workers=False)
    with pytest.raises(RuntimeError, match=r"ranks \[1, 2\] did not join"):
        agree_on_session(server, 0, 3, timedelta(seconds=0.3))
    with pytest.raises(RuntimeError, match="no word from rank 0"):
        agree_on_session(server, 1, 3, timedelta(seconds=0.3))
