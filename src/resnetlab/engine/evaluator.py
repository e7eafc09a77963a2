"""Evaluate a trained model (a run directory or weights file) on a dataset split."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..data import build_loaders
from ..device import resolve_device
from ..models import load_model
from .metrics import evaluate
from .report import plot_confusion
from .trainer import resolve_precision


def evaluate_source(
    source: str | Path,
    data: str,
    *,
    split: str = "test",
    data_dir: str | None = None,
    batch_size: int = 256,
    device: str = "auto",
    precision: str = "fp32",
    output: str | Path | None = None,
    tta_flip: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Top-1, top-5, loss, per-class accuracy and a confusion-matrix PNG.

    The PNG and ``eval-<split>.json`` go to ``output`` (default: the run directory, or the
    weights file's directory).
    """
    model = load_model(source)
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    model = model.to(dev).eval()
    prep = model.meta.get("preprocessing") or {}
    # A run directory says how its validation split was carved out: use the same one.
    run_cfg = _run_config(Path(source))
    same_data = run_cfg.get("data", {}).get("spec") == data
    val_fraction = run_cfg["data"].get("val_fraction", 0.0) if same_data else 0.0
    if split == "val" and not val_fraction:
        val_fraction = 0.1
    _, loader, info = build_loaders(
        data,
        data_dir=data_dir,
        batch_size=1,  # the training loader is not used
        eval_batch_size=batch_size,
        eval_split=split,
        in_chans=model.config.in_chans,
        image_size=prep.get("image_size"),
        seed=run_cfg.get("seed", 0) if same_data else 0,
        num_workers=run_cfg.get("data", {}).get("num_workers", 2) if same_data else 2,
        device=dev,
        val_fraction=val_fraction,
    )
    if info.num_classes != model.num_classes:
        raise ValueError(
            f"{data} has {info.num_classes} classes but the model predicts {model.num_classes}: "
            "evaluate on the dataset the model was trained for"
        )
    tally = evaluate(
        model, loader, num_classes=info.num_classes, device=dev, autocast_dtype=prec.dtype,
        tta_flip=tta_flip, progress=progress,
    )  # fmt: skip
    names = model.meta.get("class_names") or list(info.class_names)
    result = tally.result(names)
    src = Path(source)
    out_dir = Path(output) if output else (src if src.is_dir() else src.parent)
    out_dir.mkdir(parents=True, exist_ok=True)
    png = plot_confusion(result["confusion"], list(names), out_dir / f"confusion-{split}.png")
    result.update(data=data, split=split, source=str(source), confusion_png=str(png))
    (out_dir / f"eval-{split}.json").write_text(json.dumps(result, indent=2))
    return result


def _run_config(source: Path) -> dict[str, Any]:
    import yaml

    path = (source if source.is_dir() else source.parent) / "config.yaml"
    return yaml.safe_load(path.read_text()) if path.exists() else {}


def format_result(result: dict[str, Any]) -> str:
    lines = [
        f"{result['source']} on {result['data']} ({result['split']}, n={result['n']}): "
        f"top-1 {100 * result['top1']:.2f}%  top-5 {100 * result['top5']:.2f}%  "
        f"loss {result['loss']:.4f}",
        "per-class accuracy:",
    ]
    lines += [f"  {name:>20s}  {100 * acc:6.2f}%" for name, acc in result["per_class"].items()]
    lines.append(f"confusion matrix: {result['confusion_png']}")
    return "\n".join(lines)


__all__ = ["evaluate_source", "format_result"]
