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
* ``int8`` quantizes weights (per channel) and activations (per tensor) with scales
  calibrated on the user's own images, conv + BN + ReLU and add + ReLU fused into single
  quantized ops; CPU only.
"""

from __future__ import annotations

import copy
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import fx, nn
from torch.ao.nn import quantized as nnq
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..errors import ConfigError
from ..models.blocks import BatchNormAct2d

__all__ = [
    "PRECISIONS",
    "TOLERANCES",
    "EmulatedPrecisionWarning",
    "InferenceModel",
    "fold_batchnorm",
    "has_native_bf16",
    "optimize_for_inference",
]

PRECISIONS = ("fp32", "bf16", "int8")
# Largest max|optimized - model| / max|model| expected on a trained net. fp32 folding only
# reorders float arithmetic; bf16 keeps 8 bits of mantissa (relative rounding 2^-9 per op,
# accumulated over the depth); int8 is checked by top-1 accuracy rather than logits.
TOLERANCES = {"fp32": 1e-4, "bf16": 5e-2, "int8": 2e-1}
# Attributes that describe the model (its sidecar), carried over so that describe_model,
# Predictor.from_model and export see the same architecture, classes and preprocessing.
DESCRIPTIVE_ATTRS = ("config", "name", "num_classes", "meta", "features_only")


class EmulatedPrecisionWarning(UserWarning):
    """The precision asked for has no hardware support here: it runs, but slowly."""


def has_native_bf16(device: torch.device | str = "cpu") -> bool:
    """Whether bf16 matmuls/convs run natively on ``device`` (AVX512-BF16/AMX, or sm80+)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type != "cpu":
        return False
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


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


def _quantize_int8(
    model: nn.Module, example: torch.Tensor, calibration: Iterable[Any]
) -> tuple[nn.Module, int]:
    # Which int8 flow: torch 2.14 dropped torch.ao.quantization.quantize_pt2e in favour of
    # torchao's PT2E flow, but torchao 0.18's X86InductorQuantizer cannot annotate these
    # nets under torch 2.14: its conv + add + ReLU pattern matching of the residual sum
    # fails with "Input partition has more than one output node" (resnetlab's resnet18 and
    # resnet20, as torchvision's resnet50). FX graph mode quantization with the
    # x86 backend (fbgemm kernels, per-channel int8 weights, uint8 activations) is still in
    # torch 2.14, deprecated but working: it fuses conv + ReLU and the residual add + ReLU
    # into quantized ops and needs no extra dependency. Its deprecation notices are hidden.
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
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*reduce_range will be deprecated")
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions")
        prepared = prepare_fx(model, get_default_qconfig_mapping(backend), (example,))
        seen = 0
        with torch.no_grad():
            for x in _calibration_batches(calibration):
                prepared(x)
                seen += 1
        if not seen:
            raise ConfigError("int8 calibration got no batches: pass some of your own images")
        return convert_fx(prepared), seen


class InferenceModel(nn.Module):
    """A model prepared by :func:`optimize_for_inference`.

    Takes fp32 NCHW batches (it converts them to its dtype and layout) and returns fp32
    logits. ``precision``, ``channels_last``, ``folded_bn`` (BNs folded into convs),
    ``calibration_batches`` (int8) and ``compiled`` say what was done; the model's
    ``config``, ``name``, ``num_classes`` and ``meta`` are carried over.
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
    ) -> None:
        super().__init__()
        self.module = module
        self.precision = precision
        self.dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        self.channels_last = channels_last
        self.folded_bn = folded_bn
        self.calibration_batches = calibration_batches
        self.compiled = compiled
        # What forward calls: the module itself or its torch.compile wrapper. Kept out of
        # the module tree, so the state dict and repr show the module once.
        object.__setattr__(self, "_run", module)

    def forward(self, x: torch.Tensor) -> Any:
        if x.dtype != self.dtype:
            x = x.to(self.dtype)
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        out = self._run(x)
        if isinstance(out, (list, tuple)):
            return [o.float() for o in out]
        return out.float()

    def extra_repr(self) -> str:
        return (
            f"precision={self.precision}, channels_last={self.channels_last}, "
            f"folded_bn={self.folded_bn}, compiled={self.compiled}"
        )


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

    ``precision``: ``fp32`` (BN folded, channels_last; outputs equal within 1e-4),
    ``bf16`` (as fp32, then weights and activations in bfloat16; a warning where the
    device has no native bf16) or ``int8`` (CPU; needs ``calibration``: an iterable of image
    batches, or ``(images, labels)`` pairs, preprocessed as for the model; a few hundred
    images are enough). ``example_inputs``: one input batch, used to trace the int8
    graph (default: the first calibration batch). ``compile``: wrap the result in
    ``torch.compile`` (inductor); the first call then takes seconds to minutes.
    """
    if precision not in PRECISIONS:
        raise ConfigError(
            f"unknown precision {precision!r}: expected one of {', '.join(PRECISIONS)}"
        )
    if not isinstance(model, nn.Module):
        raise TypeError(f"optimize_for_inference takes an nn.Module, got {type(model).__name__}")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
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
            stacklevel=2,
        )

    work = copy.deepcopy(model).eval()
    batches = 0
    if precision == "int8":
        calibration = list(_calibration_batches(calibration))
        if example_inputs is None:
            if not calibration:
                raise ConfigError("int8 calibration got no batches: pass some of your own images")
            example_inputs = calibration[0]
        example = example_inputs[0] if isinstance(example_inputs, tuple) else example_inputs
        # The quantization flow folds conv + BN (+ ReLU) itself, into one quantized op; BN
        # folded beforehand would leave an Identity between conv and ReLU and no fusion.
        _split_bn_act(work)
        before = sum(isinstance(m, nn.BatchNorm2d) for m in work.modules())
        work, batches = _quantize_int8(work, example.float(), calibration)
        folded = before - sum(isinstance(m, nnq.BatchNorm2d) for m in work.modules())
    else:
        folded = fold_batchnorm(work)
    if precision == "bf16":
        work = work.to(torch.bfloat16)
    if channels_last:
        work = work.to(memory_format=torch.channels_last)
    for p in work.parameters():
        p.requires_grad_(False)
    result = InferenceModel(
        work,
        precision=precision,
        channels_last=channels_last,
        folded_bn=folded,
        calibration_batches=batches,
        compiled=compile,
    )
    for attr in DESCRIPTIVE_ATTRS:
        if hasattr(model, attr):
            setattr(result, attr, getattr(model, attr))
    if compile:
        object.__setattr__(result, "_run", torch.compile(work, options={"freezing": True}))
    return result
