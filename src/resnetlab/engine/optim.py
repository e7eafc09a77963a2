"""Optimizers and learning-rate schedules."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from ..config import OptimConfig, ScheduleConfig


def param_groups(
    model: nn.Module, cfg: OptimConfig, *, backbone_lr_scale: float = 1.0
) -> list[dict]:
    """The optimizer's parameter groups: one, or BN parameters and biases split off without
    decay, and the backbone (all but ``fc``) split off at ``backbone_lr_scale`` x the lr.

    Every parameter is in a group, also one that is frozen now: fine-tuning unfreezes
    parameters later, and a parameter without a gradient is skipped by the step.
    """
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        backbone = backbone_lr_scale != 1.0 and not name.startswith("fc.")
        no_decay = cfg.no_decay_norm_bias and p.ndim <= 1
        groups.setdefault((backbone, no_decay), []).append(p)
    out = []
    for (backbone, no_decay), params in groups.items():
        group: dict = {"params": params}
        if no_decay:
            group["weight_decay"] = 0.0
        if backbone:
            group["lr"] = cfg.lr * backbone_lr_scale
        out.append(group)
    return out


def build_optimizer(
    model: nn.Module, cfg: OptimConfig, *, backbone_lr_scale: float = 1.0
) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg, backbone_lr_scale=backbone_lr_scale)
    if cfg.name == "sgd":
        return torch.optim.SGD(
            groups,
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov,
            weight_decay=cfg.weight_decay,
        )
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


def lr_factor(step: int, cfg: ScheduleConfig, *, steps_per_epoch: int, total_steps: int) -> float:
    """The multiplier of the base lr at iteration ``step`` (0-based).

    Every schedule is one pure function of the iteration: schedules step per iteration,
    and resuming needs nothing but the step count.
    """
    epoch = step / steps_per_epoch
    if cfg.name == "onecycle":
        # Smith & Topin 2017: cosine up from lr/div_factor to lr, then down to a tiny lr.
        peak = max(1, int(cfg.pct_start * total_steps))
        lo, end = 1.0 / cfg.div_factor, 1.0 / (cfg.div_factor * cfg.final_div_factor)
        if step < peak:
            return lo + (1 - lo) * (1 - math.cos(math.pi * step / peak)) / 2
        t = min(1.0, (step - peak) / max(1, total_steps - peak))
        return end + (1 - end) * (1 + math.cos(math.pi * t)) / 2
    if cfg.name == "cosine":
        warm = cfg.warmup_epochs * steps_per_epoch
        t = min(1.0, max(0.0, (step - warm) / max(1.0, total_steps - warm)))
        factor = cfg.min_lr_factor + (1 - cfg.min_lr_factor) * (1 + math.cos(math.pi * t)) / 2
    elif cfg.name == "multistep":
        now = epoch if cfg.milestone_unit == "epoch" else step
        factor = cfg.gamma ** sum(now >= m for m in cfg.milestones)
    else:
        factor = 1.0
    if cfg.warmup_epochs and epoch < cfg.warmup_epochs:
        w = cfg.warmup_factor
        factor *= w + (1 - w) * epoch / cfg.warmup_epochs
    if step < cfg.constant_warmup_iters:
        factor *= cfg.constant_warmup_factor
    return factor


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    cfg: ScheduleConfig,
    *,
    steps_per_epoch: int,
    total_steps: int | Callable[[], int],
) -> torch.optim.lr_scheduler.LambdaLR:
    """The schedule as a LambdaLR; ``total_steps`` may be a function that returns the current
    length of the run, for a run whose length is re-planned while it trains (a time budget)."""
    total = total_steps if callable(total_steps) else lambda: total_steps
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_factor(step, cfg, steps_per_epoch=steps_per_epoch, total_steps=total()),
    )
