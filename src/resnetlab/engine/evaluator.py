"""Evaluate a trained model (a run directory or weights file) on a dataset split.

A run directory (or a weights file with the run's ``config.yaml`` beside it) is evaluated
the way its trainer evaluated it: the same data and loader settings, the same split,
test-time flip, precision, device and memory format, so that top-1 on the run's own data
equals ``summary.json``'s ``test_top1``. Every one of these can be overridden.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import DataConfig, TrainConfig, build_config
from ..data import build_loaders
from ..data.build import SPLITS, default_eval_split, parse_data_spec
from ..device import resolve_device
from ..errors import ConfigError
from ..formatting import dumps_json, round_floats
from ..io import JSONFileError, atomic_write_text, read_json
from ..models import load_model
from .metrics import evaluate
from .report import plot_confusion
from .rundir import CONFIG_FILE, read_run_config
from .state import Precision, resolve_precision

__all__ = ["RunRecord", "evaluate_source", "loader_kwargs", "read_run"]

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
        config = build_config(TrainConfig, raw)
    except (ValueError, TypeError) as e:
        message = " ".join(str(e).split())
        raise ConfigError(
            f"cannot read the run config {path}: {message}; fix or remove it"
        ) from None
    summary: dict[str, Any] = {}
    summary_path = run_dir / SUMMARY_FILE
    if summary_path.is_file():
        try:
            loaded = read_json(summary_path, "run summary")
        except JSONFileError:
            loaded = None  # only a hint for the evaluation split; the config still decides
        summary = loaded if isinstance(loaded, dict) else {}
    return RunRecord(run_dir, config, summary)


def loader_kwargs(data: DataConfig) -> dict[str, Any]:
    """The fields of ``data`` by name, to be given back to a
    :class:`~resnetlab.config.DataConfig` for :func:`~resnetlab.data.build_loaders`.

    ``spec`` is left out.
    """
    return {f.name: getattr(data, f.name) for f in dataclasses.fields(data) if f.name != "spec"}


def _same_data(a: str, b: str) -> bool:
    """Whether two dataset specs name the same data (an image folder by its resolved path)."""
    try:
        pa, pb = parse_data_spec(a), parse_data_spec(b)
    except ValueError:
        return a == b
    if pa.path is not None and pb.path is not None:
        return pa.kind == pb.kind and pa.path.resolve() == pb.path.resolve()
    return pa == pb


@dataclass(frozen=True)
class _EvalData:
    """The data to evaluate on: its spec, kind and split, and whether it is the run's own
    (then read as the trainer read it)."""

    spec: str
    kind: str
    split: str
    own: bool


@dataclass(frozen=True)
class _EvalRuntime:
    """Where and how the model runs: the run's own settings unless overridden."""

    device: torch.device
    precision: Precision
    tta_flip: bool
    channels_last: bool


def _check_source(src: Path) -> None:
    """A source that exists, and not a run directory whose training has not finished."""
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


def _choose_data(
    src: Path, run: RunRecord | None, data: str | None, split: str | None
) -> _EvalData:
    """The data (default: the run's) and split (default: the one its trainer used)."""
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
    return _EvalData(data, kind, split, own)


def _runtime(
    run: RunRecord | None, device: str | None, precision: str | None, tta_flip: bool | None
) -> _EvalRuntime:
    dev = resolve_device(device or (run.config.device if run else "auto"))
    prec = resolve_precision(precision or (run.config.precision if run else "fp32"), dev)
    flip = tta_flip if tta_flip is not None else (run.config.tta_flip if run else False)
    return _EvalRuntime(dev, prec, flip, run.config.channels_last if run else False)


def _own_loader_kwargs(
    run: RunRecord, data: _EvalData, model: Any, batch_size: int | None, data_dir: str | None
) -> dict[str, Any]:
    """The run's own data read as its trainer read it (with the overrides given)."""
    d = run.config.data
    prep = model.meta.get("preprocessing") or {}
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
    if data.kind == "imagefolder" and kwargs.get("image_size") is None:
        # The size the model was trained at. On the run's own split the folder's plan
        # picks this same size; on another split its images could suggest another one.
        kwargs["image_size"] = prep.get("image_size")
    if data.split == "val" and data.kind != "imagefolder" and not d.val_fraction:
        kwargs["val_fraction"] = 0.1
    if getattr(run.config, "weights", None):
        # A fine-tuned run read its data with the pretrained weights' preprocessing and
        # channels; its own weights carry both, so the pretrained ones are not needed.
        kwargs["preprocessing"] = prep or None
        kwargs["in_chans"] = kwargs["in_chans"] or model.config.in_chans
    return kwargs


