"""Hooks into the training loop.

A hook is an object with any of ``after_backward(job, st)`` (gradients are there, unscaled,
before clipping and the optimizer step: gradient probes), ``after_step(job, st)`` and
``after_epoch(job, st)``. The trainer (:func:`.trainer.train_step` and its epoch loop) calls
them in order; a hook may end the run early by lowering ``job.total_steps`` (the loop stops
when ``st.step`` reaches it). The time budget (:mod:`.budget`) and the experiments' tracking
(:mod:`resnetlab.experiments.common`) are hooks.
"""

from __future__ import annotations

from typing import Any


class Hook:
    """A training-loop hook that does nothing; subclasses override what they need."""

    def after_backward(self, job: Any, st: Any) -> None:
        pass

    def after_step(self, job: Any, st: Any) -> None:
        pass

    def after_epoch(self, job: Any, st: Any) -> None:
        pass
