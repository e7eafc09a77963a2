"""Evaluate a trained model (a run directory or weights file) on a dataset split.

A run directory (or a weights file with the run's ``config.yaml`` beside it) is evaluated
the way its trainer evaluated it: the same data and loader settings, the same split,
test-time flip, precision, device and memory format, so that top-1 on the run's own data
equals ``summary.json``'s ``test_top1``. Every one of these can be overridden.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import DataConfig, TrainConfig, build_dataclass
from ..data import build_loaders
from ..data.build import SPLITS, default_eval_split, parse_data_spec
from ..device import resolve_device
from ..errors import ConfigError
from ..formatting import dumps_json, round_floats
from ..io import atomic_write_text
from ..models import load_model
from .metrics import evaluate
from .report import plot_confusion
from .rundir import CONFIG_FILE, read_run_config
from .state import resolve_precision

__all__ = ["RunRecord", "evaluate_source", "format_result", "loader_kwargs", "read_run"]

SUMMARY_FILE = "summary.json"


@dataclass(frozen=True)
class RunRecord:
    """What a run directory says about itself: its resolved config and its summary."""

    run_dir: Path
    config: TrainConfig
    summary: dict[str, Any]

    @property
    def eval_split(self) -> str:
        """The split the trainer evaluated on (the config's, else the one it recorded)."""
        return (
            self.config.data.eval_split
            or self.summary.get("eval_split")
            or default_eval_split(self.config.data.spec)
        )


def read_run(source: str | Path) -> RunRecord | None:
    """The run that ``source`` belongs to: a run directory, its ``model.safetensors`` or one
    of its checkpoints.

    None for any other file (a ``config.yaml`` that happens to sit beside a copied weights
    file is not trusted), or where there is no run config; ConfigError when there is a run
    config that cannot be read as a training config.
    """
    src = Path(source)
    if src.is_dir():
        run_dir = src
    elif src.name == "model.safetensors":
        run_dir = src.parent
    elif src.parent.name == "checkpoints":
        run_dir = src.parent.parent
    else:
        return None
    raw = read_run_config(run_dir)
    if raw is None:
        return None
    path = run_dir / CONFIG_FILE
    try:
        config = build_dataclass(TrainConfig, raw)
    except (ValueError, TypeError) as e:
        message = " ".join(str(e).split())
        raise ConfigError(
            f"cannot read the run config {path}: {message}; fix or remove it"
        ) from None
    summary: dict[str, Any] = {}
    summary_path = run_dir / SUMMARY_FILE
    if summary_path.is_file():
        try:
            loaded = json.loads(summary_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            loaded = None  # only a hint for the evaluation split; the config still decides
        summary = loaded if isinstance(loaded, dict) else {}
    return RunRecord(run_dir, config, summary)


def loader_kwargs(data: DataConfig) -> dict[str, Any]:
    """The fields of ``data`` that :func:`~resnetlab.data.build_loaders` takes, by name.

    ``spec`` (its positional argument) is left out.
    """
    accepted = inspect.signature(build_loaders).parameters
    return {
        f.name: getattr(data, f.name)
        for f in dataclasses.fields(data)
        if f.name in accepted and f.name != "spec"
    }


def _same_data(a: str, b: str) -> bool:
    """Whether two dataset specs name the same data (an image folder by its resolved path)."""
    try:
        pa, pb = parse_data_spec(a), parse_data_spec(b)
    except ValueError:
        return a == b
    if pa.path is not None and pb.path is not None:
        return pa.kind == pb.kind and pa.path.resolve() == pb.path.resolve()
    return pa == pb


def evaluate_source(
    source: str | Path,
    data: str | None = None,
    *,
    split: str | None = None,
    data_dir: str | None = None,
    batch_size: int | None = None,
    device: str | None = None,
    precision: str | None = None,
    output: str | Path | None = None,
    tta_flip: bool | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Top-1, top-5, loss, per-class accuracy and a confusion-matrix PNG; for a detection
    or segmentation model, COCO mAP or mIoU (``dense.evaluate_dense_source``).

    ``source`` is a run directory or a weights file. Every argument left at None is the
    run's own (from its ``config.yaml``): the data, its evaluation split, the evaluation
    batch size, device, precision and test-time flip. A weights file without a
    ``config.yaml`` beside it needs ``data``; it is then read with the model's
    preprocessing, in fp32, without test-time flip.

    ``eval-<split>.json`` and ``confusion-<split>.png`` go to ``output`` (default: the run
    directory, or the weights file's directory; when that is not writable, nothing is
    written and a note says so).
    """
    src = Path(source)
    if not src.exists():
        raise ConfigError(
            f"{src}: no such run directory or weights file; pass a run directory "
            "(e.g. runs/r20) or a .safetensors file"
        )
    if src.is_dir() and not (src / "model.safetensors").exists():
        best = src / "checkpoints" / "best.pt"
        saved = (
            best
            if best.exists()
            else next(reversed(sorted(src.glob("checkpoints/ckpt-*.pt"))), None)
        )
        if saved is not None:
            raise ConfigError(
                f"{src} has no model.safetensors yet (its training was interrupted or is still "
                f"running): evaluate a checkpoint, resnetlab eval {saved}, or finish the run "
                f"with resnetlab train --resume {src}"
            )
    run = read_run(src)
    from .dense import dense_weights_path, evaluate_dense_source

    dense = dense_weights_path(src)
    if dense is not None:  # a detection or segmentation model: mAP or mIoU
        result = evaluate_dense_source(
            dense, run, data, split=split, data_dir=data_dir, batch_size=batch_size,
            device=device, precision=precision, progress=progress,
        )  # fmt: skip
        result = round_floats(result, None)
        _write_outputs(result, [], Path(output) if output else None,
                       run_dir=src if src.is_dir() else src.parent)  # fmt: skip
        return result
    if data is None:
        if run is None:
            raise ConfigError(
                f"{src} has no {CONFIG_FILE} beside it to say what data it was trained on: "
                "pass the dataset, e.g. --data fashion-mnist"
            )
        data = run.config.data.spec
    kind = parse_data_spec(data).kind
    own = run is not None and _same_data(data, run.config.data.spec)
    if split is None:
        split = run.eval_split if own and run is not None else default_eval_split(data)
    if split not in SPLITS:
        raise ConfigError(f"split={split!r}: must be one of {', '.join(SPLITS)}")
    if kind == "imagefolder" and split == "test" and default_eval_split(data) != "test":
        raise ConfigError(
            f"{data} has no test/ folder beside train/ and val/: evaluate on split='val' "
            "(--split val)"
        )

    model = load_model(src)
    dev = resolve_device(device or (run.config.device if run else "auto"))
    prec = resolve_precision(precision or (run.config.precision if run else "fp32"), dev)
    flip = tta_flip if tta_flip is not None else (run.config.tta_flip if run else False)
    channels_last = run.config.channels_last if run else False
    prep = model.meta.get("preprocessing") or {}

    if own and run is not None:
        d = run.config.data
        kwargs = loader_kwargs(d)
        kwargs.update(
            seed=run.config.seed,
            in_chans=run.config.model_args.get("in_chans"),
            # the trainer's batches (None: the size chosen for the training set)
            batch_size=d.batch_size,
            eval_batch_size=batch_size or d.eval_batch_size,
        )
        if data_dir is not None:
            kwargs["data_dir"] = data_dir
        if kind == "imagefolder" and kwargs.get("image_size") is None:
            # The size the model was trained at. On the run's own split the folder's plan
            # picks this same size; on another split its images could suggest another one.
            kwargs["image_size"] = prep.get("image_size")
        if split == "val" and kind != "imagefolder" and not d.val_fraction:
            kwargs["val_fraction"] = 0.1
        if getattr(run.config, "weights", None):
            # A fine-tuned run read its data with the pretrained weights' preprocessing and
            # channels; its own weights carry both, so the pretrained ones are not needed.
            kwargs["preprocessing"] = prep or None
            kwargs["in_chans"] = kwargs["in_chans"] or model.config.in_chans
    else:
        kwargs = {
            "batch_size": 1,  # the training loader is not used
            "data_dir": data_dir,
            "eval_batch_size": batch_size or 256,
            "in_chans": model.config.in_chans,
            "image_size": prep.get("image_size"),
            "val_fraction": 0.1 if split == "val" and kind != "imagefolder" else 0.0,
        }
        if kind == "imagefolder" and prep.get("mean"):
            # Read other images with the statistics the model was trained with.
            kwargs["preprocessing"] = prep
    kwargs.update(
        eval_split=split,
        device=dev,
        channels_last=channels_last,
    )
    _, loader, info = build_loaders(data, **kwargs)

    if info.num_classes != model.num_classes:
        raise ConfigError(
            f"{data} has {info.num_classes} classes but the model predicts {model.num_classes}: "
            "evaluate on the dataset the model was trained for"
        )
    model_names = model.meta.get("class_names")
    if model_names and tuple(model_names) != tuple(info.class_names):
        raise ConfigError(
            f"{data} has the classes {_short(info.class_names)} but the model was trained on "
            f"{_short(model_names)}: evaluate on the dataset the model was trained for"
        )
    model = model.to(dev).eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    tally = evaluate(
        model, loader, num_classes=info.num_classes, device=dev, autocast_dtype=prec.dtype,
        tta_flip=flip, progress=progress,
    )  # fmt: skip
    names = list(model_names or info.class_names)
    result = round_floats(tally.result(names), None)  # as summary.json and the files have it
    result.update(
        data=data,
        split=split,
        source=str(source),
        tta_flip=flip,
        precision=prec.name,
        device=str(dev),
    )
    out_dir = Path(output) if output else None
    _write_outputs(result, names, out_dir, run_dir=src if src.is_dir() else src.parent)
    return result


def _short(names: Any, limit: int = 5) -> str:
    names = list(names)
    shown = ", ".join(names[:limit])
    return f"[{shown}{', ...' if len(names) > limit else ''}]"


def _write_outputs(
    result: dict[str, Any], names: list[str], output: Path | None, *, run_dir: Path
) -> None:
    """Write eval-<split>.json and confusion-<split>.png, and record their paths in ``result``.

    With no ``output``, a run directory that cannot be written to gets nothing, and a note
    (on stderr and in ``result["note"]``) says so.
    """
    split = result["split"]
    out_dir = output or run_dir
    result.update(confusion_png=None, eval_json=None)
    files = f"eval-{split}.json" + (f" and confusion-{split}.png" if "confusion" in result else "")

    def skip(reason: str) -> None:
        note = f"{out_dir} is {reason}: {files} not written (pass --output DIR to keep them)"
        result["note"] = note
        print(f"note: {note}", file=sys.stderr)

    if output is None and not os.access(out_dir, os.W_OK | os.X_OK):
        skip("not writable")
        return
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        if "confusion" in result:
            png = plot_confusion(result["confusion"], names, out_dir / f"confusion-{split}.png")
            result["confusion_png"] = str(png)
        json_path = out_dir / f"eval-{split}.json"
        result["eval_json"] = str(json_path)
        atomic_write_text(json_path, dumps_json(result, digits=None, indent=2))
    except OSError as e:
        result.update(confusion_png=None, eval_json=None)
        if output is not None:
            raise ConfigError(
                f"cannot write the evaluation to {out_dir}: {e.strerror or e}; pass another "
                "--output"
            ) from None
        skip(f"not writable ({e.strerror or e})")


def format_result(result: dict[str, Any]) -> str:
    """The evaluation as text: one headline, per-class accuracy, where the PNG went."""
    if result.get("task") in ("detection", "segmentation"):
        from .dense import format_dense_result

        return format_dense_result(result)
    how = [result["split"], f"n={result['n']}"]
    if result.get("tta_flip"):
        how.append("test-time flip")
    lines = [
        f"{result['source']} on {result['data']} ({', '.join(how)}): "
        f"top-1 {100 * result['top1']:.2f}%  top-5 {100 * result['top5']:.2f}%  "
        f"loss {result['loss']:.4f}",
        "per-class accuracy:",
    ]
    lines += [f"  {name:>20s}  {100 * acc:6.2f}%" for name, acc in result["per_class"].items()]
    if result.get("confusion_png"):
        lines.append(f"confusion matrix: {result['confusion_png']}")
    return "\n".join(lines)
