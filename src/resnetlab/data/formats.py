"""Readers for the on-disk formats of the built-in datasets.

* IDX (MNIST, Fashion-MNIST): a 4-byte magic number ``00 00 <dtype> <ndim>``, ``ndim``
  big-endian uint32 dimensions, then the raw array. Files may be gzipped or not.
* CIFAR binary (CIFAR-10/100): fixed-size records of label byte(s) followed by 3072 pixel bytes
  (1024 red, 1024 green, 1024 blue, row-major 32x32), inside a ``.tar.gz`` archive or its
  extracted folder.

Both readers decode whole files with ``numpy.frombuffer``-style bulk operations, never a
Python loop over images, and raise :class:`~resnetlab.data.errors.DataFormatError` naming the
file for anything malformed or truncated.
"""

from __future__ import annotations

import gzip
import math
import struct
import tarfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .errors import DataFormatError

__all__ = ["read_cifar", "read_idx", "read_idx_images", "read_idx_labels"]

_IDX_UBYTE = 0x08  # the only IDX element type the MNIST family uses
_GZIP_MAGIC = b"\x1f\x8b"
_MAX_IDX_BYTES = 1 << 32  # far above any MNIST-family file; guards against garbage headers
CIFAR_PIXELS = 3 * 32 * 32


def _open_maybe_gzip(path: Path) -> BinaryIO:
    # Decided by content, not by suffix: people gunzip files and keep the name, or vice versa.
    with open(path, "rb") as f:
        head = f.read(2)
    if head == _GZIP_MAGIC:
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


def _read_fully(f: BinaryIO, buffer: memoryview) -> int:
    """Fill ``buffer`` from ``f`` (which may return short reads); return the bytes read."""
    got = 0
    while got < len(buffer):
        n = f.readinto(buffer[got:])  # type: ignore[attr-defined]
        if not n:
            break
        got += n
    return got


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file of unsigned bytes (gzipped or not) into a uint8 array of its shape."""
    path = Path(path)
    try:
        with _open_maybe_gzip(path) as f:
            header = f.read(4)
            if len(header) < 4:
                raise DataFormatError(
                    f"{path}: truncated IDX file ({len(header)} bytes, no header)"
                )
            if header[:2] != b"\x00\x00" or header[2] != _IDX_UBYTE or not 1 <= header[3] <= 4:
                raise DataFormatError(
                    f"{path}: not an IDX file of unsigned bytes "
                    f"(magic number 0x{header.hex()}, expected 0x000008NN with NN in 01..04)"
                )
            ndim = header[3]
            raw_dims = f.read(4 * ndim)
            if len(raw_dims) < 4 * ndim:
                raise DataFormatError(f"{path}: truncated IDX file (header cut short)")
            dims = struct.unpack(f">{ndim}I", raw_dims)
            count = math.prod(dims)
            if count > _MAX_IDX_BYTES:
                raise DataFormatError(f"{path}: IDX header declares an implausible shape {dims}")
            if not isinstance(f, gzip.GzipFile):
                size = path.stat().st_size - 4 - 4 * ndim
                if size < count:
                    raise DataFormatError(
                        f"{path}: truncated IDX file: header promises {dims} = {count} bytes of "
                        f"data, file holds {size}"
                    )
            data = np.empty(count, dtype=np.uint8)
            got = _read_fully(f, memoryview(data))
            if got < count:
                raise DataFormatError(
                    f"{path}: truncated IDX file: header promises {dims} = {count} bytes of "
                    f"data, file holds {got}"
                )
            if f.read(1):
                raise DataFormatError(
                    f"{path}: IDX file has data past the {dims} array it declares"
                )
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DataFormatError(f"{path}: corrupt or truncated gzip stream ({exc})") from exc
    return data.reshape(dims)


def read_idx_images(path: str | Path) -> np.ndarray:
    """Read an IDX image file (magic 2051) into a uint8 array of shape (N, 1, H, W)."""
    arr = read_idx(path)
    if arr.ndim != 3:
        raise DataFormatError(
            f"{path}: expected an IDX image file (3 dimensions: N, H, W), found shape {arr.shape}"
        )
    return arr[:, None, :, :]


def read_idx_labels(path: str | Path) -> np.ndarray:
    """Read an IDX label file (magic 2049) into an int64 array of shape (N,)."""
    arr = read_idx(path)
    if arr.ndim != 1:
        raise DataFormatError(
            f"{path}: expected an IDX label file (1 dimension), found shape {arr.shape}"
        )
    return arr.astype(np.int64)


def _normalize_member(name: str) -> str:
    return name[2:] if name.startswith("./") else name


def _read_members(source: Path, members: Sequence[str]) -> dict[str, bytes]:
    wanted = set(members)
    blobs: dict[str, bytes] = {}
    if source.is_dir():
        for member in members:
            file = source / member
            if file.is_file():
                blobs[member] = file.read_bytes()
        return blobs
    try:
        # Stream mode ("r|gz"): one sequential pass, no seeking back through the gzip stream.
        with tarfile.open(source, mode="r|gz") as tar:
            for info in tar:
                name = _normalize_member(info.name)
                if name in wanted and info.isfile():
                    extracted = tar.extractfile(info)
                    assert extracted is not None
                    blobs[name] = extracted.read()
                    if len(blobs) == len(wanted):
                        break
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise DataFormatError(f"{source}: corrupt or truncated tar.gz archive ({exc})") from exc
    return blobs


def read_cifar(
    source: str | Path, members: Sequence[str], label_bytes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Read CIFAR binary record files from a ``.tar.gz`` archive or an extracted folder.

    ``members`` are the record files' paths inside the archive (relative to the folder).
    Each record is ``label_bytes`` bytes of label(s) then 3072 bytes of pixels; the last label
    byte is returned. Returns uint8 images (N, 3, 32, 32) and int64 labels (N,).
    """
    source = Path(source)
    record = label_bytes + CIFAR_PIXELS
    blobs = _read_members(source, members)
    missing = [m for m in members if m not in blobs]
    if missing:
        raise DataFormatError(
            f"{source}: missing {', '.join(missing)} (is this the binary release?)"
        )
    records = []
    for member in members:
        raw = blobs[member]
        if not raw or len(raw) % record:
            raise DataFormatError(
                f"{source}: {member} holds {len(raw)} bytes, not a whole number of "
                f"{record}-byte records (truncated file?)"
            )
        records.append(np.frombuffer(raw, dtype=np.uint8).reshape(-1, record))
    data = np.concatenate(records) if len(records) > 1 else records[0]
    labels = data[:, label_bytes - 1].astype(np.int64)
    images = np.ascontiguousarray(data[:, label_bytes:]).reshape(-1, 3, 32, 32)
    return images, labels
