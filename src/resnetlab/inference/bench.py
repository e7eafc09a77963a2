"""Inference speed, side by side: resnetlab's optimized models, torchvision, onnxruntime,
OpenVINO.

:func:`bench_model` builds every system for one model and batch size, times them in one
process with the same inputs (alternating between systems when ``rounds > 1``), and
returns one :class:`BenchRow` each:

* ``img_per_s`` (batch size x timed batches / their total time), ``p50_ms`` and ``p95_ms``
  (latency of one batch);
* ``mem_mb``: the peak resident memory (RSS) of the process while the system ran, minus
  its RSS before the system was built: its copy of the weights, activations and runtime
  workspaces (the ``eager`` system uses the model already in memory, so its figure has no
  weights). Linux ``/proc``: the peak is reset before each run; freed heap is trimmed
  between systems;
* ``peak_fraction``: the compute rate reached, ``2 x MACs x img/s``, over the rate of a
  large matrix product of the same kind measured in the same run (the GEMM probe,
  :func:`gemm_gflops`): fp32 ``torch.matmul`` for fp32 systems, bf16 for bf16 ones, and
  int8 x int8 -> int32 (``torch._int_mm``) for int8 ones. Where this torch has no int8 GEMM
  on the CPU, int8 rows have no ``peak_fraction`` (an fp32 peak would put them at 1000%+);
* ``max_rel_error`` of its logits against the model's own fp32 eager output;
* ``precision``: what the row computed in. OpenVINO's CPU plugin picks its own precision
  unless told (bf16 on CPUs with native bf16): its "default hint" row records the one it
  picked (``INFERENCE_PRECISION_HINT`` of the compiled model);
* ``cpu``: the CPU's tier (:func:`cpu_tier`: AVX2, AVX512, AVX512-VNNI, AVX512-BF16 or
  AMX), which decides what bf16 and int8 can gain.

A system that cannot run here is still a row, with ``skipped=True`` and a note saying why
(a runtime that is not installed, a model torchvision does not have).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import io
import logging
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..device import keep_freed_host_memory, proc_status_kb, reset_peak_rss
from ..errors import ResnetlabError
from ..models import ResNet, create_model, load_model, model_info, to_torchvision_state_dict
from .export import (
    ExportError,
    _torchvision_builder,
    convert_openvino,
    export_model,
    import_openvino,
    openvino_config,
    rel_error,
)
from .meta import describe_model
from .optimize import PRECISIONS, has_native_bf16, optimize_for_inference

__all__ = [
    "COMPARE",
    "BenchError",
    "BenchRow",
    "bench_model",
    "cpu_tier",
    "gemm_gflops",
]

COMPARE = ("eager", "torchvision", "onnxruntime", "openvino")
BENCH_SEED = 0
#: The precision of a system that picks its own (OpenVINO's default hint), until it has.
AUTO = "auto"
Runner = Callable[[torch.Tensor], Any]


class BenchError(ResnetlabError, ValueError):
    """The bench was asked for something it cannot do (a precision, a size, a model)."""


@dataclass
class BenchRow:
    """One system's measurement (``None`` where it was skipped or does not apply)."""

    system: str
    precision: str
    batch_size: int
    model: str = ""
    input_size: tuple[int, int, int] | None = None
    img_per_s: float | None = None
    p50_ms: float | None = None
    p95_ms: float | None = None
    mem_mb: float | None = None
    gflops: float | None = None
    probe_gflops: float | None = None
    peak_fraction: float | None = None
    max_rel_error: float | None = None
    timed_batches: int = 0
    build_s: float | None = None
    cpu: str = ""
    skipped: bool = False
    note: str = ""
    latencies_ms: list[float] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("latencies_ms")
        return out


# --- the GEMM probe -----------------------------------------------------------------------


def _int8_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch._int_mm(a, b)


