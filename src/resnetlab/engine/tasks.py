"""What a training run learns: the part of the engine that differs between tasks.

The trainer (``trainer.py``) owns the order of a run: the run directory, the optimizer
step (autocast, scaling, clipping, schedule, EMA), checkpoints, resume and signals. A
:class:`Task` owns what depends on the task: its data, its model, the loss of a batch, the
evaluation and its headline metric, and what the run leaves behind (weights, plots).
:class:`Classification` is the image classifier; ``dense.py`` holds detection and
segmentation on the same engine.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import warnings
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import TrainConfig
from ..data import build_loaders
from ..data.build import DEFAULT_BATCH_SIZE
from ..errors import TrainingError
from ..io import atomic_write_text
from ..models import create_model, save_weights
from ..models.weights import weights_meta
from . import distributed as dist
from .finetune import FineTuning, weights_card
from .metrics import evaluate
from .report import plot_confusion

if TYPE_CHECKING:
    from pathlib import Path

    from .trainer import Job


class Task:
    """The task-specific half of a run. Subclasses fill in every method."""

    name = ""
    #: the row key of the headline evaluation metric (higher is better): best.pt follows it
    primary = ""
    #: whether a training batch has an accuracy (the row's ``train_acc``)
    has_train_acc = False
    #: False during an epoch without augmentation (``data.plain_final_epochs``): no mixing
    augment = True
    #: the scale of an epoch under progressive resizing (``data.resize_from``); None: full size
    train_scale: float | None = None

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.card = weights_card(cfg.weights) if cfg.weights else None

    def build_data(self, dinfo: dist.DistInfo, device: torch.device, workers: int,
                   run_dir: Path, *, verbose: bool) -> tuple[Any, Any, Any]:  # fmt: skip
        """The training loader, the evaluation loader and the data's info."""
        raise NotImplementedError

    def build_model(self, info: Any, *, verbose: bool) -> nn.Module:
        raise NotImplementedError

    def use_data(self, info: Any, device: torch.device) -> None:
        """Get ready for loaders of ``info`` made elsewhere (``trainer.build_job``)."""

    def finetuning(self, model: nn.Module) -> FineTuning | None:
        """What to freeze when, for runs from pretrained weights; None: nothing."""
        return None

    def channels_last(self, device: torch.device) -> bool:
        """Whether the model trains in channels_last when the config asks for it."""
        return self.cfg.channels_last

    def loss(self, forward: nn.Module, images: Any, targets: Any) -> tuple[torch.Tensor, Any]:
        """The training loss of a batch (called under autocast) and the model's output."""
        raise NotImplementedError

    def batch_size(self, targets: Any) -> int:
        return len(targets)

    def correct(self, output: Any, targets: Any) -> torch.Tensor | None:
        """Correctly classified training samples of a batch (tasks with an accuracy)."""
        return None

    def evaluate(self, job: Job, model: nn.Module) -> dict[str, Any]:
        raise NotImplementedError

    def eval_row(self, result: dict[str, Any]) -> dict[str, Any]:
        """The metrics row's evaluation fields (``test_*``) of :meth:`evaluate`'s result."""
        raise NotImplementedError

    def summary(self, result: dict[str, Any]) -> dict[str, Any]:
        """summary.json's evaluation fields."""
        return {**self.eval_row(result), "eval_n": result.get("n")}

    def model_meta(self, model: nn.Module, info: Any) -> dict[str, Any]:
        """The self-description a checkpoint carries (what predict/export read)."""
        raise NotImplementedError

    def save_final(self, model: nn.Module, path: Path, info: Any) -> None:
        """Write the final weights (``model.safetensors`` + sidecar)."""
        raise NotImplementedError

    def plots(self, job: Job, model: nn.Module, result: dict[str, Any]) -> None:
        """The run's task-specific figures (confusion matrix, drawn predictions)."""


def build_task(cfg: TrainConfig) -> Task:
    if cfg.task == "classification":
        return Classification(cfg)
    from .dense import DENSE_TASKS

    return DENSE_TASKS[cfg.task](cfg)


