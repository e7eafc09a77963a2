"""A time budget sets a run's length from its measured speed; the schedule ends on time."""

from types import SimpleNamespace

import pytest

from resnetlab.config import ConfigError, ScheduleConfig, TrainConfig, build_config
from resnetlab.engine import TrainingError, train
from resnetlab.engine.budget import FINISH_RESERVE_S, TimeBudget, plan_steps
from resnetlab.engine.optim import lr_factor

TINY = {"model": "resnet20", "model_args": {"depth": 8},
        "data": {"spec": "synthetic:n=256,test=64,size=16,classes=4", "batch_size": 32},
        "optim": {"lr": 0.05}, "precision": "fp32", "schedule": {"name": "onecycle"}}  # fmt: skip


def test_plan_fits_the_time_left():
    # 10 s of 60 spent at 0.1 s a step: 500 - 20 more steps fit (the finish reserve kept)
    more = int((60 - FINISH_RESERVE_S - 10) / 0.1)
    assert plan_steps(step=20, cap=10**6, budget_s=60, spent_s=10, step_s=0.1) == 20 + more
    assert plan_steps(step=20, cap=100, budget_s=60, spent_s=10, step_s=0.1) == 100  # the cap
    assert plan_steps(step=20, cap=100, budget_s=60, spent_s=61, step_s=0.1) == 20  # stop now


class FakeJob:
    """What TimeBudget reads of a job, on a clock the test moves."""

    steps_per_epoch = 100

    def __init__(self, setup_s: float) -> None:
        self.clock, self.total_steps = setup_s, 10**6

    def wall(self) -> float:
        return self.clock

    def set_total_steps(self, total: int) -> None:
        self.total_steps = total


@pytest.mark.parametrize("slowdown", [1.0, 2.0, 0.5])
def test_plan_follows_a_machine_that_changes_speed(slowdown):
    """5 s of set-up, 0.1 s a step, then from step 200 `slowdown` x that: the run still ends
    on its 60 s budget, and the one-cycle schedule read from the plan ends annealed."""
    job, hook = FakeJob(5.0), TimeBudget(60.0, 10**6, announce=False)
    st = SimpleNamespace(step=0, timing=SimpleNamespace(eval_s=0.0))
    one = ScheduleConfig(name="onecycle")
    lrs = []
    while st.step < job.total_steps:
        job.clock += 0.1 if st.step < 200 else 0.1 * slowdown
        lrs.append(lr_factor(st.step, one, steps_per_epoch=100, total_steps=job.total_steps))
        st.step += 1
        hook.after_step(job, st)
    reserve = min(FINISH_RESERVE_S, 0.05 * 60)
    assert 60 - reserve - 1.0 <= job.clock <= 60 - reserve + 0.2
    assert max(lrs) > 0.99 and lrs[-1] < 1e-3  # peaked, then annealed to the end


def test_budget_must_be_positive():
    with pytest.raises(ConfigError, match=r"budget_s=0.*seconds > 0"):
        build_config(TrainConfig, {"budget_s": 0})


def test_run_ends_on_its_budget(tmp_path, capsys):
    budget = 15.0
    data = {"spec": "synthetic:n=1024,test=64,size=16,classes=4", "batch_size": 32}
    cfg = {**TINY, "data": data, "output": str(tmp_path / "run"), "epochs": 500,
           "eval_every": 0, "budget_s": budget}  # fmt: skip
    summary = train(cfg, progress=False, epoch_lines=True)
    cap = 500 * 32
    # the budget, not the cap, ended it (how many steps fit depends on this machine's load)
    assert summary["steps"] < cap, summary["steps"]
    assert summary["steps"] == summary["planned_steps"]
    assert summary["wall_time_s"] - summary["eval_time_s"] < budget + 5.0
    assert "time budget 15 s:" in capsys.readouterr().err
    # the finished run is kept: a resume says how to give it more time
    with pytest.raises(TrainingError, match=r"is a finished run.*budget_s=30"):
        train(cfg, resume=True, progress=False)


def test_cap_wins_when_the_budget_is_large(tmp_path):
    cfg = {**TINY, "output": str(tmp_path / "run"), "epochs": 4, "budget_s": 3600}
    summary = train(cfg, progress=False)
    assert summary["steps"] == 4 * 8 and summary["epochs"] == 4


def test_cli_budget_flag_sets_budget_s(tmp_path):
    import subprocess
    import sys

    from resnetlab.cli import build_parser, parse_with_overrides
    from resnetlab.cli.train import _train_config

    args = parse_with_overrides(build_parser(), ["train", "--data", "synthetic", "--budget",
                                                 "90", "--epochs", "40"])  # fmt: skip
    cfg = _train_config(args)
    assert cfg.budget_s == 90 and cfg.epochs == 40
    proc = subprocess.run([sys.executable, "-m", "resnetlab", "train", "--data", "synthetic",
                           "--budget", "0", "--output", str(tmp_path / "r")],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "invalid budget_s=0.0: expected seconds > 0" in proc.stderr