def gemm_gflops(
    dtype: torch.dtype = torch.float32, max_n: int = 2048, min_time_s: float = 0.3
) -> float:
    """GFLOP/s (GOP/s for int8) of a square matrix product in ``dtype`` on CPU: the best of
    repeated runs.

    ``torch.matmul`` for floating dtypes; for ``torch.int8``, int8 x int8 -> int32
    (``torch._int_mm``, the integer kernels quantized layers use), or a ``LookupError``
    where this torch has none on the CPU. The size doubles from 256 up to ``max_n`` while
    one product takes under 50 ms (an emulated dtype stops early), then products are timed
    for ``min_time_s``. The reference peak for :class:`BenchRow`'s ``peak_fraction``: what
    this machine reaches, with the threads torch uses, at the time of the measurement.
    """
    g = torch.Generator().manual_seed(BENCH_SEED)
    matmul: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = torch.matmul
    if dtype == torch.int8:
        matmul = _int8_matmul
        small = torch.ones(32, 32, dtype=torch.int8)
        try:
            matmul(small, small)
        except (AttributeError, RuntimeError, NotImplementedError) as e:
            raise LookupError(f"no int8 matrix product on this CPU's torch: {e}") from None
    n = 256
    while True:
        if dtype == torch.int8:
            a = torch.randint(-128, 128, (n, n), generator=g, dtype=torch.int8)
            b = torch.randint(-128, 128, (n, n), generator=g, dtype=torch.int8)
        else:
            a = torch.randn(n, n, generator=g).to(dtype)
            b = torch.randn(n, n, generator=g).to(dtype)
        t = time.perf_counter()
        matmul(a, b)
        if n >= max_n or time.perf_counter() - t > 0.05:
            break
        n *= 2
    best, spent, runs = float("inf"), 0.0, 0
    while runs < 3 or spent < min_time_s:
        t = time.perf_counter()
        matmul(a, b)
        dt = time.perf_counter() - t
        best, spent, runs = min(best, dt), spent + dt, runs + 1
        if spent > 10 * min_time_s:
            break
    return 2 * n**3 / best / 1e9


# --- the CPU -------------------------------------------------------------------------------


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _torch_says(name: str) -> bool:
    check = getattr(torch.cpu, name, None)
    return bool(check()) if check is not None else False


def cpu_tier() -> str:
    """The CPU's instruction tier for inference, e.g. ``"AVX512-BF16 (torch: AVX512)"``.

    The highest of AMX (``amx_int8``/``amx_bf16``: int8 and bf16 tile matrix units),
    AVX512-BF16 (native bf16 dot products), AVX512-VNNI (int8 dot products), AVX512 and
    AVX2, read from ``/proc/cpuinfo``'s flags (or torch's own CPU checks where there is no
    ``/proc``); in parentheses, the kernels torch dispatches to
    (``torch.backends.cpu.get_cpu_capability()``).
    """
    flags = _cpu_flags()
    capability = torch.backends.cpu.get_cpu_capability()
    if flags:
        amx = bool(flags & {"amx_int8", "amx_bf16", "amx_tile"})
        bf16, vnni = "avx512_bf16" in flags, "avx512_vnni" in flags
        avx512, avx2 = "avx512f" in flags, "avx2" in flags
    else:
        amx = _torch_says("_is_amx_tile_supported")
        bf16 = _torch_says("_is_avx512_bf16_supported")
        vnni = _torch_says("_is_vnni_supported")
        avx512 = capability.startswith("AVX512")
        avx2 = avx512 or capability == "AVX2"
    tier = next(
        (name for name, has in (("AMX", amx), ("AVX512-BF16", bf16), ("AVX512-VNNI", vnni),
                                ("AVX512", avx512), ("AVX2", avx2)) if has),
        capability,
    )  # fmt: skip
    return f"{tier} (torch: {capability})"


# --- memory -------------------------------------------------------------------------------


def _trim_heap() -> None:
    # Give freed heap pages back to the OS, so that the next system's growth is its own.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


# --- systems ------------------------------------------------------------------------------


@dataclass
class _System:
    name: str
    precision: str
    build: Callable[[], Runner]
    run: Runner | None = None
    row: BenchRow | None = None
    base_kb: int | None = None
    peak_reset: bool = False


def _build(s: _System, batch_size: int) -> bool:
    """Build a system, noting its RSS before; False (and a skipped row) if it cannot run."""
    s.row = BenchRow(s.name, s.precision, batch_size)
    _trim_heap()
    s.base_kb = proc_status_kb("VmRSS")
    t = time.perf_counter()
    try:
        s.run = s.build()
    except (LookupError, ExportError) as e:
        s.row.skipped, s.row.note = True, f"skipped: {e}"
        return False
    s.row.build_s = time.perf_counter() - t
    if s.precision == AUTO:  # a system that picks its own precision says which it took
        s.row.precision = getattr(s.run, "precision", AUTO)
    s.row.note = getattr(s.run, "note", "")
    _trim_heap()
    s.peak_reset = reset_peak_rss()
    return True