class Classification(Task):
    """Image classification: cross-entropy (label smoothing, mixup/cutmix), top-1/top-5."""

    name = "classification"
    primary = "test_top1"
    has_train_acc = True

    def build_data(self, dinfo: dist.DistInfo, device: torch.device, workers: int,
                   run_dir: Path, *, verbose: bool) -> tuple[Any, Any, Any]:  # fmt: skip
        cfg, card = self.cfg, self.card
        # Pretrained weights say how their images were prepared and how many channels they take.
        in_chans = cfg.model_args.get("in_chans") or (card["in_chans"] if card else None)
        train_loader, eval_loader, info = build_loaders(
            dataclasses.replace(cfg.data, num_workers=workers), in_chans=in_chans, seed=cfg.seed,
            rank=dinfo.rank, world_size=dinfo.world_size, device=device,
            channels_last=cfg.channels_last, preprocessing=card["preprocessing"] if card else None,
        )  # fmt: skip
        if verbose and info.plan:
            _record_data_scan(run_dir, info)
        default_batch = cfg.data.batch_size is None
        if verbose and default_batch and train_loader.batch_size != DEFAULT_BATCH_SIZE:
            print(f"batch size {train_loader.batch_size}: {train_loader.dataset_size} training "
                  f"images give {len(train_loader)} steps per epoch (data.batch_size overrides)",
                  file=sys.stderr)  # fmt: skip
        self.use_data(info, device)
        return train_loader, eval_loader, info

    def use_data(self, info: Any, device: torch.device) -> None:
        self.mixer = _mixer(self.cfg, info.num_classes)

    def build_model(self, info: Any, *, verbose: bool) -> nn.Module:
        """The model of the config for the data's classes and channels, from its weights."""
        cfg, card = self.cfg, self.card
        model_args = {k: v for k, v in cfg.model_args.items() if k != "in_chans"}
        meta = card["meta"] if card else None
        if meta and meta.get("architecture") not in (None, "custom", cfg.model):
            raise TrainingError(
                f"{cfg.weights} holds a {meta['architecture']}, not a {cfg.model}: pass "
                f"--model {meta['architecture']} (and its model_args) to fine-tune it"
            )
        with warnings.catch_warnings():
            # the load report below says what a warning would (e.g. the head re-initialised)
            warnings.filterwarnings("ignore", message="classifier re-initialised")
            model = create_model(cfg.model, num_classes=info.num_classes,
                                 in_chans=info.model_channels, weights=cfg.weights, **model_args)  # fmt: skip
        report = getattr(model, "load_report", None)
        if verbose and report is not None:
            print(str(report), file=sys.stderr)
            if report.reinitialized:
                names = ", ".join(info.class_names[:5]) + (", ..." if info.num_classes > 5 else "")
                print(f"new head: {info.num_classes} classes ({names})", file=sys.stderr)
        return model

    def finetuning(self, model: nn.Module) -> FineTuning | None:
        return FineTuning(model, self.cfg.finetune) if self.cfg.weights else None

    def loss(self, forward: nn.Module, images: Any, targets: Any) -> tuple[torch.Tensor, Any]:
        labels = targets
        if self.train_scale is not None:
            images = _resized(images, self.train_scale)
        if self.mixer is not None and self.augment:
            images, labels = self.mixer(images, targets)
        logits = forward(images)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.cfg.label_smoothing)
        return loss, logits

    def batch_size(self, targets: Any) -> int:
        return targets.shape[0]

    def correct(self, output: Any, targets: Any) -> torch.Tensor:
        return (output.argmax(1) == targets).sum()

    def evaluate(self, job: Job, model: nn.Module) -> dict[str, Any]:
        tally = evaluate(
            model, job.eval_loader, num_classes=job.info.num_classes, device=job.device,
            autocast_dtype=job.precision.dtype, tta_flip=self.cfg.tta_flip,
            reduce=dist.all_reduce_sum,
        )  # fmt: skip
        return tally.result(job.info.class_names)

    def eval_row(self, result: dict[str, Any]) -> dict[str, Any]:
        return {"test_loss": result.get("loss"), "test_top1": result.get("top1"),
                "test_top5": result.get("top5")}  # fmt: skip

    def model_meta(self, model: nn.Module, info: Any) -> dict[str, Any]:
        return weights_meta(model, preprocessing=info.to_preprocessing(),
                            class_names=info.class_names)  # fmt: skip

    def save_final(self, model: nn.Module, path: Path, info: Any) -> None:
        save_weights(model, path, preprocessing=info.to_preprocessing(),
                     class_names=info.class_names)  # fmt: skip

    def plots(self, job: Job, model: nn.Module, result: dict[str, Any]) -> None:
        if result:
            plot_confusion(result["confusion"], list(job.info.class_names),
                           job.run_dir / "confusion.png")  # fmt: skip


def _mixer(cfg: TrainConfig, num_classes: int):
    """Mixup/CutMix on batches (torchvision transforms v2), or None."""
    from torchvision.transforms import v2

    ops = []
    if cfg.mixup_alpha > 0:
        ops.append(v2.MixUp(alpha=cfg.mixup_alpha, num_classes=num_classes))
    if cfg.cutmix_alpha > 0:
        ops.append(v2.CutMix(alpha=cfg.cutmix_alpha, num_classes=num_classes))
    if not ops:
        return None
    return ops[0] if len(ops) == 1 else v2.RandomChoice(ops)


def _record_data_scan(run_dir: Path, info: Any) -> None:
    """Say how an image folder is read (one line, and its warnings) and keep the scan."""
    print(info.plan, file=sys.stderr)
    for warning in info.scan["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    text = json.dumps({"plan": info.plan, **info.scan}, indent=2)
    atomic_write_text(run_dir / "data_scan.json", text)


def _resized(images: torch.Tensor, scale: float) -> torch.Tensor:
    """A batch scaled by ``scale`` (antialiased bilinear, as torchvision's Resize), in the
    memory format it came in."""
    h, w = images.shape[-2:]
    channels_last = images.is_contiguous(memory_format=torch.channels_last)
    out = F.interpolate(images, size=(round(h * scale), round(w * scale)), mode="bilinear",
                        antialias=True, align_corners=False)  # fmt: skip
    return out.contiguous(memory_format=torch.channels_last) if channels_last else out
