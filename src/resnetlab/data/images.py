"""Decoding one image file: the single place training and prediction read pictures from disk.

:func:`load_image` opens any format Pillow reads (PNG, JPEG, WebP, BMP, TIFF, ...), applies the
EXIF orientation, and converts to ``RGB`` (3 channels) or ``L`` (1 channel) from grayscale,
RGBA, palette, CMYK or 16-bit images. Pillow's decompression-bomb limit stays in force: it
is checked on the declared size before any pixel is decoded. A large image can be decoded
reduced: ``max_side`` bounds its longer side, ``min_side`` shrinks it as far as the shorter
side stays at least that (what a pipeline that resizes to ``min_side`` needs). JPEGs are
reduced while they are decoded (DCT scaling by 1/2, 1/4 or 1/8, Pillow's ``draft``), so a
huge photo never needs its full-size memory; other formats are decoded whole and reduced at
once by an integer box filter (``Image.reduce``), before the mode conversion (palette and
16-bit images are converted first), so no full-size copy follows the decoded file. GIFs give
their first frame. Anything unreadable raises
:class:`~resnetlab.data.errors.ImageDecodeError` naming the file, never another exception type.
"""

from __future__ import annotations

import io
import math
import struct
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ConfigError
from .errors import ImageDecodeError

__all__ = ["ImageDecodeError", "load_image"]


def _scale_16bit(image: Image.Image) -> Image.Image:
    # Pillow's convert("L") clips 16-bit values at 255 instead of rescaling them, which turns
    # most of a 16-bit picture white; rescale 0..65535 to 0..255 here instead.
    data = np.asarray(image)
    if image.mode == "I" and data.size and data.max() <= 255:
        scaled = data  # 32-bit container holding 8-bit values
    else:
        scaled = np.rint(data.astype(np.float64) / 257.0)
    return Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8), mode="L")


def _convert(image: Image.Image, mode: str) -> Image.Image:
    if image.mode.startswith("I;16") or image.mode == "I":
        image = _scale_16bit(image)
    elif image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # direct P->RGB warns about transparency
    elif image.mode == "F":
        image = Image.fromarray(np.clip(np.asarray(image), 0, 255).astype(np.uint8), mode="L")
    return image.convert(mode)


# Modes whose pixels Image.reduce may average; palette indices and 1-bit pixels must be
# converted first, and Pillow does not reduce 16-bit modes.
_REDUCIBLE_MODES = frozenset({"L", "LA", "RGB", "RGBA", "I", "F", "CMYK", "YCbCr"})


def _draft_size(size: tuple[int, int], min_side: int) -> tuple[int, int]:
    """The smallest size of ``size``'s aspect ratio whose shorter side is ``min_side``."""
    scale = min_side / min(size)
    return math.ceil(size[0] * scale), math.ceil(size[1] * scale)


def _reduce(image: Image.Image, min_side: int) -> Image.Image:
    factor = min(image.size) // min_side
    if factor < 2 or image.mode not in _REDUCIBLE_MODES:
        return image
    return image.reduce(factor)  # sizes round up: the shorter side stays >= min_side


def _check_options(channels: int, max_side: int | None, min_side: int | None) -> None:
    if channels not in (1, 3):
        raise ConfigError(f"channels={channels!r}: must be 1 (grayscale) or 3 (RGB)")
    _check_side("max_side", max_side)
    _check_side("min_side", min_side)


def _check_side(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError(f"{name}={value!r}: must be a positive integer or None")


def load_image(
    path: str | Path,
    channels: int = 3,
    *,
    max_side: int | None = None,
    min_side: int | None = None,
) -> Image.Image:
    """Decode ``path`` into a PIL image in mode ``RGB`` (``channels=3``) or ``L`` (``channels=1``).

    ``max_side``: shrink images whose longer side exceeds it to that size (aspect ratio
    kept); JPEGs are decoded at 1/2, 1/4 or 1/8 scale straight away, which bounds memory.
    ``min_side``: the image will be resized so that its shorter side is ``min_side`` (or
    cropped from at that resolution): decode it reduced as far as the shorter side stays at
    least ``min_side`` (JPEG: while decoding; other formats: right after). Give one of the two.
    Raises :class:`ImageDecodeError` for a missing, empty, truncated, corrupt, oversized
    (decompression bomb) or non-image file.
    """
    _check_options(channels, max_side, min_side)
    if max_side is not None and min_side is not None:
        raise ConfigError(
            f"max_side={max_side}, min_side={min_side}: give one of them (max_side bounds the "
            "longer side, min_side the shorter side of the reduced image)"
        )
    path = Path(path)
    if path.is_dir():
        raise ImageDecodeError(path, "a directory, not an image file")
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ImageDecodeError(path, f"cannot read the file ({exc.strerror or exc})") from exc
    if size == 0:
        raise ImageDecodeError(path, "empty file (0 bytes)")
    return _decode(path, path, channels, max_side, min_side)


def decode_image(
    data: bytes, name: str, channels: int = 3, *, min_side: int | None = None
) -> Image.Image:
    """:func:`load_image` for the bytes of an image file held in memory (an upload):
    the same decoding, checks and errors, with ``name`` in their messages."""
    _check_options(channels, None, min_side)
    if not data:
        raise ImageDecodeError(name, "empty file (0 bytes)")
    return _decode(io.BytesIO(data), name, channels, None, min_side)


def _decode(
    source: Path | io.BytesIO,
    where: str | Path,
    channels: int,
    max_side: int | None,
    min_side: int | None,
) -> Image.Image:
    try:
        with Image.open(source) as opened:
            if max_side is not None and max(opened.size) > max_side:
                opened.draft(None, (max_side, max_side))  # JPEG only; a no-op elsewhere
            elif min_side is not None and min(opened.size) > 2 * min_side:
                opened.draft(None, _draft_size(opened.size, min_side))  # JPEG only
            opened.load()
            ImageOps.exif_transpose(opened, in_place=True)
            image = _reduce(opened, min_side) if min_side is not None else opened
            image = _convert(image, "L" if channels == 1 else "RGB")
            if min_side is not None:
                image = _reduce(image, min_side)  # modes that had to be converted first
        if max_side is not None and max(image.size) > max_side:
            image.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
        return image
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(where, f"refused as a possible decompression bomb ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(where, "not an image in a format Pillow can read") from exc
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        raise ImageDecodeError(where, f"corrupt or truncated image ({exc})") from exc
    except Exception as exc:  # a malformed file can trip any decoder in other ways
        raise ImageDecodeError(
            where, f"corrupt or truncated image ({type(exc).__name__}: {exc})"
        ) from exc