def _resolve_model(model: str | os.PathLike | nn.Module, in_chans: int | None) -> ResNet:
    if isinstance(model, nn.Module):
        if not isinstance(model, ResNet) or model.features_only:
            raise BenchError("bench takes a resnetlab classification model (not features_only)")
        return model
    path = Path(model)
    if path.exists():
        return load_model(path)
    return create_model(str(model), in_chans=in_chans or 3)


def _torch_runner(module: nn.Module) -> Runner:
    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return module(x)

    return run


def _build_torchvision(model: ResNet) -> Runner:
    cfg = model.config
    if cfg.is_bottleneck and cfg.stride_on == "1x1" and not cfg.is_preact:
        raise LookupError(
            f"{model.name} strides on the bottleneck's 1x1 conv; torchvision's nets on the 3x3"
        )
    try:
        state_dict = to_torchvision_state_dict(model)
    except ValueError as e:
        raise LookupError(str(e)) from None
    build, call = _torchvision_builder(model)
    twin = build()
    try:
        twin.load_state_dict(state_dict, strict=True)
    except RuntimeError:
        raise LookupError(f"{call} does not take {model.name}'s weights") from None
    return _torch_runner(twin.eval())


def _ort_session(path: Path) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle onnxruntime threads spin by default, stealing the CPU from whatever runs next.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _ort_runner(session: Any) -> Runner:
    def run(x: torch.Tensor) -> np.ndarray:
        return session.run(["logits"], {"input": x.numpy()})[0]

    return run


def _export_onnx(model: ResNet, size: tuple[int, int, int], workdir: Path) -> Path:
    """The model as ONNX (dynamic batch) for inputs of ``size``, written once per bench."""
    path = workdir / f"{model.name}.onnx"
    if path.exists():
        return path
    _, h, w = size
    if h != w:
        raise LookupError(f"the ONNX export takes square images; the input is {h}x{w}")
    prep, names = describe_model(model)
    card = None
    if prep.image_size != h:
        # export_model traces at the image size the preprocessing names: describe the
        # export with a card that names this one.
        at_h = dataclasses.replace(prep, image_size=h, resize=max(prep.resize, h))
        card = dataclasses.replace(model.card, preprocessing=at_h, class_names=names)
    export_model(model, "onnx", path, dynamic_batch=True, card=card)
    return path


def _build_onnxruntime(model: ResNet, size: tuple[int, int, int], workdir: Path) -> Runner:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise LookupError("onnxruntime is not installed: pip install onnxruntime") from None
    return _ort_runner(_ort_session(_export_onnx(model, size, workdir)))


def _build_onnxruntime_int8(
    model: ResNet, size: tuple[int, int, int], workdir: Path, calibration: list[torch.Tensor]
) -> Runner:
    try:
        from onnxruntime.quantization import (
            CalibrationDataReader,
            QuantFormat,
            QuantType,
            quantize_static,
        )
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError:
        raise LookupError("onnxruntime is not installed: pip install onnxruntime") from None

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self.batches, None)
            return None if x is None else {"input": x.numpy()}

    fp32 = _export_onnx(model, size, workdir)
    pre, int8 = workdir / f"{model.name}.pre.onnx", workdir / f"{model.name}.int8.onnx"
    quant_pre_process(str(fp32), str(pre))
    # Static QDQ: uint8 activations, per-channel int8 weights (onnxruntime's recommended CPU
    # format). Without VNNI the u8 x s8 dot product can saturate; 7-bit weights avoid it.
    quantize_static(
        str(pre),
        str(int8),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        reduce_range=not torch.cpu._is_vnni_supported(),
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    return _ort_runner(_ort_session(int8))


# OpenVINO's names for the precisions, and the bench's.
_OV_PRECISIONS = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}


