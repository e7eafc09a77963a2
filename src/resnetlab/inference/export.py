"""Writing a model for other runtimes: safetensors, torchvision, ONNX, torch.export, OpenVINO.

Every export is first made in memory, as the bytes of the file, and checked unless
``verify=False``: the bytes are read back by the runtime that will use them (resnetlab,
torchvision, onnxruntime, ``torch.export.load``, OpenVINO's CPU plugin) and their outputs
on random inputs are compared with the PyTorch model's. Only bytes that pass are written,
through the atomic writer of :mod:`resnetlab.io`: a broken export never lies where the next
step would pick it up, a full disk leaves the previous file as it was, and two exports to
one path each write a complete file. (Making the file in memory also keeps torch.export's
and the ONNX exporter's own file writers, which abort or fail obscurely on a full disk, off
the disk. OpenVINO serializes only to files: its IR is saved into a private temporary
folder, read back as bytes, and those bytes are what is checked and written; its .xml and
.bin are renamed into place only once both are written.)

Graph formats (onnx, torch-export, openvino) have a free batch dimension unless
``dynamic_batch=False``: they are traced at batch 2 and checked at batches 1 and 3, so no
batch size is special-cased into the graph.
"""

from __future__ import annotations

import copy
import io
import json
import os
import secrets
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import MissingDependencyError, ResnetlabError
from ..io import StorageError, atomic_write_bytes, blocking_file, ensure_parent_dir, fsync_dir
from ..models import ModelCard, ResNet, load_model, to_torchvision_state_dict
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
]

EXPORT_FORMATS = ("safetensors", "torchvision", "onnx", "torch-export", "openvino")
SUFFIXES = {
    "safetensors": (".safetensors",),
    "torchvision": (".pth", ".pt"),
    "onnx": (".onnx",),
    "torch-export": (".pt2",),
    "openvino": (".xml",),  # or a folder, which gets model.xml and model.bin
}
#: The formats that hold a graph, and so a batch dimension (free unless asked otherwise).
BATCHED_FORMATS = ("onnx", "torch-export", "openvino")
#: OpenVINO IR file names inside an output folder.
OPENVINO_FILES = ("model.xml", "model.bin")
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


class ExportDependencyError(ExportError, MissingDependencyError):
    """The package an export (or its verification) needs is not installed."""


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


def _openvino_files(output: Path) -> tuple[Path, Path]:
    """The IR's .xml and .bin for ``output``: a path ending in .xml, or a folder."""
    if output.suffix == ".xml":
        return output, output.with_suffix(".bin")
    return output / OPENVINO_FILES[0], output / OPENVINO_FILES[1]


def _check_openvino_output(output: Path) -> None:
    others = {s for f, suffixes in SUFFIXES.items() if f != "openvino" for s in suffixes}
    if output.suffix in others | {".bin"}:
        raise ExportOptionError(
            f"output {output}: an openvino export goes to a folder (which gets "
            f"{' and '.join(OPENVINO_FILES)}) or to a path ending in .xml (its .bin beside it)"
        )
    if output.suffix == ".xml" and output.is_dir():
        raise ExportOptionError(f"output {output} is a folder: give a file name ending in .xml")
    if output.suffix != ".xml" and output.exists() and not output.is_dir():
        raise ExportOptionError(
            f"output {output} is a file: give a folder, or a path ending in .xml"
        )
    for path in _openvino_files(output):
        if (blocker := blocking_file(path)) is not None:
            raise ExportOptionError(
                f"cannot write {path}: {blocker} is a file, not a folder; give an output "
                "path in a folder"
            )
        if path.is_dir():
            raise ExportOptionError(f"cannot write {path}: it is a folder")


def _check_options(fmt: str, output: Path, dynamic_batch: bool | None, opset: int | None) -> None:
    if fmt not in EXPORT_FORMATS:
        raise ExportOptionError(
            f"unknown export format {fmt!r}: expected one of {', '.join(EXPORT_FORMATS)}"
        )
    if dynamic_batch and fmt not in BATCHED_FORMATS:
        raise ExportOptionError(
            f"a dynamic batch applies to {', '.join(BATCHED_FORMATS)}, not to {fmt}"
        )
    if opset is not None and fmt != "onnx":
        raise ExportOptionError(f"an opset applies to onnx exports, not to {fmt}")
    if fmt == "openvino":
        _check_openvino_output(output)
        return
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
    if opset is not None:
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


