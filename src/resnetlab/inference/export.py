"""Writing a model for other runtimes: safetensors, torchvision, ONNX and torch.export.

Every export is first made in memory, as the bytes of the file, and checked unless
``verify=False``: the bytes are read back by the runtime that will use them (resnetlab,
torchvision, onnxruntime, ``torch.export.load``) and their outputs on random inputs are
compared with the PyTorch model's. Only bytes that pass are written, through the atomic
writer of :mod:`resnetlab.io`: a broken export never lies where the next step would pick it
up, a full disk leaves the previous file as it was, and two exports to one path each write
a complete file. (Making the file in memory also keeps torch.export's and the ONNX
exporter's own file writers, which abort or fail obscurely on a full disk, off the disk.)
"""

from __future__ import annotations

import copy
import io
import json
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ResnetlabError
from ..io import StorageError, atomic_write_bytes, blocking_file, ensure_parent_dir
from ..models import ResNet, load_model, to_torchvision_state_dict
from ..models.weights import (
    WeightsFile,
    config_from_meta,
    decode_weights,
    encode_weights,
    load_weights,
    write_weights,
)
from .meta import describe_model

__all__ = [
    "EXPORT_FORMATS",
    "ExportError",
    "ExportResult",
    "export_model",
    "format_export_result",
]

EXPORT_FORMATS = ("safetensors", "torchvision", "onnx", "torch-export")
SUFFIXES = {
    "safetensors": (".safetensors",),
    "torchvision": (".pth", ".pt"),
    "onnx": (".onnx",),
    "torch-export": (".pt2",),
}
# Largest max-abs-difference / max-abs-output accepted between fp32 PyTorch and the export.
MAX_REL_ERROR = 1e-4
# Opset 17 runs on every onnxruntime since 1.14 and on TensorRT 8.6+; the TorchScript
# exporter writes opsets 7 to 20.
DEFAULT_OPSET = 17
OPSET_RANGE = (9, 20)
VERIFY_SEED = 0


class ExportError(ResnetlabError, RuntimeError):
    """An export that cannot be written, or that does not compute what the model does."""


class ExportOptionError(ExportError, ValueError):
    """An export asked for with options that do not go together (the message says why)."""


class ExportSourceNotFound(ExportError, FileNotFoundError):
    """The run directory or weights file to export does not exist."""


@dataclass(frozen=True)
class ExportResult:
    """Where the export went; ``max_rel_error`` is None when it was not verified."""

    path: Path
    format: str
    max_rel_error: float | None
    dynamic_batch: bool = False
    #: How to load the file (e.g. the torchvision builder call), when that is not obvious.
    load_with: str | None = None


def rel_error(reference: torch.Tensor, other: torch.Tensor) -> float:
    """max |reference - other| / max |reference|."""
    ref, oth = reference.detach().float().cpu(), other.detach().float().cpu()
    return ((ref - oth).abs().max() / ref.abs().max().clamp_min(1e-12)).item()


def _check_options(fmt: str, output: Path, dynamic_batch: bool, opset: int | None) -> None:
    if fmt not in EXPORT_FORMATS:
        raise ExportOptionError(
            f"unknown export format {fmt!r}: expected one of {', '.join(EXPORT_FORMATS)}"
        )
    if output.suffix not in SUFFIXES[fmt]:
        raise ExportOptionError(
            f"output {output} does not end in {' or '.join(SUFFIXES[fmt])}, the suffix of a "
            f"{fmt} export"
        )
    if output.is_dir():
        raise ExportOptionError(f"output {output} is a folder: give a file name")
    if (blocker := blocking_file(output)) is not None:
        raise ExportOptionError(
            f"cannot write {output}: {blocker} is a file, not a folder; give an output path "
            "in a folder"
        )
    if dynamic_batch and fmt not in ("onnx", "torch-export"):
        raise ExportOptionError(f"a dynamic batch applies to onnx and torch-export, not to {fmt}")
    if opset is not None:
        if fmt != "onnx":
            raise ExportOptionError(f"an opset applies to onnx exports, not to {fmt}")
        lo, hi = OPSET_RANGE
        if not lo <= opset <= hi:
            raise ExportOptionError(f"opset={opset}: the ONNX exporter writes opsets {lo} to {hi}")