class _OpenVINORunner:
    """One synchronous infer request of a compiled model, and the precision it runs in."""

    def __init__(self, compiled: Any, note: str = "") -> None:
        self.request = compiled.create_infer_request()
        picked = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        self.precision = _OV_PRECISIONS.get(picked, picked)
        self.note = note

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        self.request.infer({0: x.numpy()}, share_inputs=True)
        # A copy: the request's output tensor is overwritten by its next call.
        return self.request.get_output_tensor(0).data.copy()


def _openvino_model(model: ResNet, shape: tuple[int, ...], cache: dict[str, Any]) -> Any:
    """The model converted once per bench (batch free), a copy of it fixed to ``shape``."""
    if "model" not in cache:
        example = _random_batches((2, *shape[1:]), 1, BENCH_SEED)[0]
        cache["model"] = convert_openvino(model, example, dynamic_batch=True)
    return cache["model"].clone()


def _compile_openvino(
    ov: Any, converted: Any, shape: tuple[int, ...], precision: str | None
) -> Any:
    # Compiled for the bench's batch shape, as a deployment would: the CPU plugin's
    # kernels for a static shape are faster than its dynamic-shape path.
    converted.reshape(list(shape))
    try:
        return ov.Core().compile_model(converted, "CPU", openvino_config(precision))
    except RuntimeError as e:
        raise LookupError(f"OpenVINO's CPU plugin could not compile the model: {e}") from None


def _build_openvino(
    model: ResNet, shape: tuple[int, ...], cache: dict[str, Any], precision: str | None
) -> Runner:
    ov = import_openvino()
    converted = _openvino_model(model, shape, cache)
    runner = _OpenVINORunner(_compile_openvino(ov, converted, shape, precision))
    if precision is None:
        runner.note = (
            f"OpenVINO's default precision on this CPU: {runner.precision} "
            "(INFERENCE_PRECISION_HINT)"
        )
    return runner


@contextlib.contextmanager
def _quiet_nncf() -> Iterator[None]:
    """NNCF logs to stdout and draws progress bars there: keep both out of the bench's
    output (which may be JSON)."""
    loggers = [logging.getLogger(n) for n in ("nncf", "torch.utils.cpp_extension")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _build_openvino_int8(
    model: ResNet, shape: tuple[int, ...], cache: dict[str, Any], calibration: list[torch.Tensor]
) -> Runner:
    ov = import_openvino()
    converted = _openvino_model(model, shape, cache)
    # Post-training static quantization on the batch-free model, so that calibration
    # batches of any size fit; then fixed to the bench's shape like the fp32 rows.
    with _quiet_nncf():
        try:
            import nncf
        except ImportError:
            raise LookupError("NNCF int8 needs the nncf package: pip install nncf") from None
        data = nncf.Dataset([x.numpy() for x in calibration])
        try:
            quantized = nncf.quantize(converted, data, subset_size=len(calibration))
        except (RuntimeError, ValueError) as e:
            raise LookupError(f"NNCF could not quantize the model: {e}") from None
    # The ops NNCF leaves in float run in fp32, as in the other int8 rows.
    compiled = _compile_openvino(ov, quantized, shape, "f32")
    return _OpenVINORunner(compiled, note="NNCF static int8, other ops fp32")


def _random_batches(shape: tuple[int, ...], count: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g) for _ in range(count)]


@dataclass(frozen=True)
class _Plan:
    """What :func:`bench_model` was asked to measure, checked."""

    batch_size: int
    precisions: Sequence[str]
    compare: Sequence[str]
    compile: Sequence[str]
    iters: int
    warmup: int
    rounds: int
    max_seconds: float | None
    probe: bool


def _build_ours(
    model: ResNet, precision: str, calibration: list[torch.Tensor], comp: bool
) -> Callable[[], Runner]:
    """What builds :func:`optimize_for_inference`'s model at ``precision``."""

    def build() -> Runner:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="bf16 on this")
            opt = optimize_for_inference(model, precision, calibration=calibration,
                                         compile=comp, example_inputs=calibration[0])  # fmt: skip
        return _torch_runner(opt)

    return build


_OUR_LABELS = {
    "fp32": "resnetlab optimized (BN folded, channels_last)",
    "bf16": "resnetlab optimized bf16 (BN folded, channels_last)",
    "int8": "resnetlab int8 (PT2E, inductor)",  # always compiled: inductor lowers it to int8 kernels
}


