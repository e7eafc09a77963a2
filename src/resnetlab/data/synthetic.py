"""A small deterministic synthetic dataset for smoke tests and demos.

Each class has a fixed random 4x4 pattern (per channel) blown up to the image size; an image
is half its class pattern and half uniform noise, so a tiny network beats chance within a few
steps. Everything is a pure function of the options, whatever the training seed.

Spec strings: ``synthetic``, ``synthetic:N`` (N training images), or comma-separated options
``synthetic:classes=10,size=32,channels=3,n=512,test=256,seed=0`` (any subset, any order).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .seeding import generator

__all__ = ["SyntheticConfig", "make_synthetic", "parse_synthetic_options"]

_LIMITS = {
    "classes": (2, 1000),
    "size": (8, 512),
    "channels": (1, 3),
    "n": (1, 1_000_000),
    "test": (1, 1_000_000),
    "seed": (0, 2**62),
}


@dataclass(frozen=True)
class SyntheticConfig:
    """Options of the synthetic dataset (see the module docstring for the spec syntax)."""

    classes: int = 10
    size: int = 32
    channels: int = 3
    n: int = 512
    test: int = 256
    seed: int = 0


def parse_synthetic_options(options: str) -> SyntheticConfig:
    """Parse the part after ``synthetic:`` (may be empty)."""
    options = options.strip()
    if not options:
        return SyntheticConfig()
    values: dict[str, int] = {}
    known = [f.name for f in fields(SyntheticConfig)]
    for item in options.split(","):
        key, sep, raw = item.partition("=")
        key, raw = key.strip(), raw.strip()
        if not sep:
            key, raw = "n", key  # synthetic:N
        if key not in known:
            raise ConfigError(
                f"synthetic option {key!r} is unknown; options are {', '.join(known)} "
                "(e.g. synthetic:classes=10,size=32,channels=3,n=512,test=256,seed=0)"
            )
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"synthetic option {key}={raw!r}: must be an integer") from None
        low, high = _LIMITS[key]
        if not low <= value <= high or (key == "channels" and value == 2):
            allowed = "1 or 3" if key == "channels" else f"{low}..{high}"
            raise ConfigError(f"synthetic option {key}={value}: must be {allowed}")
        values[key] = value
    return SyntheticConfig(**values)


def make_synthetic(config: SyntheticConfig, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (N, C, size, size) and int64 labels of the ``train`` or ``test`` split."""
    if split not in ("train", "test"):
        raise ConfigError(f"split={split!r}: the synthetic dataset has 'train' and 'test'")
    count = config.n if split == "train" else config.test
    c, s = config.channels, config.size
    patterns = torch.rand(config.classes, c, 4, 4, generator=generator(config.seed, "patterns"))
    patterns = F.interpolate(patterns, size=(s, s), mode="nearest")
    g = generator(config.seed, "synthetic", split)
    labels = (torch.arange(count) % config.classes)[torch.randperm(count, generator=g)]
    noise = torch.rand(count, c, s, s, generator=g)
    images = (0.5 * patterns[labels] + 0.5 * noise).mul_(255).round_().to(torch.uint8)
    return images, labels.to(torch.int64)