def _resolve_model(source_or_model: ResNet | str | os.PathLike) -> ResNet:
    if isinstance(source_or_model, nn.Module):
        if getattr(source_or_model, "features_only", False):
            raise ExportOptionError("export the full model, not a features_only view of it")
        if not hasattr(source_or_model, "config"):
            raise ExportOptionError(f"a {type(source_or_model).__name__} is not a resnetlab model")
        model = source_or_model
        if next(model.parameters()).device.type != "cpu" or model.training:
            # Export from an eval-mode CPU copy, leaving the caller's model as it is.
            model = copy.deepcopy(model).cpu()
        return model.eval()
    source = Path(source_or_model)
    if not source.exists():
        raise ExportSourceNotFound(
            f"export source not found: {source} (give a run directory or a .safetensors file)"
        )
    return load_model(source).eval()


def _inputs(model: ResNet, image_size: int, batch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(VERIFY_SEED + batch)
    return torch.randn(batch, model.config.in_chans, image_size, image_size, generator=g)


def _verify_batches(dynamic_batch: bool) -> tuple[int, ...]:
    # A static export is traced (and checked) at batch 1, the usual serving shape; a dynamic
    # one is traced at 2 and checked at 2 and 3, so no size is special-cased into the graph.
    return (2, 3) if dynamic_batch else (1,)


def _compare(
    model: ResNet, run: Callable[[torch.Tensor], torch.Tensor], size: int, batches: tuple[int, ...]
) -> float:
    worst = 0.0
    with torch.inference_mode():
        for b in batches:
            x = _inputs(model, size, b)
            expected = model(x)
            got = torch.as_tensor(run(x))
            if tuple(got.shape) != tuple(expected.shape):
                raise ExportError(
                    f"the export returned shape {tuple(got.shape)} for a batch of {b}; "
                    f"PyTorch gives {tuple(expected.shape)}"
                )
            worst = max(worst, rel_error(expected, got))
    return worst


def _check_error(fmt: str, error: float) -> None:
    if not error <= MAX_REL_ERROR:  # also catches NaN
        raise ExportError(
            f"the {fmt} export differs from the PyTorch model: max relative error {error:.3g} "
            f"> {MAX_REL_ERROR:g}; nothing was written (--no-verify writes it unchecked)"
        )


@dataclass
class _Staged:
    """An export made in memory: how to write it, and how to run what it holds."""

    write: Callable[[Path], object]
    run: Callable[[torch.Tensor], Any] | None = None
    load_with: str | None = None


def _bytes_of(save: Callable[[io.BytesIO], object]) -> bytes:
    buffer = io.BytesIO()
    save(buffer)
    return buffer.getvalue()


def _export_safetensors(model: ResNet, output: Path, meta: dict[str, Any], verify: bool) -> _Staged:
    data, side = encode_weights(
        model, preprocessing=meta["preprocessing"], class_names=meta["class_names"]
    )
    staged = _Staged(lambda path: write_weights(path, data, side))
    if verify:
        wf: WeightsFile = decode_weights(data, side, output)
        label, cfg = config_from_meta(wf.meta)
        again = ResNet(cfg, name=label)
        load_weights(again, wf)
        again.eval()
        staged.run = lambda x: again(x)
    return staged


def _torchvision_builder(model: ResNet) -> tuple[Callable[[], nn.Module], str]:
    """What builds torchvision's model of the same architecture, and that call as text."""
    import torchvision
    from torchvision.models import resnet as tv

    cfg, n = model.config, model.num_classes
    if model.name in torchvision.models.list_models(torchvision.models):
        builder = getattr(torchvision.models, model.name)
        return (lambda: builder(num_classes=n)), f"torchvision.models.{model.name}(num_classes={n})"
    block = "Bottleneck" if cfg.is_bottleneck else "BasicBlock"
    extra = {"groups": cfg.groups, "width_per_group": cfg.base_width} if cfg.is_bottleneck else {}
    args = "".join(f", {k}={v}" for k, v in extra.items())
    call = f"torchvision.models.resnet.ResNet({block}, {list(cfg.layers)}, num_classes={n}{args})"
    return (lambda: tv.ResNet(getattr(tv, block), list(cfg.layers), num_classes=n, **extra)), call


def _export_torchvision(model: ResNet, verify: bool) -> _Staged:
    cfg = model.config
    if verify and cfg.is_bottleneck and cfg.stride_on != "3x3" and not cfg.is_preact:
        raise ExportError(
            f"{model.name} strides on the bottleneck's 1x1 conv and torchvision on the 3x3: its "
            "weights load into torchvision's model but compute another function "
            "(--no-verify writes them anyway)"
        )
    try:
        state_dict = to_torchvision_state_dict(model)
    except ValueError as e:
        raise ExportError(str(e)) from None
    build, call = _torchvision_builder(model)
    data = _bytes_of(lambda f: torch.save(state_dict, f))
    staged = _Staged(lambda path: atomic_write_bytes(path, data), load_with=call)
    if not verify:
        return staged
    twin = build()
    again = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    try:
        twin.load_state_dict(again, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise ExportError(
            f"{model.name} has no torchvision counterpart: {call} does not take its weights "
            f"({' '.join(first[:3])[:400]})"
        ) from None
    twin.eval()
    staged.run = lambda x: twin(x)
    return staged


def _export_onnx(
    model: ResNet, meta: dict[str, Any], dynamic: bool, verify: bool, opset: int
) -> _Staged:
    try:
        import onnx
    except ImportError:
        raise ExportError("ONNX export needs the onnx package: pip install onnx") from None
    x = _inputs(model, meta["preprocessing"]["image_size"], _verify_batches(dynamic)[0])
    axes = {"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic else None
    # The TorchScript-based exporter (dynamo=False). The torch.export-based one (dynamo=True,
    # the default since torch 2.9) needs the onnxscript package, which is not among
    # resnetlab's dependencies, and takes ~30x longer on these nets; a ResNet is a static
    # feed-forward graph that tracing captures exactly, and the result is checked against
    # PyTorch below. The exporter's deprecation notice and its constant-folding note about
    # option-A shortcuts' strided slices are expected here and hidden.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message="Constant folding")
        buffer = io.BytesIO()
        try:
            torch.onnx.export(
                model,
                (x,),
                buffer,
                input_names=["input"],
                output_names=["logits"],
                dynamic_axes=axes,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        except Exception as e:  # the exporter raises many types; all mean the same here
            raise ExportError(f"ONNX export failed: {type(e).__name__}: {e}") from e
    # In memory: a ResNet's graph is far below protobuf's 2 GB limit on one message.
    proto = onnx.load_from_string(buffer.getvalue())
    onnx.helper.set_model_props(
        proto,
        {
            "architecture": str(meta["architecture"]),
            "num_classes": str(meta["num_classes"]),
            "preprocessing": json.dumps(meta["preprocessing"]),
            "class_names": json.dumps(meta["class_names"]),
            "resnetlab": json.dumps(meta),
        },
    )
    data = proto.SerializeToString()
    staged = _Staged(lambda path: atomic_write_bytes(path, data))
    if not verify:
        return staged
    try:
        import onnxruntime as ort
    except ImportError:
        raise ExportError(
            "verifying an ONNX export needs onnxruntime: pip install onnxruntime (or --no-verify)"
        ) from None
    try:
        onnx.checker.check_model(onnx.load_from_string(data), full_check=True)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"the ONNX model is invalid: {e}") from None
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    staged.run = lambda x: session.run(["logits"], {"input": x.numpy()})[0]
    return staged


def _export_torch(model: ResNet, meta: dict[str, Any], dynamic: bool, verify: bool) -> _Staged:
    x = _inputs(model, meta["preprocessing"]["image_size"], _verify_batches(dynamic)[0])
    shapes = {"x": {0: torch.export.Dim("batch", min=1)}} if dynamic else None
    try:
        program = torch.export.export(model, (x,), dynamic_shapes=shapes)
    except Exception as e:  # torch.export raises many types; all mean the same here
        raise ExportError(f"torch.export failed: {type(e).__name__}: {e}") from e
    extra = {"resnetlab.json": json.dumps(meta)}
    data = _bytes_of(lambda f: torch.export.save(program, f, extra_files=extra))
    staged = _Staged(lambda path: atomic_write_bytes(path, data))
    if not verify:
        return staged
    module = torch.export.load(io.BytesIO(data)).module()
    staged.run = lambda x: module(x)
    return staged


def export_model(
    source_or_model: ResNet | str | os.PathLike,
    fmt: str,
    output: str | os.PathLike,
    *,
    dynamic_batch: bool = False,
    verify: bool = True,
    opset: int | None = None,
) -> ExportResult:
    """Write a model (or a run directory / resnetlab weights file) in format ``fmt``.

    Formats: ``safetensors`` (resnetlab weights + JSON sidecar), ``torchvision`` (a ``.pth``
    state dict for ``torchvision.models.<name>(num_classes=...)``), ``onnx`` (input
    ``input``, output ``logits``, preprocessing and class names in ``metadata_props``) and
    ``torch-export`` (a ``.pt2`` ExportedProgram, its description in ``resnetlab.json``).
    ``dynamic_batch`` makes the batch dimension free (onnx, torch-export; otherwise batch
    1). ``verify`` reads the file back and compares its outputs with PyTorch's on random
    inputs; above a relative error of 1e-4 nothing is written and ExportError is raised.
    The output's folder is created; a full disk or a missing permission is an ExportError
    that leaves any previous file at ``output`` as it was.
    """
    output = Path(output)
    _check_options(fmt, output, dynamic_batch, opset)
    model = _resolve_model(source_or_model)
    prep, names = describe_model(model)
    meta = {
        "architecture": model.name,
        "num_classes": model.num_classes,
        "in_chans": model.config.in_chans,
        "preprocessing": prep.to_dict(),
        "class_names": list(names),
    }
    if fmt == "safetensors":
        staged = _export_safetensors(model, output, meta, verify)
    elif fmt == "torchvision":
        staged = _export_torchvision(model, verify)
    elif fmt == "onnx":
        staged = _export_onnx(model, meta, dynamic_batch, verify, opset or DEFAULT_OPSET)
    else:
        staged = _export_torch(model, meta, dynamic_batch, verify)
    error = None
    if verify:
        error = _compare(model, staged.run, prep.image_size, _verify_batches(dynamic_batch))
        _check_error(fmt, error)
    try:
        ensure_parent_dir(output)
        staged.write(output)
    except StorageError as e:
        raise ExportError(str(e)) from e
    return ExportResult(output, fmt, error, dynamic_batch, staged.load_with)


def format_export_result(result: ExportResult) -> str:
    """What the ``export`` command prints."""
    kind = result.format + (", dynamic batch" if result.dynamic_batch else "")
    lines = [f"wrote {result.path} ({kind})"]
    if result.max_rel_error is None:
        lines.append("not verified (--no-verify)")
    else:
        lines.append(f"verified: max relative error vs PyTorch {result.max_rel_error:.3g}")
    if result.load_with:
        lines.append(f"load with: {result.load_with}")
    return "\n".join(lines)
