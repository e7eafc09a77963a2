"""Evaluation: loss, top-1/top-5, per-class accuracy and the confusion matrix.

Counted by hand as sums (a few lines of torch) so that results from several processes
reduce with one all-reduce of the sums, with no sample counted twice.
"""

from __future__ import annotations

import sys
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class Tally:
    """Running sums over batches of logits and labels."""

    def __init__(self, num_classes: int, device: torch.device | str = "cpu") -> None:
        self.num_classes = num_classes
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.top1 = torch.zeros((), dtype=torch.long, device=device)
        self.top5 = torch.zeros((), dtype=torch.long, device=device)
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.long, device=device)

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        logits = logits.float()
        self.loss_sum += F.cross_entropy(logits, labels, reduction="sum").double()
        k = min(5, logits.shape[1])
        topk = logits.topk(k, dim=1).indices
        hits = topk == labels[:, None]
        self.top1 += hits[:, 0].sum()
        self.top5 += hits.any(dim=1).sum()
        idx = labels * self.num_classes + topk[:, 0]
        self.confusion += torch.bincount(idx, minlength=self.num_classes**2).view_as(self.confusion)

    def tensors(self) -> list[torch.Tensor]:
        return [self.loss_sum, self.top1, self.top5, self.confusion]

    @property
    def n(self) -> int:
        return int(self.confusion.sum())

    def result(self, class_names: list[str] | tuple[str, ...] | None = None) -> dict[str, Any]:
        n = max(self.n, 1)
        conf = self.confusion.cpu()
        per_class_n = conf.sum(1).clamp_min(1)
        per_class = (conf.diag() / per_class_n).tolist()
        names = list(class_names) if class_names else [str(i) for i in range(self.num_classes)]
        return {
            "n": self.n,
            "loss": float(self.loss_sum) / n,
            "top1": float(self.top1) / n,
            "top5": float(self.top5) / n,
            "per_class": dict(zip(names, per_class, strict=True)),
            "confusion": conf.tolist(),
        }


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Any,
    *,
    num_classes: int,
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
    tta_flip: bool = False,
    reduce=None,
    progress: bool = False,
) -> Tally:
    """Run ``model`` over ``loader`` once and tally the results (``reduce`` sums across ranks)."""
    from tqdm import tqdm

    was_training = model.training
    model.eval()
    tally = Tally(num_classes, device)
    amp = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext()
    try:
        bar = progress and sys.stderr.isatty()  # off a terminal a bar is only redraws
        for images, labels in tqdm(loader, desc="eval", leave=False, disable=not bar):
            with amp:
                logits = model(images)
                if tta_flip:
                    logits = (
                        logits.float().softmax(1) + model(images.flip(3)).float().softmax(1)
                    ).log()
            tally.update(logits, labels.to(device))
    finally:
        model.train(was_training)
    if reduce is not None:
        for t in tally.tensors():
            reduce(t)
    return tally