def _trace_batch(dynamic_batch: bool) -> int:
    # A static export is traced (and checked) at batch 1, the usual serving shape; a dynamic
    # one is traced at 2 and checked at 1 and 3 (_verify_batches), sizes it was not traced
    # at, so a batch size special-cased into the graph cannot pass.
    return 2 if dynamic_batch else 1


def _verify_batches(dynamic_batch: bool) -> tuple[int, ...]:
    return (1, 3) if dynamic_batch else (1,)


def _compare(
    model: ResNet, run: Callable[[torch.Tensor], torch.Tensor], size: int, batches: tuple[int, ...]
) -> float:
    worst = 0.0
    with torch.inference_mode():
        for b in batches:
            x = _inputs(model, size, b)
            expected = model(x)
            try:
                got = torch.as_tensor(run(x))
            except Exception as e:  # each runtime raises its own types; all mean the same
                raise ExportError(
                    f"the export cannot run a batch of {b}: {type(e).__name__}: "
                    f"{str(e).strip()[:300]}"
                ) from e
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
        raise ExportDependencyError(
            "ONNX export needs the onnx package: pip install onnx"
        ) from None
    x = _inputs(model, meta["preprocessing"]["image_size"], _trace_batch(dynamic))
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
        raise ExportDependencyError(
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
    x = _inputs(model, meta["preprocessing"]["image_size"], _trace_batch(dynamic))
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


def _write_together(files: list[tuple[Path, bytes]]) -> None:
    """Write files that belong together (an IR's .xml and .bin): each is written whole
    under a name of its own beside its destination, and only once all are written are they
    renamed into place, in order. A full disk leaves the previous files as they were."""
    staged: list[tuple[Path, Path]] = []
    try:
        for path, data in files:
            tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.partial")
            try:
                atomic_write_bytes(tmp, data)
            except StorageError as e:
                raise StorageError(e.message.replace(str(tmp), str(path)), path, e.errno) from e
            staged.append((tmp, path))
        for tmp, path in staged:
            try:
                os.replace(tmp, path)
            except OSError as e:
                raise StorageError(f"could not write {path}: {e.strerror or e}", path) from e
        fsync_dir(files[0][0].parent)
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)


def import_openvino() -> Any:
    """The ``openvino`` module, or an :class:`ExportDependencyError` saying how to get it."""
    try:
        import openvino
    except ImportError:
        raise ExportDependencyError(
            "OpenVINO needs the openvino package: pip install openvino "
            "(or pip install 'resnetlab[openvino]')"
        ) from None
    return openvino


def convert_openvino(model: nn.Module, example: torch.Tensor, dynamic_batch: bool) -> Any:
    """``model`` as an ``openvino.Model``, input ``input``, output ``logits`` (as in ONNX).

    Converted from the PyTorch module by OpenVINO's PyTorch frontend, traced on ``example``;
    the batch dimension is free with ``dynamic_batch``, else ``example``'s.
    """
    ov = import_openvino()
    shape = [-1 if dynamic_batch else example.shape[0], *example.shape[1:]]
    # The frontend traces with torch.jit.trace, whose deprecation notice is expected here.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.trace")
        try:
            with torch.no_grad():
                converted = ov.convert_model(
                    model, example_input=example, input=[ov.PartialShape(shape)]
                )
        except Exception as e:  # the frontend raises many types; all mean the same here
            raise ExportError(f"OpenVINO conversion failed: {type(e).__name__}: {e}") from e
    converted.inputs[0].get_tensor().set_names({"input"})
    converted.outputs[0].get_tensor().set_names({"logits"})
    return converted


def openvino_config(precision: str | None = "f32") -> dict[str, Any]:
    """CPU plugin settings: ``precision`` as the inference precision hint (None: the
    plugin's default, bf16 on CPUs with native bf16) and torch's thread count."""
    config: dict[str, Any] = {"INFERENCE_NUM_THREADS": torch.get_num_threads()}
    if precision is not None:
        config["INFERENCE_PRECISION_HINT"] = precision
    return config


