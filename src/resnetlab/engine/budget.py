"""The time budget: a training-loop hook (:mod:`.hooks`) that plans a run's length.

:class:`TimeBudget` sets the run's length from the measured speed so that
the schedule (one-cycle, cosine, ...) still ends on time. How it decides:

1. the run starts planned for ``epochs`` (or ``max_iters``): the most it may train;
2. after ``WARMUP_STEPS`` steps following the first one (which holds compilation and the
   allocator's first touches), or after ``REPLAN_FRACTION`` of the budget if that comes
   first (a slow step), the speed of those steps sets the plan: the steps that fit
   in what is left of ``budget_s``, counted as the run's wall time (set-up and data loading
   included) minus its evaluations;
3. each time another ``REPLAN_FRACTION`` of the budget has passed, the plan is made again from
   the speed since the last plan (checkpoints and logging included), so a machine that slows
   down or speeds up still ends on time, with the schedule annealed.

The schedule reads the plan at each step (``lr_factor`` of the current total), so a new plan
moves the rest of the schedule. Plans change by a few percent after the first one, and the
lr moves with them by as little; the position (step) of the run never changes. Under
torchrun rank 0 plans and every rank follows. A resumed run starts from the plan saved in
its checkpoint and plans again from the new process's speed and the budget left.
"""

from __future__ import annotations

import math
import sys
from typing import Any

from .distributed import broadcast_object
from .hooks import Hook

WARMUP_STEPS = 20
# After the first plan, plan again each time this fraction of the budget has passed.
REPLAN_FRACTION = 0.05
# What the run spends after its last step that is not evaluation (the final weights, plots
# and report), kept free of training: seconds (at most 5% of the budget).
FINISH_RESERVE_S = 2.0


def plan_steps(*, step: int, cap: int, budget_s: float, spent_s: float, step_s: float) -> int:
    """The run's total steps: ``step`` done, ``step_s`` seconds a step, ``spent_s`` of
    ``budget_s`` gone; at most ``cap``, and ``step`` (stop now) when no time is left."""
    left = budget_s - min(FINISH_RESERVE_S, 0.05 * budget_s) - spent_s
    more = math.floor(left / step_s) if step_s > 0 else cap
    return max(step, min(cap, step + more))


class TimeBudget(Hook):
    """Plans the run's length so that training ends after about ``budget_s`` seconds."""

    def __init__(self, budget_s: float, cap_steps: int, *, announce: bool = True) -> None:
        self.budget_s, self.cap, self.announce = budget_s, cap_steps, announce
        self.every_s = max(budget_s * REPLAN_FRACTION, 1.0)
        self.mark: tuple[int, float] | None = None  # (step, budget-clock seconds) of the last mark
        self.planned = False

    def spent(self, job: Any, st: Any) -> float:
        """Seconds of the budget used: the run's wall time, its evaluations excluded."""
        return job.wall() - st.timing.eval_s

    def after_step(self, job: Any, st: Any) -> None:
        if self.mark is None:  # the first step of this process: timing starts after it
            self.mark = (st.step, self.spent(job, st))
            return
        due = self.spent(job, st) - self.mark[1] >= self.every_s
        if due or (not self.planned and st.step - self.mark[0] >= WARMUP_STEPS):
            self._plan(job, st)

    def _plan(self, job: Any, st: Any) -> None:
        now = self.spent(job, st)
        step0, t0 = self.mark
        step_s = (now - t0) / (st.step - step0)  # the recent speed, since the last plan
        total = plan_steps(step=st.step, cap=self.cap, budget_s=self.budget_s, spent_s=now,
                           step_s=step_s)  # fmt: skip
        # under torchrun every rank must stop at the same step: rank 0's plan holds
        total = int(broadcast_object(total))
        first = not self.planned
        self.planned, self.mark = True, (st.step, now)
        job.set_total_steps(total)
        if first and self.announce:
            epochs = total / job.steps_per_epoch
            print(f"time budget {self.budget_s:g} s: {total} steps (about {epochs:.1f} epochs) "
                  f"at {1 / step_s:.1f} steps/s", file=sys.stderr)  # fmt: skip


def build_hooks(cfg: Any, total_steps: int, *, announce: bool) -> list[Hook]:
    """The hooks a config asks for (the time budget)."""
    hooks: list[Hook] = []
    if cfg.budget_s is not None:
        hooks.append(TimeBudget(cfg.budget_s, total_steps, announce=announce))
    return hooks
