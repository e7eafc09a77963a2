"""Choosing the device: one rule for training, evaluation and inference."""

from __future__ import annotations

import torch


def resolve_device(name: str | torch.device) -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"invalid device {name!r}: expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available here; use cpu")
    return device


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # the largest glibc accepts on 64-bit systems
_TRIM_THRESHOLD = 1 << 30


def keep_freed_host_memory() -> bool:
    """Let malloc reuse freed tensor memory instead of giving it back to the OS.

    PyTorch's CPU tensors come straight from malloc, with no caching allocator in
    between. glibc serves large blocks with fresh ``mmap`` calls and unmaps or trims them
    on free, so every training step faults its activations and gradients back in as new
    zero-filled pages (thousands of page faults per step, expensive in a VM). Raising the
    mmap and trim thresholds keeps that memory in the heap for the next step: the fast
    Fashion-MNIST preset went from 1,369 to 1,614 img/s (README, "Fast training"). There is no
    library knob for this, hence ctypes; a no-op where libc is not glibc. Returns whether
    the setting took effect.
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
    )