def _export_openvino(
    model: ResNet, output: Path, meta: dict[str, Any], dynamic: bool, verify: bool
) -> _Staged:
    ov = import_openvino()
    x = _inputs(model, meta["preprocessing"]["image_size"], _trace_batch(dynamic))
    converted = convert_openvino(model, x, dynamic)
    # The description rides in the IR's rt_info, under the keys ONNX exports use.
    info = {
        "architecture": str(meta["architecture"]),
        "num_classes": str(meta["num_classes"]),
        "preprocessing": json.dumps(meta["preprocessing"]),
        "class_names": json.dumps(meta["class_names"]),
        "meta": json.dumps(meta),
    }
    for key, value in info.items():
        converted.set_rt_info(value, ["resnetlab", key])
    with tempfile.TemporaryDirectory(prefix="resnetlab-openvino-") as tmp:
        xml_tmp = Path(tmp) / OPENVINO_FILES[0]
        try:
            # fp32 weights: save_model halves them to fp16 by default, off by ~1e-3.
            ov.save_model(converted, xml_tmp, compress_to_fp16=False)
            xml, weights = xml_tmp.read_bytes(), xml_tmp.with_suffix(".bin").read_bytes()
        except (OSError, RuntimeError) as e:
            raise ExportError(
                f"could not serialize the OpenVINO model in {tempfile.gettempdir()}: {e} "
                "(set TMPDIR to a folder with free space)"
            ) from e
    xml_path, bin_path = _openvino_files(output)
    # The weights first: the .xml, which finds them by its own name, is what a reader opens.
    staged = _Staged(
        lambda _: _write_together([(bin_path, weights), (xml_path, xml)]),
        load_with=f"openvino.Core().compile_model({str(xml_path)!r}, 'CPU')",
    )
    if not verify:
        return staged
    core = ov.Core()
    try:
        again = core.read_model(xml, weights)
        compiled = core.compile_model(again, "CPU", openvino_config("f32"))
    except RuntimeError as e:
        raise ExportError(f"OpenVINO cannot load the IR it wrote: {e}") from None
    staged.run = lambda x: compiled(x.numpy())[0]
    return staged


def export_model(
    source_or_model: ResNet | str | os.PathLike,
    fmt: str,
    output: str | os.PathLike,
    *,
    dynamic_batch: bool | None = None,
    verify: bool = True,
    opset: int | None = None,
    card: ModelCard | None = None,
) -> ExportResult:
    """Write a model (or a run directory / resnetlab weights file) in format ``fmt``.

    Formats: ``safetensors`` (resnetlab weights + JSON sidecar), ``torchvision`` (a ``.pth``
    state dict for ``torchvision.models.<name>(num_classes=...)``), ``onnx`` (input
    ``input``, output ``logits``, preprocessing and class names in ``metadata_props``),
    ``torch-export`` (a ``.pt2`` ExportedProgram, its description in ``resnetlab.json``) and
    ``openvino`` (an IR, ``.xml`` + ``.bin``: ``output`` is a path ending in ``.xml`` or a
    folder, which gets ``model.xml`` and ``model.bin``; input ``input``, output ``logits``,
    fp32 weights, the description in the IR's ``rt_info`` under ``resnetlab``, with the
    keys of ONNX's ``metadata_props``). The graph formats (onnx, torch-export, openvino)
    have a free batch dimension unless ``dynamic_batch=False`` (then batch 1);
    ``dynamic_batch=True`` for another format is an error. ``verify`` reads the file back
    and compares its outputs with PyTorch's on random inputs (at batches 1 and 3 for a free
    batch; OpenVINO on its CPU plugin with the fp32 precision hint); above a relative error
    of 1e-4 nothing is written and ExportError is raised.
    The output's folder is created; a full disk or a missing permission is an ExportError
    that leaves any previous file at ``output`` as it was.
    The export is described by the model's card (its preprocessing and class names, the
    graph traced at the preprocessing's image size), or by ``card`` where given.
    """
    output = Path(output)
    _check_options(fmt, output, dynamic_batch, opset)
    dynamic_batch = fmt in BATCHED_FORMATS and dynamic_batch is not False
    model = _resolve_model(source_or_model)
    if card is not None:
        prep, names = describe_model(model, card.preprocessing, card.class_names)
    else:
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
    elif fmt == "openvino":
        staged = _export_openvino(model, output, meta, dynamic_batch, verify)
        output = _openvino_files(output)[0]
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
