"""Seeded stratified train/validation splits."""

from __future__ import annotations

import torch

from ..errors import ConfigError
from .seeding import generator

__all__ = ["stratified_split"]


def stratified_split(
    labels: torch.Tensor, val_fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split indices into (train, val), taking ``round(val_fraction * n_c)`` of each class c.

    The choice is a pure function of (labels, val_fraction, seed); both index tensors are
    sorted ascending. CIFAR-10 with ``val_fraction=0.1`` gives the ResNet paper's 45k/5k split.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"val_fraction={val_fraction!r}: must be in the open interval (0, 1)")
    labels = torch.as_tensor(labels).cpu()
    g = generator(seed, "stratified-split")
    picked = []
    for cls in torch.unique(labels).tolist():  # a loop over classes, not over samples
        members = (labels == cls).nonzero().flatten()
        k = round(val_fraction * len(members))
        picked.append(members[torch.randperm(len(members), generator=g)[:k]])
    val = torch.cat(picked).sort().values if picked else torch.empty(0, dtype=torch.int64)
    if len(val) == 0:
        raise ConfigError(
            f"val_fraction={val_fraction!r} selects no sample from {len(labels)} "
            "(too few samples per class); use a larger val_fraction"
        )
    is_val = torch.zeros(len(labels), dtype=torch.bool)
    is_val[val] = True
    train = (~is_val).nonzero().flatten()
    return train, val
