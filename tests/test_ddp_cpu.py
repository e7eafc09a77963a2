"""Ranks training side by side on one CPU take their share of its cores."""

import json
import os
import subprocess
import sys

import pytest
import torch

from resnetlab.device import cpu_share, usable_cores
from resnetlab.engine import distributed
from resnetlab.engine.distributed import DistInfo, cpu_resources, user_omp_threads

CPU = torch.device("cpu")


def test_two_ranks_on_two_cores_get_one_thread_and_decode_in_process():
    assert cpu_share(2, None, 2, cores=2) == (1, 0)


def test_four_ranks_on_sixteen_cores_share_them():
    assert cpu_share(4, None, 2, cores=16) == (4, 2)
    assert cpu_share(4, None, 8, cores=16) == (4, 3)  # workers: the share less one core


def test_more_ranks_than_cores_still_get_a_thread():
    assert cpu_share(4, None, 2, cores=2) == (1, 0)


def test_user_threads_are_kept_and_workers_still_capped():
    assert cpu_share(2, 3, 2, cores=2) == (3, 0)
    assert cpu_share(2, 3, 2, cores=2, omp_threads=5) == (3, 0)  # threads= before OMP


def test_user_omp_threads_are_kept():
    assert cpu_share(4, None, 2, cores=16, omp_threads=1) == (1, 2)


def test_one_process_is_unchanged():
    assert cpu_share(1, None, 2, cores=2) == (None, 2)
    assert cpu_share(1, 6, 4, cores=2) == (6, 4)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="local_world_size"):
        cpu_share(0, None, 2, cores=2)
    with pytest.raises(ValueError, match="num_workers"):
        cpu_share(2, None, -1, cores=2)


def test_usable_cores_is_the_affinity_mask():
    assert usable_cores() == len(os.sched_getaffinity(0))


TORCHRUN_ENV = {"TORCHELASTIC_RUN_ID": "none", "LOCAL_WORLD_SIZE": "2"}


@pytest.mark.parametrize(
    ("omp", "launcher", "expected"),
    [
        (None, {}, None),  # unset
        ("1", {}, None),  # torchrun's own: absent from its exec-time environment
        ("1", {"OMP_NUM_THREADS": "1"}, 1),  # the user's 1
        ("1", None, 1),  # launcher's environment unreadable: taken as the user's
        ("4", {}, 4),  # torchrun only ever sets 1
        ("3,1", {"OMP_NUM_THREADS": "3,1"}, 3),  # a list: the outer level's count
        ("many", {"OMP_NUM_THREADS": "many"}, None),  # not a count
    ],
)
def test_user_omp_threads_tells_the_users_variable_from_torchruns(
    monkeypatch, omp, launcher, expected
):
    for key, value in TORCHRUN_ENV.items():
        monkeypatch.setenv(key, value)
    if omp is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", omp)
    monkeypatch.setattr(distributed, "_launcher_environ", lambda: launcher)
    assert user_omp_threads(DistInfo(world_size=2, local_world_size=2)) == expected


def test_omp_outside_torchrun_is_the_users(monkeypatch):
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(distributed, "_launcher_environ", lambda: {})
    assert user_omp_threads(DistInfo(world_size=2, local_world_size=2)) == 1


def test_cpu_resources_prints_the_choice_once(monkeypatch, capsys):
    monkeypatch.setattr(distributed, "usable_cores", lambda: 2)
    monkeypatch.setattr(distributed, "user_omp_threads", lambda info: None)
    info = DistInfo(rank=0, world_size=2, local_world_size=2)
    assert cpu_resources(info, CPU, threads=None, num_workers=2, announce=True) == (1, 0)
    assert capsys.readouterr().err == (
        "distributed on CPU: 2 ranks x 1 thread, 0 loader workers each (2 cores)\n"
    )
    assert cpu_resources(info, CPU, threads=None, num_workers=2) == (1, 0)
    assert capsys.readouterr().err == ""


def test_cpu_resources_leaves_gpus_and_single_processes_alone():
    two = DistInfo(world_size=2, local_world_size=2)
    assert cpu_resources(two, torch.device("cuda", 0), threads=None, num_workers=4) == (None, 4)
    assert cpu_resources(DistInfo(), CPU, threads=None, num_workers=4) == (None, 4)


@pytest.mark.slow
@pytest.mark.distributed
def test_two_ranks_size_themselves_without_the_users_omp(tmp_path):
    out = tmp_path / "ddp"
    # Without the user's OMP_NUM_THREADS torchrun sets its own "1", which must not count
    # as a choice of the user's.
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           "-m", "resnetlab", "train", "--model", "resnet20", "model_args={depth: 8}",
           "--data", "synthetic:n=256,size=16,classes=4", "--epochs", "1", "--batch-size", "16",
           "--output", str(out), "--quiet", "precision=fp32", "data.num_workers=2"]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    threads, workers = cpu_share(2, None, 2, cores=usable_cores())
    line = f"{threads} thread{'s' * (threads != 1)}, {workers} loader worker{'s' * (workers != 1)}"
    assert proc.stderr.count("distributed on CPU: ") == 1, proc.stderr[-3000:]
    assert f"distributed on CPU: 2 ranks x {line} each (" in proc.stderr, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["threads"], summary["loader_workers"]) == (threads, workers)
    assert summary["world_size"] == 2
