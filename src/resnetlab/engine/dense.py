"""Detection and segmentation on the training engine (the :class:`~.tasks.Task` of each).

The models are torchvision's (Faster/Mask R-CNN, RetinaNet, FCOS, DeepLabV3, FCN) on a
resnetlab backbone (``models/dense.py``); the data is a COCO-format set (``data/dense.py``).
Metrics: COCO box and mask mAP by torchmetrics' ``MeanAveragePrecision`` (pycocotools'
evaluation underneath), and for segmentation the per-class IoU of a confusion matrix
(torchmetrics), averaged over the classes present (background included, as in PASCAL VOC).
"""

from __future__ import annotations

import sys
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, MissingDependencyError
from .draw import draw_detections, draw_semantic, save_grid
from .tasks import Task

if TYPE_CHECKING:
    from pathlib import Path

    from . import distributed as dist
    from .trainer import Job

#: segmentation targets mark pixels that count for nothing (padding, crowd objects) so
IGNORE_INDEX = 255
#: eval images drawn with their predictions into the run's predictions.png
DRAWN_IMAGES = 8
# DataConfig.augment for dense data: what each value means here
DENSE_AUGMENT = {"standard": "flip", "flip": "flip", "none": "none"}


def require_dense_deps() -> None:
    """torchmetrics and pycocotools (the ``dense`` extra) or a clear error."""
    try:
        import pycocotools  # noqa: F401
        import torchmetrics  # noqa: F401
    except ImportError as e:
        raise MissingDependencyError(
            f"detection and segmentation need {e.name}: pip install 'resnetlab[dense]'"
        ) from None


class DenseTask(Task):
    """What detection and segmentation share: the COCO-format data and the dense model."""

    def __init__(self, cfg: Any) -> None:
        require_dense_deps()
        super().__init__(cfg)
        self.device = torch.device("cpu")

    def build_data(self, dinfo: dist.DistInfo, device: torch.device, workers: int,
                   run_dir: Path, *, verbose: bool) -> tuple[Any, Any, Any]:  # fmt: skip
        from ..data.dense import build_dense_loaders

        cfg, data = self.cfg, self.cfg.data
        if data.augment not in DENSE_AUGMENT:
            raise ConfigError(
                f"invalid data.augment={data.augment!r} for {cfg.task}: expected one of "
                f"{', '.join(DENSE_AUGMENT)} (standard = flip)"
            )
        self.device = device
        train_loader, eval_loader, info = build_dense_loaders(
            data.spec, task=cfg.task, data_dir=data.data_dir, batch_size=data.batch_size,
            eval_batch_size=data.eval_batch_size, augment=DENSE_AUGMENT[data.augment],
            image_size=data.image_size, seed=cfg.seed, rank=dinfo.rank,
            world_size=dinfo.world_size, val_fraction=data.val_fraction, num_workers=workers,
        )  # fmt: skip
        if verbose and info.plan:
            print(info.plan, file=sys.stderr)
        return train_loader, eval_loader, info

    def spec(self, info: Any) -> dict[str, Any]:
        cfg = self.cfg
        spec = {
            "task": cfg.task,
            "head": cfg.dense.head_for(cfg.task),
            "backbone": cfg.model,
            "num_classes": info.num_classes,
            "backbone_args": dict(cfg.model_args),
            "output_stride": cfg.dense.output_stride,
            "trainable_layers": cfg.dense.trainable_layers,
            "frozen_bn": cfg.dense.frozen_bn,
        }
        if cfg.task == "detection":
            spec["fpn_channels"] = cfg.dense.fpn_channels
        # detection: the detector's own resize, to the data's image size; segmentation: the
        # size DeepLabV3's atrous rates are fitted to
        spec.update(min_size=info.image_size, max_size=info.image_size)
        return spec

    def build_model(self, info: Any, *, verbose: bool) -> nn.Module:
        from ..models.dense import create_dense_model

        model = create_dense_model(self.spec(info), weights=self.cfg.weights)
        report = getattr(model, "load_report", None)
        if verbose and report is not None:
            print(str(report), file=sys.stderr)
        return model

    def channels_last(self, device: torch.device) -> bool:
        # On CPU, oneDNN's channels_last backward of these models crashes the process
        # (SIGSEGV) for narrow backbones at 256 px in torch 2.14: dense models train there
        # in the default layout.
        return self.cfg.channels_last and device.type == "cuda"

    def model_meta(self, model: nn.Module, info: Any) -> dict[str, Any]:
        spec = _unwrap(model).spec
        return {"task": spec.task, "dense": spec.to_dict(), "class_names": list(info.class_names)}

    def save_final(self, model: nn.Module, path: Path, info: Any) -> None:
        from ..models.dense import save_dense_weights

        save_dense_weights(_unwrap(model), path, class_names=info.class_names)

    def _amp(self, job: Job) -> Any:
        dtype = job.precision.dtype
        return torch.autocast(job.device.type, dtype=dtype) if dtype else nullcontext()


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