def _our_systems(model: ResNet, plan: _Plan, calibration: list[torch.Tensor]) -> list[_System]:
    """resnetlab's optimized model at each precision, and its torch.compile variants."""
    systems = []
    for precision in plan.precisions:
        label = _OUR_LABELS[precision]
        systems.append(_System(label, precision, _build_ours(model, precision, calibration, False)))
        if precision in plan.compile and precision != "int8":
            build = _build_ours(model, precision, calibration, True)
            systems.append(_System(label + " + torch.compile (freezing)", precision, build))
    return systems


def _onnxruntime_systems(
    model: ResNet,
    size: tuple[int, int, int],
    workdir: Path,
    calibration: list[torch.Tensor],
    int8: bool,
) -> list[_System]:
    """onnxruntime on the ONNX export: fp32, and static QDQ int8 with ``int8``."""
    systems = [_System("onnxruntime", "fp32", lambda: _build_onnxruntime(model, size, workdir))]
    if int8:
        systems.append(
            _System(
                "onnxruntime int8 (static QDQ)",
                "int8",
                lambda: _build_onnxruntime_int8(model, size, workdir, calibration),
            )
        )
    return systems


def _openvino_systems(
    model: ResNet, shape: tuple[int, ...], calibration: list[torch.Tensor], int8: bool
) -> list[_System]:
    """OpenVINO's CPU plugin at the bench's batch ``shape``: the fp32 hint, its default
    hint, and NNCF int8 with ``int8``; the model is converted once for all of them."""
    cache: dict[str, Any] = {}
    systems = [
        _System("openvino (hint f32)", "fp32",
                lambda: _build_openvino(model, shape, cache, "f32")),
        _System("openvino (default hint)", AUTO,
                lambda: _build_openvino(model, shape, cache, None)),
    ]  # fmt: skip
    if int8:
        systems.append(
            _System(
                "openvino int8 (NNCF)",
                "int8",
                lambda: _build_openvino_int8(model, shape, cache, calibration),
            )
        )
    return systems


def _systems(
    model: ResNet,
    plan: _Plan,
    size: tuple[int, int, int],
    calibration: list[torch.Tensor],
    workdir: Path,
) -> list[_System]:
    """Every system to time, in the order of the table."""
    systems = []
    if "eager" in plan.compare:
        systems.append(_System("resnetlab eager (NCHW, BN)", "fp32", lambda: _torch_runner(model)))
    if "torchvision" in plan.compare:
        systems.append(
            _System("torchvision eager (NCHW)", "fp32", lambda: _build_torchvision(model))
        )
    systems += _our_systems(model, plan, calibration)
    int8 = "int8" in plan.precisions
    if "onnxruntime" in plan.compare:
        systems += _onnxruntime_systems(model, size, workdir, calibration, int8)
    if "openvino" in plan.compare:
        systems += _openvino_systems(model, (plan.batch_size, *size), calibration, int8)
    return systems


def _time(
    run: Runner, x: torch.Tensor, warmup: int, iters: int, max_seconds: float | None
) -> tuple[list[float], Any]:
    """Per-batch seconds of ``iters`` timed calls after ``warmup`` untimed ones, and an output.

    With ``max_seconds``, warm-up and timing each stop early once they have taken that long
    (after one call each), so a very slow system (emulated bf16) still finishes.
    """
    out = None
    start = time.perf_counter()
    for _ in range(warmup):
        out = run(x)
        if max_seconds is not None and time.perf_counter() - start > max_seconds:
            break
    times: list[float] = []
    start = time.perf_counter()
    for _ in range(iters):
        t = time.perf_counter()
        result = run(x)
        times.append(time.perf_counter() - t)
        out = result if out is None else out
        if max_seconds is not None and time.perf_counter() - start > max_seconds:
            break
    return times, out