def _other_loader_kwargs(
    data: _EvalData, model: Any, batch_size: int | None, data_dir: str | None
) -> dict[str, Any]:
    """Other data, read with the model's preprocessing."""
    prep = model.meta.get("preprocessing") or {}
    kwargs = {
        "batch_size": 1,  # the training loader is not used
        "data_dir": data_dir,
        "eval_batch_size": batch_size or 256,
        "in_chans": model.config.in_chans,
        "image_size": prep.get("image_size"),
        "val_fraction": 0.1 if data.split == "val" and data.kind != "imagefolder" else 0.0,
    }
    if data.kind == "imagefolder" and prep.get("mean"):
        # Read other images with the statistics the model was trained with.
        kwargs["preprocessing"] = prep
    return kwargs


def _build_eval_data(
    data: _EvalData,
    run: RunRecord | None,
    model: Any,
    rt: _EvalRuntime,
    batch_size: int | None,
    data_dir: str | None,
) -> tuple[Any, Any, list[str]]:
    """The evaluation loader, the data's info and the class names, checked against the
    model's classes."""
    if data.own and run is not None:
        kwargs = _own_loader_kwargs(run, data, model, batch_size, data_dir)
    else:
        kwargs = _other_loader_kwargs(data, model, batch_size, data_dir)
    kwargs.update(eval_split=data.split, device=rt.device, channels_last=rt.channels_last)
    fields = {k: kwargs.pop(k) for k in list(kwargs) if k in DataConfig.__dataclass_fields__}
    _, loader, info = build_loaders(DataConfig(spec=data.spec, **fields), **kwargs)
    if info.num_classes != model.num_classes:
        raise ConfigError(
            f"{data.spec} has {info.num_classes} classes but the model predicts "
            f"{model.num_classes}: evaluate on the dataset the model was trained for"
        )
    model_names = model.meta.get("class_names")
    if model_names and tuple(model_names) != tuple(info.class_names):
        raise ConfigError(
            f"{data.spec} has the classes {_short(info.class_names)} but the model was trained "
            f"on {_short(model_names)}: evaluate on the dataset the model was trained for"
        )
    return loader, info, list(model_names or info.class_names)


def _run_evaluation(
    model: Any, loader: Any, num_classes: int, rt: _EvalRuntime, progress: bool
) -> Any:
    """The model's tally over ``loader``, on the runtime's device, precision and layout."""
    model = model.to(rt.device).eval()
    if rt.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return evaluate(
        model, loader, num_classes=num_classes, device=rt.device,
        autocast_dtype=rt.precision.dtype, tta_flip=rt.tta_flip, progress=progress,
    )  # fmt: skip


def _classification_result(
    tally: Any, names: list[str], data: _EvalData, source: str | Path, rt: _EvalRuntime
) -> dict[str, Any]:
    """The tally's metrics and how they were measured."""
    result = round_floats(tally.result(names), None)  # as summary.json and the files have it
    result.update(
        data=data.spec,
        split=data.split,
        source=str(source),
        tta_flip=rt.tta_flip,
        precision=rt.precision.name,
        device=str(rt.device),
    )
    return result


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
    _check_source(src)
    run = read_run(src)
    out_dir = Path(output) if output else None
    run_dir = src if src.is_dir() else src.parent
    from .dense import dense_weights_path, evaluate_dense_source

    dense = dense_weights_path(src)
    if dense is not None:  # a detection or segmentation model: mAP or mIoU
        result = evaluate_dense_source(
            dense, run, data, split=split, data_dir=data_dir, batch_size=batch_size,
            device=device, precision=precision, progress=progress,
        )  # fmt: skip
        result = round_floats(result, None)
        _write_outputs(result, [], out_dir, run_dir=run_dir)
        return result

    chosen = _choose_data(src, run, data, split)
    model = load_model(src)
    rt = _runtime(run, device, precision, tta_flip)
    loader, info, names = _build_eval_data(chosen, run, model, rt, batch_size, data_dir)
    tally = _run_evaluation(model, loader, info.num_classes, rt, progress)
    result = _classification_result(tally, names, chosen, source, rt)
    _write_outputs(result, names, out_dir, run_dir=run_dir)
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
