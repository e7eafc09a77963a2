"""Deterministic seeds derived from tuples, for per-epoch and per-batch random generators.

Python's ``hash`` is salted per process for strings and may change between versions, so seeds
are derived with BLAKE2b instead: the same parts give the same seed on every machine.
"""

from __future__ import annotations

import hashlib

import torch

__all__ = ["derive_seed", "generator"]


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed that is a pure function of ``parts``."""
    text = "\x1f".join(f"{type(p).__name__}:{p}" for p in parts)
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def generator(*parts: int | str) -> torch.Generator:
    """A fresh CPU generator seeded with :func:`derive_seed` of ``parts``."""
    return torch.Generator().manual_seed(derive_seed(*parts))