class Detection(DenseTask):
    """Boxes (and instance masks with Mask R-CNN): the sum of the detector's losses."""

    name = "detection"
    primary = "test_map"

    @property
    def masks(self) -> bool:
        return self.cfg.dense.head_for("detection") == "maskrcnn"

    def loss(self, forward: nn.Module, images: Any, targets: Any) -> tuple[torch.Tensor, Any]:
        keep = ("boxes", "labels", "masks") if self.masks else ("boxes", "labels")
        images = [im.to(self.device) for im in images]
        targets = [{k: t[k].to(self.device) for k in keep} for t in targets]
        losses = forward(images, targets)
        return sum(v.float() for v in losses.values()), losses

    @torch.no_grad()
    def evaluate(self, job: Job, model: nn.Module) -> dict[str, Any]:
        return evaluate_detection(model, job.eval_loader, job.info.class_names,
                                  masks=self.masks, amp=self._amp(job))  # fmt: skip

    def eval_row(self, result: dict[str, Any]) -> dict[str, Any]:
        row = {"test_map": result.get("map"), "test_map50": result.get("map50")}
        if self.masks:
            row["test_mask_map"] = result.get("mask_map")
        return row

    @torch.no_grad()
    def plots(self, job: Job, model: nn.Module, result: dict[str, Any]) -> None:
        images, preds = _first_predictions(model, job.eval_loader, DRAWN_IMAGES)
        drawn = [draw_detections(im, p, job.info.class_names,
                                 score_threshold=self.cfg.dense.score_threshold)
                 for im, p in zip(images, preds, strict=True)]  # fmt: skip
        if drawn:
            save_grid(drawn, job.run_dir / "predictions.png")


def _first_predictions(model: nn.Module, loader: Any, n: int) -> tuple[list, list]:
    """The first ``n`` evaluation images and the detector's predictions for them."""
    was_training = model.training
    model.eval()
    images: list[torch.Tensor] = []
    preds: list[dict[str, Any]] = []
    try:
        for batch, _ in loader:
            device = next(model.parameters()).device
            out = model([im.to(device) for im in batch])
            images += list(batch)
            preds += [{k: v.cpu() for k, v in p.items()} for p in out]
            if len(images) >= n:
                break
    finally:
        model.train(was_training)
    return images[:n], preds[:n]


def _map_metric(masks: bool) -> Any:
    from torchmetrics.detection import MeanAveragePrecision

    return MeanAveragePrecision(
        box_format="xyxy", iou_type=("bbox", "segm") if masks else "bbox", class_metrics=True,
        backend="pycocotools",
    )  # fmt: skip


@torch.no_grad()
def evaluate_detection(
    model: nn.Module,
    loader: Any,
    class_names: tuple[str, ...] | list[str],
    *,
    masks: bool = False,
    amp: Any = None,
    progress: bool = False,
) -> dict[str, Any]:
    """COCO mAP@[.5:.95], mAP@.5 and per-class AP of ``model`` on ``loader`` (box, and mask
    when ``masks``). Results of several processes are gathered by torchmetrics."""
    from tqdm import tqdm

    metric = _map_metric(masks)
    was_training = model.training
    model.eval()
    n = 0
    device = next(model.parameters()).device
    bar = progress and sys.stderr.isatty()
    try:
        for images, targets in tqdm(loader, desc="eval", leave=False, disable=not bar):
            with amp or nullcontext():
                out = model([im.to(device) for im in images])
            preds, gts = [], []
            for p, t in zip(out, targets, strict=True):
                pred = {"boxes": p["boxes"].float().cpu(), "scores": p["scores"].float().cpu(),
                        "labels": p["labels"].cpu()}  # fmt: skip
                gt = {"boxes": t["boxes"].float(), "labels": t["labels"]}
                if masks:
                    pred["masks"] = p["masks"][:, 0].cpu() > 0.5
                    gt["masks"] = t["masks"].bool()
                preds.append(pred)
                gts.append(gt)
            metric.update(preds, gts)
            n += len(images)
    finally:
        model.train(was_training)
    return _map_result(metric.compute(), class_names, n, masks=masks)


