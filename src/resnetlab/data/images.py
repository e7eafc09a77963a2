"""Decoding one image file: the single place training and prediction read pictures from disk.

:func:`load_image` opens any format Pillow reads (PNG, JPEG, WebP, BMP, TIFF, ...), applies the
EXIF orientation, and converts to ``RGB`` (3 channels) or ``L`` (1 channel) from grayscale,
RGBA, palette, CMYK or 16-bit images. Pillow's decompression-bomb limit stays in force: it
is checked on the declared size before any pixel is decoded. With ``max_side`` a large
image is shrunk while it is decoded (JPEG's DCT scaling), so a huge photo does not need its
full-size memory. Anything unreadable raises :class:`~resnetlab.data.errors.ImageDecodeError`
naming the file, never another exception type.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

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


def load_image(path: str | Path, channels: int = 3, *, max_side: int | None = None) -> Image.Image:
    """Decode ``path`` into a PIL image in mode ``RGB`` (``channels=3``) or ``L`` (``channels=1``).

    ``max_side``: shrink images whose longer side exceeds it to that size (aspect ratio
    kept); JPEGs are decoded at 1/2, 1/4 or 1/8 scale straight away, which bounds memory.
    Raises :class:`ImageDecodeError` for a missing, empty, truncated, corrupt, oversized
    (decompression bomb) or non-image file.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels={channels!r}: must be 1 (grayscale) or 3 (RGB)")
    if max_side is not None and (not isinstance(max_side, int) or max_side < 1):
        raise ValueError(f"max_side={max_side!r}: must be a positive integer or None")
    path = Path(path)
    if path.is_dir():
        raise ImageDecodeError(path, "a directory, not an image file")
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ImageDecodeError(path, f"cannot read the file ({exc.strerror or exc})") from exc
    if size == 0:
        raise ImageDecodeError(path, "empty file (0 bytes)")
    try:
        with Image.open(path) as opened:
            if max_side is not None and max(opened.size) > max_side:
                opened.draft(None, (max_side, max_side))  # JPEG only; a no-op elsewhere
            opened.load()
            oriented = ImageOps.exif_transpose(opened)
            image = _convert(oriented, "L" if channels == 1 else "RGB")
        if max_side is not None and max(image.size) > max_side:
            image.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
        return image
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(path, f"refused as a possible decompression bomb ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(path, "not an image in a format Pillow can read") from exc
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        raise ImageDecodeError(path, f"corrupt or truncated image ({exc})") from exc
    except Exception as exc:  # a malformed file can trip any decoder in other ways
        raise ImageDecodeError(
            path, f"corrupt or truncated image ({type(exc).__name__}: {exc})"
        ) from exc
