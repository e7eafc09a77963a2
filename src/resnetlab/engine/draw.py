"""Predictions drawn on their images: boxes, instance masks and semantic masks.

torchvision.utils draws (``draw_bounding_boxes``, ``draw_segmentation_masks``,
``make_grid``); this module only picks colours per class, upscales small images so that
labels stay legible, and writes PNGs.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..io import atomic_write_bytes

# Images smaller than this (the longer side) are drawn upscaled: a label's text is ~10 px.
MIN_DRAWN_SIDE = 256


def class_colors(num_classes: int) -> list[tuple[int, int, int]]:
    """One distinct colour per class (hues spread evenly; index 0 is the first class)."""
    return [
        tuple(int(255 * c) for c in colorsys.hsv_to_rgb(i / max(num_classes, 1), 0.85, 1.0))
        for i in range(num_classes)
    ]


def _as_uint8(image: torch.Tensor) -> torch.Tensor:
    image = image.detach().cpu()
    if image.dtype != torch.uint8:
        image = (image.float().clamp(0, 1) * 255).round().to(torch.uint8)
    if image.shape[0] == 1:
        image = image.expand(3, -1, -1)
    return image.contiguous()


def _scale_for(image: torch.Tensor) -> int:
    side = max(image.shape[-2:])
    return max(1, -(-MIN_DRAWN_SIDE // side)) if side < MIN_DRAWN_SIDE else 1


def _upscale(image: torch.Tensor, scale: int) -> torch.Tensor:
    if scale == 1:
        return image
    return image.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)


def draw_detections(
    image: torch.Tensor,
    prediction: dict[str, Any],
    class_names: Sequence[str],
    *,
    score_threshold: float = 0.5,
) -> torch.Tensor:
    """``image`` ([3, H, W], float in 0..1 or uint8) with the boxes (and masks) of
    ``prediction`` (torchvision's detection output; labels 1..K) scoring at least the
    threshold, each labelled with its class and score. Returns a uint8 [3, H', W'] image."""
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

    scale = _scale_for(image)
    out = _upscale(_as_uint8(image), scale)
    scores = prediction.get("scores")
    keep = (
        torch.ones(len(prediction["boxes"]), dtype=torch.bool)
        if scores is None
        else scores.detach().cpu() >= score_threshold
    )
    labels = prediction["labels"].detach().cpu()[keep]
    colors = class_colors(len(class_names))
    box_colors = [colors[int(k) - 1] for k in labels]
    masks = prediction.get("masks")
    if masks is not None and keep.any():
        m = masks.detach().cpu()[keep]
        m = (m[:, 0] if m.ndim == 4 else m) > 0.5
        out = draw_segmentation_masks(out, _upscale(m, scale), alpha=0.4, colors=box_colors)
    if keep.any():
        boxes = prediction["boxes"].detach().cpu().float()[keep] * scale
        texts = [class_names[int(k) - 1] for k in labels]
        if scores is not None:
            texts = [
                f"{t} {s:.2f}" for t, s in zip(texts, scores.cpu()[keep].tolist(), strict=True)
            ]
        out = draw_bounding_boxes(out, boxes, texts, colors=box_colors, width=2)
    return out


def draw_semantic(image: torch.Tensor, mask: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``image`` with a semantic mask ([H, W], 0 = background, 1..K; other values such as
    the 255 of ignored pixels are left undrawn) laid over it in the classes' colours."""
    from torchvision.utils import draw_segmentation_masks

    scale = _scale_for(image)
    out = _upscale(_as_uint8(image), scale)
    mask = _upscale(mask.detach().cpu(), scale)
    classes = [k for k in range(1, num_classes + 1) if bool((mask == k).any())]
    if not classes:
        return out
    colors = class_colors(num_classes)
    masks = torch.stack([mask == k for k in classes])
    return draw_segmentation_masks(out, masks, alpha=0.5, colors=[colors[k - 1] for k in classes])


def encode_png(image: torch.Tensor) -> bytes:
    """A uint8 [3, H, W] image as PNG bytes (Pillow: torchvision.io's encoders are deprecated)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).contiguous().numpy()).save(buffer, format="PNG")
    return buffer.getvalue()


def save_png(image: torch.Tensor, path: Path) -> Path:
    """Write a uint8 [3, H, W] image as a PNG (atomically)."""
    atomic_write_bytes(path, encode_png(image))
    return path


def save_grid(images: list[torch.Tensor], path: Path, *, columns: int = 4) -> Path:
    """Drawn images side by side in rows of ``columns`` (padded to the largest), as a PNG."""
    from torchvision.utils import make_grid

    h = max(im.shape[-2] for im in images)
    w = max(im.shape[-1] for im in images)
    padded = [torch.nn.functional.pad(im, (0, w - im.shape[-1], 0, h - im.shape[-2]))
              for im in images]  # fmt: skip
    grid = make_grid(torch.stack(padded), nrow=columns, padding=4, pad_value=255)
    return save_png(grid, path)
