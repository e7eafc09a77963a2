"""Everything a training run is, at one moment: :class:`TrainState`.

A state holds the model, optimizer, schedule, EMA of the weights, gradient scaler, the
position in the run (epoch, batch, step), the best evaluation so far and the time spent,
and (for hooks, not saved) the last step's loss, output and targets (:class:`StepResult`).
``state_dict()`` is what a checkpoint holds and ``load_state_dict()`` restores it exactly:
the data order and the augmentation draws need no generator state, because the loaders
derive them from fresh generators seeded with (seed, epoch, batch), so the position *is*
that state; the global RNGs (torch: mixup/cutmix, stochastic depth; numpy; python) are
saved as they are after the last step.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..device import training_precision
from ..errors import TrainingError


@dataclass
class Precision:
    dtype: torch.dtype | None  # autocast dtype, None for fp32
    scaler: torch.amp.GradScaler | None

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]


def resolve_precision(name: str, device: torch.device) -> Precision:
    name = training_precision(name, device)
    if name == "fp32":
        return Precision(None, None)
    if name == "fp16":
        if device.type != "cuda":
            raise TrainingError("precision=fp16 needs a CUDA device; use bf16 on CPU")
        return Precision(torch.float16, torch.amp.GradScaler("cuda"))
    return Precision(torch.bfloat16, None)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    try:
        torch.set_rng_state(state["torch"])
        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as e:
        raise TrainingError(f"the checkpoint's random-number state is damaged ({e!r})") from None
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class Timing:
    """Time and images of the whole run, carried across resumes."""

    train_s: float = 0.0  # in training steps
    eval_s: float = 0.0  # in evaluations
    wall_s: float = 0.0  # in everything, set-up included
    images: int = 0  # training images seen, all ranks


@dataclass
class StepResult:
    """The batch of the last optimizer step as hooks see it: the loss (detached), the
    model's output (detached when a tensor) and the targets."""

    loss: torch.Tensor
    output: Any
    targets: Any


@dataclass
class TrainState:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    ema: nn.Module | None = None  # torch.optim.swa_utils.AveragedModel
    scaler: torch.amp.GradScaler | None = None
    epoch: int = 0  # epochs completed
    batch: int = 0  # batches of the current epoch completed
    step: int = 0  # optimizer steps in all
    best: float | None = None  # best headline metric so far (the task's primary, e.g. top-1)
    # Running train loss/accuracy sums of the current epoch: {"loss_sum", "correct", "seen"},
    # reduced over ranks when saved, so that a mid-epoch resume logs exact epoch metrics.
    sums: dict[str, Any] | None = None
    timing: Timing = field(default_factory=Timing)
    # The last step's batch, set by train_step for the hooks that follow it (not saved).
    last: StepResult | None = None

    @property
    def eval_model(self) -> nn.Module:
        """The weights to evaluate and export: the EMA's when there is one."""
        return self.ema.module if self.ema is not None else self.model

    def is_finite(self) -> bool:
        """Whether every weight and statistic (BN running mean/var included) is finite."""
        modules = [self.model] + ([self.ema] if self.ema is not None else [])
        return all(
            bool(torch.isfinite(t).all())
            for m in modules
            for t in m.state_dict().values()
            if t.is_floating_point()
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "step": self.step,
            "epoch": self.epoch,
            "batch": self.batch,
            "best": self.best,
            "rng": rng_state(),
            "epoch_sums": self.sums if self.batch else None,
            "timing": dict(vars(self.timing)),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a checkpoint's state; a damaged one raises TrainingError."""
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            if self.ema is not None and state.get("ema") is not None:
                self.ema.load_state_dict(state["ema"])
            if self.scaler is not None and state.get("scaler") is not None:
                self.scaler.load_state_dict(state["scaler"])
            self.step, self.epoch, self.batch = (int(state[k]) for k in ("step", "epoch", "batch"))
            self.best = state.get("best")
            self.sums = state.get("epoch_sums") if self.batch else None
            timing = state.get("timing") or {}
            self.timing = Timing(**{k: timing[k] for k in vars(Timing()) if k in timing})
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            message = " ".join(str(e).split())[:300]
            raise TrainingError(f"the checkpoint does not fit this run: {message}") from None
        set_rng_state(state["rng"])
