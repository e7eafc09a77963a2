"""Choosing the device: one rule for training, evaluation and inference."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .errors import ConfigError


def resolve_device(name: str | torch.device) -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"invalid device {name!r}: expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but CUDA is not available here; use cpu")
    return device


def usable_cores() -> int:
    """The CPUs this process may run on: its affinity mask where the OS has one."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no sched_getaffinity off Linux
        return os.cpu_count() or 1


def cpu_share(
    local_world_size: int,
    threads: int | None,
    num_workers: int,
    *,
    cores: int | None = None,
    omp_threads: int | None = None,
) -> tuple[int | None, int]:
    """Intra-op threads and DataLoader workers for one of ``local_world_size`` processes
    training side by side on this machine's CPU cores (``cores``: :func:`usable_cores`).

    Each process gets ``cores // local_world_size`` cores (at least one). Its torch threads
    are that share, unless set by the user: ``threads`` first, then ``omp_threads`` (an
    OMP_NUM_THREADS the user chose). Its loader workers are ``num_workers`` capped at the
    share less one core, so that the ranks' workers together stay below the cores: a rank
    with one core decodes in its own process, as a worker would only take turns with the
    training thread on that core and add the hand-over of every batch (BENCHMARKS.md,
    "Distributed training on CPU"). Returns ``(threads, workers)``; ``threads`` is None
    (torch's own setting) for a single process without an explicit ``threads``, and a
    single process keeps ``num_workers`` as given.
    """
    if local_world_size < 1:
        raise ConfigError(f"local_world_size={local_world_size!r}: expected an integer >= 1")
    if num_workers < 0:
        raise ConfigError(f"num_workers={num_workers!r}: expected an integer >= 0")
    if local_world_size == 1:
        return threads, num_workers
    share = max(1, (cores or usable_cores()) // local_world_size)
    return threads or omp_threads or share, max(0, min(num_workers, share - 1))


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # the largest glibc accepts on 64-bit systems
_TRIM_THRESHOLD = 1 << 30


def keep_freed_host_memory() -> bool:
    """Let malloc reuse freed tensor memory instead of giving it back to the OS.

    PyTorch's CPU tensors come straight from malloc, with no caching allocator in
    between. glibc serves large blocks with fresh ``mmap`` calls and unmaps or trims them
    on free, so every training step or inference batch faults its activations back in as
    new zero-filled pages (thousands of page faults per step, expensive in a VM). Three
    settings keep that memory in the heap for the next step: the mmap threshold at its
    largest (32 MiB), no mmap at all for larger blocks (a resnet50 batch of 16 at 224 px
    has 51 MB activations), and a trim threshold of 1 GiB (freed memory above it still goes
    back to the OS). The fast Fashion-MNIST preset went from 1,369 to 1,614 img/s (README,
    "Fast training"); resnet50 inference at batch 16 from 135,000 page faults per batch to
    none (BENCHMARKS.md, "Inference"). The price is resident memory: what a batch needed
    stays with the process. jemalloc or tcmalloc would do the same but must be preloaded
    before the process starts; glibc takes these settings at run time, and there is no
    library knob for them, hence ctypes. A no-op where libc is not glibc. Returns whether
    the settings took effect.
    """
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(
        mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
        and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
        and mallopt(_M_MMAP_MAX, 0)
    )


def cpu_bf16_is_fast() -> bool:
    """Whether bf16 beats fp32 on this CPU: only with AMX tiles (Sapphire Rapids and later).

    AVX512-BF16 alone (Cooper Lake, or a virtual machine that hides AMX) has bf16 dot-product
    instructions, but bf16 autocast without AMX measured slower than fp32 on such a machine:
    resnet20 training 0.73x at 28 px and 0.83x at 64 px, resnet50 inference 0.65x
    (BENCHMARKS.md, ``benchmarks/precision.py``). Without either, bf16 is emulated, ~10x
    slower. ``precision: auto`` of the trainer decides by this.
    """
    return bool(torch.cpu._is_amx_tile_supported())


def training_precision(name: str, device: torch.device) -> str:
    """What a training ``precision`` setting means on ``device``: ``auto`` is bf16 on CUDA
    GPUs with bf16 (else fp16) and on CPUs where :func:`cpu_bf16_is_fast`, else fp32."""
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_bf16_is_fast() else "fp32"


def proc_status_kb(key: str) -> int | None:
    """A field of ``/proc/self/status`` in KiB (``VmRSS``: this process's resident memory now,
    ``VmHWM``: its peak), or None where there is none (off Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset the peak RSS (``VmHWM``) to the current RSS, by writing ``5`` to
    ``/proc/self/clear_refs`` (Linux >= 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return proc_status_kb("VmHWM") is not None