def _map_result(res: dict[str, Any], class_names: Any, n: int, *, masks: bool) -> dict[str, Any]:
    box = "bbox_" if masks else ""

    def value(key: str) -> float | None:
        v = float(res[key])
        return None if v < 0 else v  # torchmetrics says -1 where nothing was there to measure

    per_class = {}
    classes = res["classes"].reshape(-1).tolist()
    aps = res[f"{box}map_per_class"].reshape(-1).tolist()
    for k, ap in zip(classes, aps, strict=True):
        if 1 <= k <= len(class_names):
            per_class[class_names[k - 1]] = None if ap < 0 else ap
    out = {"n": n, "map": value(f"{box}map"), "map50": value(f"{box}map_50"),
           "map75": value(f"{box}map_75"), "per_class_ap": per_class}  # fmt: skip
    if masks:
        out.update(mask_map=value("segm_map"), mask_map50=value("segm_map_50"))
    return out


class Segmentation(DenseTask):
    """Per-pixel classes: cross-entropy over the classes and background (DeepLabV3 / FCN)."""

    name = "segmentation"
    primary = "test_miou"

    def loss(self, forward: nn.Module, images: Any, targets: Any) -> tuple[torch.Tensor, Any]:
        images, targets = images.to(self.device), targets.to(self.device)
        if self.channels_last(self.device):
            images = images.contiguous(memory_format=torch.channels_last)
        out = forward(images)
        loss = F.cross_entropy(out["out"].float(), targets, ignore_index=IGNORE_INDEX)
        if "aux" in out:  # torchvision's auxiliary FCN head on stage 3, weighted 0.5
            loss = loss + 0.5 * F.cross_entropy(
                out["aux"].float(), targets, ignore_index=IGNORE_INDEX
            )
        return loss, out

    @torch.no_grad()
    def evaluate(self, job: Job, model: nn.Module) -> dict[str, Any]:
        return evaluate_segmentation(model, job.eval_loader, job.info.class_names,
                                     amp=self._amp(job))  # fmt: skip

    def eval_row(self, result: dict[str, Any]) -> dict[str, Any]:
        return {"test_loss": result.get("loss"), "test_miou": result.get("miou"),
                "test_pixel_acc": result.get("pixel_acc")}  # fmt: skip

    @torch.no_grad()
    def plots(self, job: Job, model: nn.Module, result: dict[str, Any]) -> None:
        """Each drawn eval image twice: with its true mask, then with the predicted one."""
        was_training = model.training
        model.eval()
        drawn: list[torch.Tensor] = []
        k = job.info.num_classes
        try:
            for images, targets in job.eval_loader:
                pred = model(images.to(self.device))["out"].argmax(1).cpu()
                for im, t, p in zip(images, targets, pred, strict=True):
                    drawn += [draw_semantic(im, t, k), draw_semantic(im, p, k)]
                if len(drawn) >= 2 * DRAWN_IMAGES:
                    break
        finally:
            model.train(was_training)
        if drawn:
            save_grid(drawn[: 2 * DRAWN_IMAGES], job.run_dir / "predictions.png")


