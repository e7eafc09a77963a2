"""Making a trained model cheaper to run: BN folding, channels_last, bf16 and int8.

:func:`optimize_for_inference` returns an :class:`InferenceModel`: a module that takes the
same fp32 image batches as the model and returns fp32 logits equal to the model's within the
precision's tolerance (:data:`TOLERANCES`).

* Every precision first folds each BatchNorm that directly follows a convolution into that
  convolution (Ioffe & Szegedy 2015 normalise with fixed statistics at inference, so
  ``BN(conv(x))`` is one conv with rescaled weights and a bias). The pairs are found on a
  ``torch.fx`` trace of the model and fused with ``torch.nn.utils.fusion.fuse_conv_bn_eval``;
  the module tree (and ``forward_features`` etc.) stays as it was. Pre-activation nets keep
  the BN that opens each unit: it normalises a sum, not a conv's output.
* ``channels_last`` (NHWC) is the layout oneDNN's CPU convolutions and tensor cores prefer.
* ``bf16`` casts weights and activations to bfloat16: fast on CPUs with AVX512-BF16 or AMX
  and on GPUs from Ampere on; elsewhere it is emulated, slow, and a warning says so.
* ``int8`` quantizes weights (per channel, symmetric) and activations (per tensor) with
  scales calibrated on the user's own images, CPU only. It is PyTorch's PT2E flow:
  ``torch.export`` captures the graph (batch size dynamic), torchao's
  ``X86InductorQuantizer`` annotates it, ``prepare_pt2e`` / ``convert_pt2e`` calibrate and
  insert the quantize/dequantize pairs, and ``torch.compile`` (inductor, with freezing)
  lowers conv + BN + ReLU and add + ReLU to oneDNN int8 kernels. Without torchao, or where
  export or the lowering fails, FX graph mode quantization (deprecated in torch) takes over and
  :class:`Int8FallbackWarning` says why.
* ``auto`` picks fp32 or bf16 by the hardware (see :func:`auto_precision`); int8 is never
  chosen for the caller, as it needs calibration data and changes the outputs most.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn
from torch.ao.nn import quantized as nnq
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..device import cpu_bf16_is_fast, keep_freed_host_memory
from ..errors import ConfigError
from ..models.blocks import BatchNormAct2d

__all__ = [
    "BACKENDS",
    "PRECISIONS",
    "TOLERANCES",
    "CompileFallbackWarning",
    "EmulatedPrecisionWarning",
    "InferenceModel",
    "Int8FallbackWarning",
    "auto_precision",
    "fold_batchnorm",
    "has_native_bf16",
    "optimize_for_inference",
]

PRECISIONS = ("fp32", "bf16", "int8")
# What optimize_for_inference accepts: the precisions, and "auto" (resolved to one of them).
PRECISION_CHOICES = ("auto", *PRECISIONS)
# How an InferenceModel runs (its ``backend``): eager PyTorch, torch.compile, the PT2E int8
# graph lowered by inductor, or FX graph mode int8 (fbgemm/x86 quantized modules).
BACKENDS = ("eager", "inductor", "pt2e-x86-inductor", "fx-x86")
# Largest max|optimized - model| / max|model| expected on a trained net. fp32 folding only
# reorders float arithmetic; bf16 keeps 8 bits of mantissa (relative rounding 2^-9 per op,
# accumulated over the depth); int8 is checked by top-1 accuracy rather than logits.
TOLERANCES = {"fp32": 1e-4, "bf16": 5e-2, "int8": 2e-1}
# Attributes that describe the model (its sidecar), carried over so that describe_model,
# Predictor.from_model and export see the same architecture, classes and preprocessing.
DESCRIPTIVE_ATTRS = ("config", "name", "num_classes", "card", "meta", "features_only")
# Held while a compiled model runs with inductor's freezing switched on (_compile_frozen).
_FREEZING_LOCK = threading.Lock()


class EmulatedPrecisionWarning(UserWarning):
    """The precision asked for has no hardware support here: it runs, but slowly."""


class CompileFallbackWarning(UserWarning):
    """torch.compile could not compile the fp32/bf16 model (inductor fails on some inputs,
    e.g. 1-channel images with a free batch dimension in torch 2.14): it runs uncompiled."""


class Int8FallbackWarning(UserWarning):
    """int8 could not use the PT2E flow (torchao missing; export, quantization or
    inductor's lowering failed, e.g. on 1-channel inputs) and used FX graph mode
    quantization, which PyTorch has deprecated."""


def has_native_bf16(device: torch.device | str = "cpu") -> bool:
    """Whether bf16 matmuls/convs run natively on ``device`` (AVX512-BF16/AMX, or sm80+)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type != "cpu":
        return False
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def auto_precision(device: torch.device | str = "cpu") -> str:
    """The precision ``optimize_for_inference(precision="auto")`` picks for ``device``.

    The fastest precision that keeps the model's accuracy with no data to check it on:
    ``bf16`` where bf16 is faster than fp32 (a CPU with AMX, :func:`~resnetlab.device.
    cpu_bf16_is_fast`; a CUDA GPU with native bf16, Ampere on), else ``fp32`` (BN folded,
    channels_last). AVX512-BF16 without AMX counts as fp32: bf16 measured slower there.
    ``int8`` is never picked: it needs calibration images and is only used when asked for.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if has_native_bf16(device) else "fp32"
    if device.type == "cpu" and cpu_bf16_is_fast():
        return "bf16"
    return "fp32"


class _BatchNormLeafTracer(fx.Tracer):
    # BatchNormAct2d (BN + ReLU in one module) is a leaf like nn.BatchNorm2d, so that the
    # trace shows it as one call following its conv.
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, nn.BatchNorm2d) or super().is_leaf_module(m, qualname)


def _set_submodule(root: nn.Module, target: str, module: nn.Module) -> None:
    parent, _, name = target.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)


def _trace(model: nn.Module) -> fx.Graph:
    try:
        return _BatchNormLeafTracer().trace(model)
    except Exception as e:  # fx raises many types for untraceable code; all mean the same
        raise ConfigError(
            f"cannot trace {type(model).__name__} with torch.fx to find conv-BN pairs "
            f"({type(e).__name__}: {e})"
        ) from e


def fold_batchnorm(model: nn.Module) -> int:
    """Fold every BatchNorm2d that directly follows a Conv2d into it, in place.

    ``model`` must be in eval mode (the running statistics are what is folded). A folded
    ``nn.BatchNorm2d`` becomes ``nn.Identity``, a folded ``BatchNormAct2d`` an ``nn.ReLU``.
    A pair is folded only when the conv's output feeds nothing but the BN and each module
    is called once. Returns the number of BNs folded.
    """
    if model.training:
        raise ConfigError("fold_batchnorm needs a model in eval mode: call model.eval() first")
    graph = _trace(model)
    modules = dict(model.named_modules())
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    folded = 0
    for node in graph.nodes:
        if node.op != "call_module" or len(node.args) != 1:
            continue
        bn, prev = modules[node.target], node.args[0]
        if type(bn) not in (nn.BatchNorm2d, BatchNormAct2d) or bn.running_mean is None:
            continue
        if not (isinstance(prev, fx.Node) and prev.op == "call_module"):
            continue
        conv = modules[prev.target]
        if type(conv) is not nn.Conv2d or len(prev.users) != 1:
            continue
        if calls[prev.target] != 1 or calls[node.target] != 1:
            continue
        _set_submodule(model, prev.target, fuse_conv_bn_eval(conv, bn))
        after = nn.ReLU(inplace=True) if isinstance(bn, BatchNormAct2d) else nn.Identity()
        _set_submodule(model, node.target, after)
        folded += 1
    return folded


def _split_bn_act(model: nn.Module) -> None:
    """Replace each BatchNormAct2d by ``Sequential(BatchNorm2d, ReLU)``, in place.

    The quantization tracer treats only torch.nn's own modules as leaves; a BN-ReLU left
    after folding (the pre-activation of a v2 unit) becomes the BN + ReLU pair it knows.
    """
    for name, module in list(model.named_modules()):
        if type(module) is BatchNormAct2d:
            bn = nn.BatchNorm2d(module.num_features, module.eps, module.momentum)
            bn.load_state_dict(module.state_dict())
            pair = nn.Sequential(bn, nn.ReLU(inplace=True))
            _set_submodule(model, name, pair.train(module.training))


def _calibration_batches(calibration: Any) -> Iterator[torch.Tensor]:
    if isinstance(calibration, torch.Tensor):
        calibration = [calibration]
    for i, item in enumerate(calibration):
        x = item[0] if isinstance(item, (tuple, list)) else item
        if not isinstance(x, torch.Tensor) or x.ndim != 4:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ConfigError(
                f"calibration batch {i} is {got}: expected NxCxHxW image tensors (or "
                "(images, labels) pairs), preprocessed as for the model"
            )
        yield x.float()


class _ChannelAffine(nn.Module):
    """An eval-mode BatchNorm2d (optionally + ReLU) as ``x * scale + shift``.

    What stays of the BNs after folding (a pre-activation unit's first BN, the final one)
    normalises a sum, not a conv. PT2E's ``convert_pt2e`` looks for conv-BN pairs to fold
    wherever a BN is left in the graph, exporting some hundred pattern graphs to do so
    (some twenty seconds); a per-channel multiply-add computes the same and leaves none.
    """

    def __init__(self, bn: nn.BatchNorm2d, relu: bool) -> None:
        super().__init__()
        scale = torch.rsqrt(bn.running_var + bn.eps)
        if bn.affine:
            scale = scale * bn.weight
        shift = -bn.running_mean * scale
        if bn.affine:
            shift = shift + bn.bias
        self.register_buffer("scale", scale.detach().reshape(1, -1, 1, 1).clone())
        self.register_buffer("shift", shift.detach().reshape(1, -1, 1, 1).clone())
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.scale + self.shift
        return torch.relu(x) if self.relu else x


def _bn_to_affine(model: nn.Module) -> None:
    """Replace each (eval-mode) BatchNorm2d of ``model`` by a :class:`_ChannelAffine`."""
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.BatchNorm2d):
            relu = isinstance(module, BatchNormAct2d)
            _set_submodule(model, name, _ChannelAffine(module, relu))


def _pt2e_api() -> tuple[Any, Any, Any]:
    """``prepare_pt2e``, ``convert_pt2e`` and a configured ``X86InductorQuantizer``.

    They live in torchao (``torchao.quantization.pt2e``) since torch 2.10 removed
    ``torch.ao.quantization.quantize_pt2e``. Raises ImportError without torchao.
    """
    # torchao's import logs a deprecation notice about torch internals; not the user's
    # concern, so that logger is quiet while it loads.
    pytree_log = logging.getLogger("torch.utils._pytree")
    level = pytree_log.level
    pytree_log.setLevel(logging.ERROR)
    try:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
            X86InductorQuantizer,
            get_default_x86_inductor_quantization_config,
        )
    finally:
        pytree_log.setLevel(level)
    quantizer = X86InductorQuantizer()
    # Per-channel symmetric int8 weights, per-tensor uint8 activations, static scales.
    quantizer.set_global(get_default_x86_inductor_quantization_config())
    return prepare_pt2e, convert_pt2e, quantizer


def _quantize_pt2e(
    model: nn.Module, example: torch.Tensor, calibration: list[torch.Tensor]
) -> tuple[fx.GraphModule, int]:
    """The PT2E int8 graph of ``model`` (changed in place; not yet lowered) and the
    number of BNs folded.

    BNs are folded into their convs first (the quantizer would do the same), the others
    become per-channel multiply-adds (:class:`_ChannelAffine`). Exported with a dynamic
    batch dimension, so one graph serves every batch size; the image size (and channels)
    are the example's. A batch of one is doubled for the export, as a dimension of size 1
    would be specialised to 1.
    """
    prepare_pt2e, convert_pt2e, quantizer = _pt2e_api()
    folded = fold_batchnorm(model)
    _bn_to_affine(model)
    if example.shape[0] == 1:
        example = torch.cat([example, example])
    batch = torch.export.Dim("batch", min=1)
    exported = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    prepared = prepare_pt2e(exported.module(), quantizer)
    with torch.no_grad():
        for x in calibration:
            prepared(x)
    converted = convert_pt2e(prepared)
    _int32_weight_zero_points(converted)
    return converted, folded


def _int32_weight_zero_points(graph: fx.GraphModule) -> None:
    """Store the weights' zero points (all 0: symmetric) as int32, in place.

    oneDNN's int8 convolution takes int32 zero points; inductor converts int64 ones itself
    while lowering, with a ``torch.tensor(tensor)`` that warns at every compilation.
    """
    for node in graph.graph.nodes:
        if node.op != "call_function" or "dequantize_per_channel" not in str(node.target):
            continue
        zero_point = node.args[2] if len(node.args) > 2 else None
        if isinstance(zero_point, fx.Node) and zero_point.op == "get_attr":
            value = getattr(graph, zero_point.target)
            if isinstance(value, torch.Tensor) and value.dtype == torch.int64:
                setattr(graph, zero_point.target, value.to(torch.int32))


def _quantize_fx(
    model: nn.Module, example: torch.Tensor, calibration: list[torch.Tensor]
) -> tuple[nn.Module, int]:
    """FX graph mode int8 (the fallback): fbgemm/x86 quantized modules, run eagerly.

    Per-channel int8 weights and uint8 activations; conv + BN + ReLU and the residual
    add + ReLU fuse into quantized ops. Deprecated in torch but still shipped; its
    deprecation notices are hidden. Returns the model and the number of BNs folded.
    """
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    if "x86" in torch.backends.quantized.supported_engines:
        backend = "x86"
    elif "fbgemm" in torch.backends.quantized.supported_engines:
        backend = "fbgemm"
    else:
        raise ConfigError(
            "int8 needs PyTorch's x86 (fbgemm) quantized kernels, which this build lacks "
            f"(engines: {', '.join(torch.backends.quantized.supported_engines)})"
        )
    if torch.backends.quantized.engine not in ("x86", "fbgemm"):
        torch.backends.quantized.engine = backend
    # The quantization flow folds conv + BN (+ ReLU) itself, into one quantized op; BN
    # folded beforehand would leave an Identity between conv and ReLU and no fusion.
    _split_bn_act(model)
    before = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*reduce_range will be deprecated")
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions")
        prepared = prepare_fx(model, get_default_qconfig_mapping(backend), (example,))
        with torch.no_grad():
            for x in calibration:
                prepared(x)
        quantized = convert_fx(prepared)
    return quantized, before - sum(isinstance(m, nnq.BatchNorm2d) for m in quantized.modules())


def _import_cpp_extension_quietly() -> None:
    """Import ``torch.utils.cpp_extension`` (inductor does on its first compilation) with its
    logger quiet: a CUDA build of torch on a machine without a GPU logs "No CUDA runtime
    is found" there, which is expected on a CPU and only noise to a user."""
    import logging

    log = logging.getLogger("torch.utils.cpp_extension")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        import torch.utils.cpp_extension  # noqa: F401
    finally:
        log.setLevel(level)


def _own_code(module: nn.Module) -> fx.GraphModule:
    """``module`` as an fx graph module with a forward of its own (fx generates one class
    per graph module), sharing the weights: torch.compile keeps one cache per code object."""
    if isinstance(module, fx.GraphModule):
        return fx.GraphModule(module, module.graph)
    return fx.GraphModule(module, _trace(module))


def _compile_frozen(module: nn.Module) -> Callable[[torch.Tensor], Any]:
    """``module`` compiled by inductor with freezing: its weights become constants, which
    lets inductor prepack them for oneDNN and fuse each conv with the ReLU and residual add
    after it; for a converted PT2E graph it lowers each dequantize -> conv -> quantize
    pattern to a oneDNN int8 convolution (PyTorch's x86 int8 recipe).

    Freezing is switched on around each call rather than for the whole process, which
    would change every other ``torch.compile`` of the program; ``options={"freezing":
    True}`` is not enough (torch 2.14 then fails to lower the weight prepacking). Calls run
    without autograd: freezing needs it, and a call with grad enabled would compile a
    second, slower graph. They run in inference mode, on inference tensors: the compiled
    graph is specialised to the kind of tensor it was compiled for, and Predictor, serve
    and bench call models in inference mode.

    Shapes: the first call's batch size gets a graph of its own, compiled for that shape
    alone (``dynamic=False``), whose weights are prepacked in the layout oneDNN picks for
    that batch. Every other batch size runs a second graph, whose batch dimension is
    unbacked (``mark_unbacked``: no guard on its value, so one graph serves every size, 1
    included, where a plain dynamic dimension was split at 1 and at 16 by the guards of
    the conv's layout choice). Each is compiled from a graph module of its own
    (:func:`_own_code`), or they would share torch.compile's cache, where the later, free
    graph is found first for every size. A graph with a free batch dimension prepacks for
    no batch in particular, and oneDNN then reorders the weights on every call: a resnet50
    int8 batch of 16 spent 115 of its 300 ms in those reorders. So the first call should
    be the batch size the model will mostly see (optimize_for_inference's
    ``example_inputs``; see :func:`_compile_graphs`).
    """
    import torch._inductor.config as inductor_config

    _import_cpp_extension_quietly()
    static = torch.compile(_own_code(module), dynamic=False)
    free = torch.compile(_own_code(module), dynamic=True)
    first: list[int] = []  # the batch size of the static graph, once known

    def run(x: torch.Tensor) -> Any:
        # The config is global: one call at a time, or a thread leaving its patch would
        # switch freezing off under another one's compilation.
        with _FREEZING_LOCK, inductor_config.patch(freezing=True), torch.inference_mode():
            if not x.is_inference():
                x = x.clone()
            if not first:
                first.append(x.shape[0])
            if x.shape[0] == first[0]:
                return static(x)
            x = x.detach()  # a tensor object of its own (same storage) to mark
            torch._dynamo.decorators.mark_unbacked(x, 0)
            return free(x)

    return run


def _compile_graphs(call: Callable[[torch.Tensor], Any], example: torch.Tensor) -> float:
    """Compile ``call``'s graphs (:func:`_compile_frozen`) now, rather than on the first
    requests: ``example``'s batch size, then the graph for every other size (one image
    more), so that a lowering that fails on either fails here. Returns the seconds."""
    start = time.perf_counter()
    call(example)
    call(torch.cat([example, example[:1]]))
    return time.perf_counter() - start


def _quantize_int8(
    model: nn.Module,
    example: torch.Tensor,
    calibration: list[torch.Tensor],
    channels_last: bool,
) -> tuple[nn.Module, int, str, Callable[[torch.Tensor], Any] | None]:
    """``model`` quantized to int8: (module, BNs folded, backend, its compiled runner).

    A PT2E graph is compiled here, on ``example`` (in the layout the model will be called
    with; :func:`_compile_graphs`), so that a lowering that fails on this model also falls
    back: inductor's int8 convolution fails on 1-channel (gray) inputs with a free batch
    dimension in torch 2.14, for one.
    """
    # PT2E first. Each failure to set it up is a reason to use the FX flow, not an error
    # of the user's: say which, and go on.
    try:
        graph, folded = _quantize_pt2e(copy.deepcopy(model), example, calibration)
        run = _compile_frozen(graph)
        x = example.contiguous(memory_format=torch.channels_last) if channels_last else example
        _compile_graphs(run, x)
    except ImportError as e:
        reason = f"torchao could not be imported ({e}); pip install torchao"
    except Exception as e:  # export, the quantizer and inductor raise many types
        reason = f"PT2E quantization failed ({type(e).__name__}: {str(e).splitlines()[0]})"
    else:
        return graph, folded, "pt2e-x86-inductor", run
    warnings.warn(
        f"int8 through FX graph mode quantization (deprecated in torch): {reason}",
        Int8FallbackWarning,
        stacklevel=4,  # the caller of optimize_for_inference
    )
    quantized, folded = _quantize_fx(model, example, calibration)
    return quantized, folded, "fx-x86", None


class InferenceModel(nn.Module):
    """A model prepared by :func:`optimize_for_inference`.

    Takes fp32 NCHW batches (it converts them to its dtype and layout) and returns fp32
    logits. ``precision``, ``backend`` (one of :data:`BACKENDS`), ``channels_last``,
    ``folded_bn`` (BNs folded into convs), ``calibration_batches`` (int8), ``compiled``
    and ``compile_seconds`` (the first compilation, where it was done up front) say what
    was done; ``input_shape`` is the one ``(C, H, W)`` a PT2E int8 model takes (None: any).
    The model's ``config``, ``name``, ``num_classes`` and ``meta`` are carried over.
    """

    def __init__(
        self,
        module: nn.Module,
        *,
        precision: str,
        channels_last: bool,
        folded_bn: int,
        calibration_batches: int = 0,
        compiled: bool = False,
        backend: str = "eager",
        input_shape: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        self.module = module
        self.precision = precision
        self.dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        self.channels_last = channels_last
        self.folded_bn = folded_bn
        self.calibration_batches = calibration_batches
        self.compiled = compiled
        self.backend = backend
        self.input_shape = input_shape
        self.compile_seconds: float | None = None
        # What forward calls: the module itself or its torch.compile wrapper. Kept out of
        # the module tree, so the state dict and repr show the module once.
        object.__setattr__(self, "_run", module)

    def train(self, mode: bool = True) -> InferenceModel:
        """Record ``mode`` only: the wrapped module stays in eval mode (its BNs are folded
        or fixed, and an exported int8 graph cannot switch modes at all)."""
        self.training = mode
        return self

    def _convert(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != self.dtype:
            x = x.to(self.dtype)
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def forward(self, x: torch.Tensor) -> Any:
        if self.input_shape is not None and tuple(x.shape[1:]) != self.input_shape:
            raise ConfigError(
                f"this int8 model takes {'x'.join(map(str, self.input_shape))} images (any "
                f"batch size), the size it was calibrated at; got input {tuple(x.shape)}: "
                "resize the images, or quantize again with calibration images of this size"
            )
        if self.compiled:
            # Converted in inference mode: the converted copy is then the inference tensor
            # the compiled graph takes (see _compile_frozen), with no second copy.
            with torch.inference_mode():
                out = self._run(self._convert(x))
        else:
            out = self._run(self._convert(x))
        if isinstance(out, (list, tuple)):
            return [o.float() for o in out]
        return out.float()

    def extra_repr(self) -> str:
        return (
            f"precision={self.precision}, backend={self.backend}, "
            f"channels_last={self.channels_last}, folded_bn={self.folded_bn}, "
            f"compiled={self.compiled}"
        )


@dataclass
class _Prepared:
    """A model ready to be wrapped in an :class:`InferenceModel`, and what was done to it."""

    module: nn.Module
    folded_bn: int
    backend: str
    #: The compiled runner made (and run once) while quantizing: PT2E int8 only.
    run: Callable[[torch.Tensor], Any] | None = None
    calibration_batches: int = 0
    input_shape: tuple[int, ...] | None = None
    compile_seconds: float | None = None


def _resolve_precision(model: nn.Module, precision: str, calibration: Any) -> str:
    """The precision to use (``auto`` resolved for the model's device), after checking that
    the model, its device and the calibration data allow it."""
    if precision not in PRECISION_CHOICES:
        raise ConfigError(
            f"unknown precision {precision!r}: expected one of {', '.join(PRECISION_CHOICES)}"
        )
    if not isinstance(model, nn.Module):
        raise TypeError(f"optimize_for_inference takes an nn.Module, got {type(model).__name__}")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    if precision == "auto":
        precision = auto_precision(device)
    if precision == "int8":
        if calibration is None:
            raise ConfigError(
                "int8 needs calibration data: pass calibration=<batches of your own "
                "preprocessed images> (e.g. a few hundred from the training set)"
            )
        if device.type != "cpu":
            raise ConfigError(
                f"int8 runs on CPU only; the model is on {device}: move it with .cpu()"
            )
    if precision == "bf16" and not has_native_bf16(device):
        warnings.warn(
            f"bf16 on this {device.type} ({torch.backends.cpu.get_cpu_capability()}) has no "
            "native support (AVX512-BF16/AMX): it is emulated and usually slower than fp32",
            EmulatedPrecisionWarning,
            stacklevel=3,  # the caller of optimize_for_inference
        )
    return precision


def _int8_inputs(
    calibration: Any, example_inputs: torch.Tensor | tuple[torch.Tensor, ...] | None
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The calibration batches and the example batch (fp32), all of one image size."""
    batches = list(_calibration_batches(calibration))
    if not batches:
        raise ConfigError("int8 calibration got no batches: pass some of your own images")
    if example_inputs is None:
        example_inputs = batches[0]
    example = example_inputs[0] if isinstance(example_inputs, tuple) else example_inputs
    example = example.float()
    bad = [tuple(x.shape) for x in batches if x.shape[1:] != example.shape[1:]]
    if bad:
        raise ConfigError(
            f"int8 calibration batches of different image sizes ({bad[0]} and "
            f"{tuple(example.shape)}): use one size, the one the model will be given"
        )
    return batches, example


def _prepare_int8(
    work: nn.Module,
    calibration: Any,
    example_inputs: torch.Tensor | tuple[torch.Tensor, ...] | None,
    channels_last: bool,
) -> _Prepared:
    """``work`` quantized to int8 on the calibration batches (compiled, for PT2E)."""
    batches, example = _int8_inputs(calibration, example_inputs)
    start = time.perf_counter()
    module, folded, backend, run = _quantize_int8(work, example, batches, channels_last)
    compile_seconds = time.perf_counter() - start
    # A PT2E graph takes images of the example's size only (its batch dimension is free).
    input_shape = tuple(example.shape[1:]) if backend == "pt2e-x86-inductor" else None
    return _Prepared(module, folded, backend, run, len(batches), input_shape, compile_seconds)


def _inference_model(
    prepared: _Prepared,
    precision: str,
    channels_last: bool,
    compile: bool,
    example: torch.Tensor | None,
) -> InferenceModel:
    """``prepared`` cast to its precision and layout, frozen, and wrapped; compiled (on
    ``example`` first, where there is one) if asked."""
    work = prepared.module
    pt2e = prepared.backend == "pt2e-x86-inductor"
    if precision == "bf16":
        work = work.to(torch.bfloat16)
    if channels_last and not pt2e:
        work = work.to(memory_format=torch.channels_last)
    for p in work.parameters():
        p.requires_grad_(False)
    result = InferenceModel(
        work,
        precision=precision,
        channels_last=channels_last,
        folded_bn=prepared.folded_bn,
        calibration_batches=prepared.calibration_batches,
        compiled=compile or pt2e,
        backend=prepared.backend,
        input_shape=prepared.input_shape,
    )
    if pt2e:
        object.__setattr__(result, "_run", prepared.run)  # compiled and run once already
        result.compile_seconds = prepared.compile_seconds
    elif compile:
        object.__setattr__(result, "_run", _compile_frozen(work))
        if example is not None:
            try:
                result.compile_seconds = _compile_graphs(result, example)
            except Exception as e:  # inductor raises many types; the model still runs
                warnings.warn(
                    f"torch.compile failed on this model ({type(e).__name__}: "
                    f"{str(e).splitlines()[0]}); it runs uncompiled",
                    CompileFallbackWarning,
                    stacklevel=3,  # the caller of optimize_for_inference
                )
                object.__setattr__(result, "_run", work)
                result.compiled, result.backend = False, "eager"
    return result


def optimize_for_inference(
    model: nn.Module,
    precision: str = "fp32",
    *,
    example_inputs: torch.Tensor | tuple[torch.Tensor, ...] | None = None,
    calibration: Iterable[Any] | torch.Tensor | None = None,
    channels_last: bool = True,
    compile: bool = False,
) -> InferenceModel:
    """A copy of ``model`` that computes the same outputs faster (the model is not changed).

    ``precision``:

    * ``fp32``: BN folded, channels_last; outputs equal within 1e-4.
    * ``bf16``: as fp32, then weights and activations in bfloat16; a warning where the
      device has no native bf16.
    * ``int8`` (CPU): needs ``calibration``, an iterable of image batches or
      ``(images, labels)`` pairs, preprocessed as for the model; a few hundred images are
      enough. Quantized by PT2E (``torch.export`` with a dynamic batch dimension, torchao's
      ``X86InductorQuantizer``, ``prepare_pt2e`` / ``convert_pt2e``) and lowered by
      ``torch.compile`` (inductor, freezing) to oneDNN int8 kernels: it is always compiled,
      whatever ``compile`` says, here (seconds to a minute; see ``example_inputs``). Takes
      any batch size, but only images of the calibration size. Without torchao (or where export fails) it falls back to FX graph
      mode quantization, run eagerly, with an :class:`Int8FallbackWarning`.
    * ``auto``: ``bf16`` where bf16 is faster than fp32 on the model's device (a CPU with
      AMX, a GPU from Ampere on), else ``fp32``; never ``int8``, which changes outputs more
      and needs calibration images: ask for it by name (:func:`auto_precision`). The
      result's ``precision`` says which was picked.

    ``compile``: compile the fp32/bf16 result with inductor, with freezing (weights as
    constants: prepacked for oneDNN, each conv fused with the ReLU and residual add after
    it); the first call compiles (seconds to a minute). Where inductor fails on the model
    (given ``example_inputs``, so that it is tried here), a :class:`CompileFallbackWarning`
    says why and the model runs uncompiled.

    ``example_inputs``: one input batch, of the batch size the model will mostly be called
    with: int8 exports and compiles on it (default: the first calibration batch), and a
    compiled fp32/bf16 model compiles on it here (``compile_seconds``), rather than on its
    first calls. Two graphs are compiled: one for this batch size, whose weights are laid
    out for it, and one for any other size, slower (oneDNN reorders some weights on each
    of its calls).

    On a CPU this also calls :func:`~resnetlab.device.keep_freed_host_memory` (a setting
    of the process's malloc): without it, each batch of a large model faults its
    activations in as new pages, e.g. resnet50 at batch 16 135,000 page faults a batch.
    """
    precision = _resolve_precision(model, precision, calibration)
    work = copy.deepcopy(model).eval()
    if next(work.parameters(), torch.empty(0)).device.type == "cpu":
        keep_freed_host_memory()
    example = example_inputs[0] if isinstance(example_inputs, tuple) else example_inputs
    if precision == "int8":
        prepared = _prepare_int8(work, calibration, example_inputs, channels_last)
    else:
        prepared = _Prepared(work, fold_batchnorm(work), "inductor" if compile else "eager")
    result = _inference_model(prepared, precision, channels_last, compile, example)
    for attr in DESCRIPTIVE_ATTRS:
        if hasattr(model, attr):
            setattr(result, attr, getattr(model, attr))
    return result
