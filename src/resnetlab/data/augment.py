"""Vectorized augmentations of a whole batch tensor, with per-sample randomness.

torchvision.transforms.v2 applies one set of random parameters to a whole batched tensor (one
crop offset, one flip decision), and applying it image by image means a Python loop per batch.
These functions draw every sample's parameters at once from an explicit ``torch.Generator``
(on the CPU, so results are identical on every device) and apply them with indexing and masks.
Each function draws a fixed number of values for a given batch size, so the random stream, and
hence the result, is a pure function of the generator's seed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["random_crop", "random_erasing", "random_hflip"]


def random_crop(images: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Zero-pad each side by ``padding`` and crop back to the original size at a random offset.

    ``images`` is (B, C, H, W) of any dtype; each sample gets its own offset.
    """
    if padding <= 0:
        return images
    b, c, h, w = images.shape
    dev = images.device
    offset_y = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(dev)
    offset_x = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(dev)
    padded = F.pad(images, (padding, padding, padding, padding))
    # (B, C, 2p+1, 2p+1, H, W): every crop window as a view, then one pick per sample.
    windows = padded.unfold(2, h, 1).unfold(3, w, 1)
    return windows[torch.arange(b, device=dev), :, offset_y, offset_x]


def random_hflip(images: torch.Tensor, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Mirror each sample left-right with probability ``p``."""
    flip = (torch.rand(images.shape[0], generator=generator) < p).to(images.device)
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def random_erasing(
    images: torch.Tensor,
    p: float,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.02, 0.33),
    ratio: tuple[float, float] = (0.3, 3.3),
    value: float = 0.0,
) -> torch.Tensor:
    """Set one random rectangle per sample to ``value`` with probability ``p``.

    Same parameters as ``torchvision.transforms.v2.RandomErasing`` (area fraction ``scale``,
    aspect ``ratio`` log-uniform). Where torchvision re-draws a rectangle that does not fit,
    this clamps its sides to the image, so all samples are drawn in one go.
    """
    if p <= 0:
        return images
    b, _, h, w = images.shape
    dev = images.device
    u = torch.rand(b, 5, generator=generator)
    apply = u[:, 0] < p
    area = h * w * (scale[0] + (scale[1] - scale[0]) * u[:, 1])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[:, 2])
    eh = torch.sqrt(area * aspect).round().clamp(1, h).long()
    ew = torch.sqrt(area / aspect).round().clamp(1, w).long()
    top = (u[:, 3] * (h - eh + 1)).floor().long()
    left = (u[:, 4] * (w - ew + 1)).floor().long()
    rows = torch.arange(h)[None, :]
    cols = torch.arange(w)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < (top + eh)[:, None])  # (B, H)
    in_cols = (cols >= left[:, None]) & (cols < (left + ew)[:, None])  # (B, W)
    mask = apply[:, None, None] & in_rows[:, :, None] & in_cols[:, None, :]  # (B, H, W)
    return images.masked_fill(mask[:, None].to(dev), value)