@torch.no_grad()
def evaluate_segmentation(
    model: nn.Module,
    loader: Any,
    class_names: tuple[str, ...] | list[str],
    *,
    amp: Any = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Loss, pixel accuracy, per-class IoU and their mean (mIoU) of ``model`` on ``loader``.

    IoU_k = TP / (TP + FP + FN) from the confusion matrix of all evaluated pixels; the mean
    is over the classes that occur in the targets or the predictions (background included).
    """
    from torchmetrics.classification import MulticlassConfusionMatrix
    from tqdm import tqdm

    num = len(class_names) + 1
    confusion = MulticlassConfusionMatrix(num_classes=num, ignore_index=IGNORE_INDEX)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    loss_sum, pixels, n = 0.0, 0, 0
    bar = progress and sys.stderr.isatty()
    try:
        for images, targets in tqdm(loader, desc="eval", leave=False, disable=not bar):
            with amp or nullcontext():
                logits = model(images.to(device))["out"].float().cpu()
            loss_sum += float(F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX,
                                              reduction="sum"))  # fmt: skip
            pixels += int((targets != IGNORE_INDEX).sum())
            confusion.update(logits.argmax(1), targets)
            n += images.shape[0]
    finally:
        model.train(was_training)
    conf = confusion.compute().double()  # rows: true class, columns: predicted
    tp = conf.diag()
    union = conf.sum(0) + conf.sum(1) - tp
    iou = torch.where(union > 0, tp / union.clamp_min(1), torch.nan)
    names = ["background", *class_names]
    present = ~torch.isnan(iou)
    return {
        "n": n,
        "loss": loss_sum / max(pixels, 1),
        "miou": float(iou[present].mean()) if present.any() else None,
        "pixel_acc": float(tp.sum() / conf.sum().clamp_min(1)),
        "per_class_iou": {
            name: (None if torch.isnan(v) else float(v)) for name, v in zip(names, iou, strict=True)
        },
    }


DENSE_TASKS: dict[str, type[DenseTask]] = {"detection": Detection, "segmentation": Segmentation}


# --------------------------------------------------------------------------------------
# A trained dense model, from its run directory, weights file or checkpoint.


def dense_weights_path(source: str | Path) -> Path | None:
    """The weights file of ``source`` (a run directory, ``.safetensors`` or checkpoint)
    when it holds a detection or segmentation model; None for a classifier's."""
    from pathlib import Path

    from ..models.dense import read_dense_meta

    src = Path(source)
    if src.is_dir():
        src = src / "model.safetensors"
    if src.suffix == ".pt" and src.is_file():
        from .checkpoint import load_checkpoint

        meta = load_checkpoint(src).get("model_meta")
        return src if isinstance(meta, dict) and meta.get("task") in DENSE_TASKS else None
    if src.suffix != ".safetensors" or not src.is_file():
        return None
    return src if read_dense_meta(src) is not None else None


def load_dense_source(path: Path) -> nn.Module:
    """The dense model saved at ``path`` (:func:`dense_weights_path`'s answer), in eval mode."""
    from ..models.dense import create_dense_model, load_dense_model

    if path.suffix == ".pt":
        from .checkpoint import load_checkpoint

        state = load_checkpoint(path)
        meta = state["model_meta"]
        model = create_dense_model(meta["dense"])
        model.load_state_dict(state["model"])
        model.class_names = tuple(meta["class_names"])
    else:
        model = load_dense_model(path)
    return model.eval()


def evaluate_dense_source(
    path: Path,
    run: Any,
    data: str | None,
    *,
    split: str | None,
    data_dir: str | None,
    batch_size: int | None,
    device: str | None,
    precision: str | None,
    progress: bool,
) -> dict[str, Any]:
    """``resnetlab eval`` of a detection or segmentation model (``evaluator.evaluate_source``
    decides and writes the files): mAP or mIoU on the data's evaluation split."""
    from ..data.dense import build_dense_loaders
    from ..device import resolve_device
    from .state import resolve_precision

    require_dense_deps()
    model = load_dense_source(path)
    spec = model.spec
    if data is None:
        if run is None:
            raise ConfigError(
                f"{path} has no run config beside it to say what data it was trained on: pass "
                "the dataset, e.g. --data coco:PATH"
            )
        data = run.config.data.spec
    if split not in (None, "val"):
        raise ConfigError(f"split={split!r}: {spec.task} sets are evaluated on their val split")
    cfg = run.config if run is not None else None
    dev = resolve_device(device or (cfg.device if cfg else "auto"))
    prec = resolve_precision(precision or (cfg.precision if cfg else "fp32"), dev)
    _, loader, info = build_dense_loaders(
        data, task=spec.task, data_dir=data_dir or (cfg.data.data_dir if cfg else None),
        batch_size=1, eval_batch_size=batch_size or (cfg.data.eval_batch_size if cfg else None),
        augment="none", image_size=cfg.data.image_size if cfg else None,
        seed=cfg.seed if cfg else 0, val_fraction=cfg.data.val_fraction if cfg else 0.0,
    )  # fmt: skip
    names = tuple(model.class_names)
    if tuple(info.class_names) != names:
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        raise ConfigError(
            f"{data} has the classes {', '.join(info.class_names[:5])}... but the model was "
            f"trained on {shown}: evaluate on the dataset the model was trained for"
        )
    model = model.to(dev)
    amp = torch.autocast(dev.type, dtype=prec.dtype) if prec.dtype else None
    if spec.task == "detection":
        result = evaluate_detection(model, loader, names, masks=spec.head == "maskrcnn", amp=amp,
                                    progress=progress)  # fmt: skip
    else:
        result = evaluate_segmentation(model, loader, names, amp=amp, progress=progress)
    result.update(task=spec.task, head=spec.head, data=data, split=info.eval_split,
                  source=str(path), precision=prec.name, device=str(dev))  # fmt: skip
    return result