def bench_model(
    model: str | os.PathLike | nn.Module,
    *,
    batch_size: int = 16,
    precisions: Sequence[str] = PRECISIONS,
    compare: Sequence[str] = COMPARE,
    input_size: tuple[int, int, int] | None = None,
    iters: int = 10,
    warmup: int = 2,
    rounds: int = 1,
    max_seconds: float | None = None,
    calibration: Iterable[Any] | None = None,
    compile: bool | Sequence[str] = False,
    probe: bool = True,
    threads: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[BenchRow]:
    """Time one model's inference in every system, side by side; one row per system.

    ``model``: a zoo name, a run directory / resnetlab ``.safetensors`` file, or a ResNet.
    The systems: :func:`~resnetlab.inference.optimize.optimize_for_inference` at each of
    ``precisions`` (``compile=True``, or a list of precisions, adds ``torch.compile``
    variants), and from ``compare``: ``eager``, the model as it is (fp32, NCHW);
    ``torchvision``, its twin in torchvision (or a skipped row saying why there is none);
    ``onnxruntime``, the ONNX export in fp32, plus static int8 when ``int8`` is among the
    precisions; ``openvino``, the model converted to OpenVINO and compiled for the CPU at
    the bench's batch shape, with the fp32 precision hint, with the plugin's default hint
    (the row's precision is the one it picked: bf16 on CPUs with native bf16), and NNCF
    static int8 (float ops in fp32) when ``int8`` is among the precisions. A runtime that
    is not installed gives rows that say so. Every row's ``max_rel_error`` is against the
    model's own eager output. Every system runs with
    :func:`~resnetlab.device.keep_freed_host_memory` on, which ``optimize_for_inference``
    sets for the process (onnxruntime and OpenVINO keep their own memory pools anyway).
    ``input_size`` (C, H, W) defaults to the model's native size. The first round times ``iters`` batches after ``warmup`` untimed ones
    (fewer once either has taken ``max_seconds``); ``rounds > 1`` alternates the systems,
    the later rounds timing the warm systems again.
    ``calibration``: image batches for int8 (default: random ones, which measure speed,
    not accuracy); onnxruntime's and NNCF's int8 use the same batches. ``probe``: measure
    the GEMM peak for ``peak_fraction``. ``threads``: intra-op threads of torch,
    onnxruntime and OpenVINO for the run (default: torch's setting).
    """
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad:
        raise BenchError(f"unknown precision(s) {bad}: expected some of {', '.join(PRECISIONS)}")
    bad = [c for c in compare if c not in COMPARE]
    if bad:
        raise BenchError(f"unknown comparison(s) {bad}: expected some of {', '.join(COMPARE)}")
    compiled = tuple(precisions) if compile is True else tuple(compile or ())
    bad = [p for p in compiled if p not in precisions]
    if bad:
        raise BenchError(f"compile={list(compiled)}: {bad} not among the precisions")
    if threads is not None and threads < 1:
        raise BenchError(f"threads={threads}: expected an integer >= 1")
    if batch_size < 1 or iters < 1 or warmup < 0 or rounds < 1:
        raise BenchError(
            f"batch_size={batch_size}, iters={iters}, warmup={warmup}, rounds={rounds}: "
            "expected batch_size, iters, rounds >= 1 and warmup >= 0"
        )
    plan = _Plan(batch_size, precisions, compare, compiled, iters, warmup, rounds, max_seconds,
                 probe)  # fmt: skip
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _bench(model, plan, input_size, calibration, progress)
    finally:
        torch.set_num_threads(before)


def _bench_net(
    model: str | os.PathLike | nn.Module, input_size: tuple[int, int, int] | None
) -> tuple[ResNet, tuple[int, int, int]]:
    """The model to bench (CPU, eval mode) and its input size (C, H, W)."""
    net = _resolve_model(model, input_size[0] if input_size else None).cpu().eval()
    size = tuple(input_size) if input_size else tuple(net.config.input_size)
    if len(size) != 3 or size[0] != net.config.in_chans:
        raise BenchError(
            f"input_size={size}: expected (C, H, W) with C = {net.config.in_chans}, the "
            "model's input channels"
        )
    return net, size


def _bench_calibration(
    calibration: Iterable[Any] | None, shape: tuple[int, ...]
) -> tuple[list[torch.Tensor], str]:
    """The int8 calibration batches (random ones by default) and the note int8 rows get."""
    if calibration is None:
        return _random_batches(shape, 2, BENCH_SEED + 1), "calibrated on random inputs (speed only)"
    calib = [b[0] if isinstance(b, (tuple, list)) else b for b in calibration]
    return calib, f"calibrated on {sum(len(b) for b in calib)} images"


def _gemm_probes(precisions: Sequence[str], say: Callable[[str], None]) -> dict[str, float]:
    """One peak per kind of arithmetic: fp32 systems against an fp32 GEMM, bf16 against
    bf16, int8 against an int8 one (none where torch has no int8 GEMM: no fraction then)."""
    say("GEMM probe (fp32)")
    probes = {"fp32": gemm_gflops(torch.float32)}
    for precision, dtype in (("bf16", torch.bfloat16), ("int8", torch.int8)):
        if precision in precisions:
            say(f"GEMM probe ({precision})")
            with contextlib.suppress(LookupError):
                probes[precision] = gemm_gflops(dtype)
    return probes


def _time_round(
    systems: list[_System],
    r: int,
    plan: _Plan,
    x: torch.Tensor,
    reference: torch.Tensor,
    say: Callable[[str], None],
) -> None:
    """Round ``r``: build each system on first use and time it; the first round also
    measures its error against ``reference`` and its peak memory."""
    for s in systems:
        if s.row is not None and s.row.skipped:
            continue
        say(f"round {r + 1}/{plan.rounds}: {s.name} ({s.precision})")
        if s.run is None and not _build(s, plan.batch_size):
            continue
        times, out = _time(s.run, x, plan.warmup if r == 0 else 0, plan.iters, plan.max_seconds)
        if r == 0:
            s.row.max_rel_error = rel_error(reference, torch.as_tensor(out))
            peak = proc_status_kb("VmHWM") if s.peak_reset else None
            if peak is not None and s.base_kb is not None:
                s.row.mem_mb = (peak - s.base_kb) / 1024
        s.row.latencies_ms += [1000 * t for t in times]


def _summarise(
    row: BenchRow, batch_size: int, macs: float, probes: dict[str, float], calib_note: str
) -> None:
    """Fill in a timed row's throughput, latencies, compute rate and notes, in place."""
    notes = [row.note] if row.note else []
    if not row.skipped:
        lat = row.latencies_ms
        row.timed_batches = len(lat)
        row.img_per_s = batch_size * len(lat) / (sum(lat) / 1000)
        row.p50_ms = statistics.median(lat)
        row.p95_ms = float(np.percentile(lat, 95))
        row.gflops = 2 * macs * row.img_per_s / 1e9
        row.probe_gflops = probes.get(row.precision)
        if row.probe_gflops:
            row.peak_fraction = row.gflops / row.probe_gflops
        elif probes and row.precision == "int8":
            notes.append("no int8 GEMM probe on this torch: no fraction of peak")
        if row.precision == "int8":
            notes.append(calib_note)
        if row.precision == "bf16" and not has_native_bf16():
            notes.append("bf16 emulated (no AVX512-BF16/AMX)")
        if row.mem_mb is None:
            notes.append("no peak memory (needs Linux /proc)")
    row.note = "; ".join(notes)


def _bench(
    model: str | os.PathLike | nn.Module,
    plan: _Plan,
    input_size: tuple[int, int, int] | None,
    calibration: Iterable[Any] | None,
    progress: Callable[[str], None] | None,
) -> list[BenchRow]:
    say = progress or (lambda _msg: None)
    keep_freed_host_memory()  # what optimize_for_inference sets: the same for every system
    net, size = _bench_net(model, input_size)
    macs = model_info(net, size)["macs"]
    x = _random_batches((plan.batch_size, *size), 1, BENCH_SEED)[0]
    calib, calib_note = _bench_calibration(calibration, (plan.batch_size, *size))
    probes = _gemm_probes(plan.precisions, say) if plan.probe else {}
    with torch.inference_mode():
        reference = net(x)

    with tempfile.TemporaryDirectory(prefix="resnetlab-bench-") as tmp:
        systems = _systems(net, plan, size, calib, Path(tmp))
        for r in range(plan.rounds):
            _time_round(systems, r, plan, x, reference, say)

    # bf16 that only a system's own choice brought in (OpenVINO's default): its probe now.
    chose_bf16 = any(s.row.precision == "bf16" and not s.row.skipped for s in systems)
    if plan.probe and chose_bf16 and "bf16" not in probes:
        say("GEMM probe (bf16)")
        probes["bf16"] = gemm_gflops(torch.bfloat16)
    tier = cpu_tier()
    for s in systems:
        s.row.model, s.row.input_size, s.row.cpu = net.name, size, tier
        _summarise(s.row, plan.batch_size, macs, probes, calib_note)
    return [s.row for s in systems]
