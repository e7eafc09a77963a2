"""Exceptions raised by the data layer.

Every error a user can fix (a missing file, a bad checksum, an unreadable image) is a
:class:`DataError`, so command-line front ends can catch one type and print its message.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ResnetlabError

__all__ = [
    "ChecksumError",
    "DataError",
    "DataFormatError",
    "DownloadError",
    "ImageDecodeError",
    "MissingDataError",
    "NoImagesError",
]


class DataError(ResnetlabError, RuntimeError):
    """Base class of all data-layer errors; the message says what to do about it."""


class DataFormatError(DataError):
    """A dataset file exists but is not in the expected format (bad magic, truncated, ...)."""


class ChecksumError(DataError):
    """A downloaded file does not have the published md5 checksum."""


class DownloadError(DataError):
    """A dataset could not be downloaded; the message says which files to put where."""


class MissingDataError(DataError):
    """A dataset is not on disk and downloading was disabled."""


class NoImagesError(DataError, ValueError):
    """Files, folders or patterns given to read images from name no image file; the message
    says, for each, what is there instead (no such file, a folder of other files, ...)."""


class ImageDecodeError(DataError):
    """An image file could not be decoded.

    ``ImageDecodeError(path, reason)`` keeps ``path`` and ``reason`` as attributes. A single
    argument is taken as the whole message: PyTorch's DataLoader re-creates exceptions raised
    in worker processes as ``type(exc)(message)``, and this keeps that working.
    """

    def __init__(self, path: str | Path, reason: str | None = None) -> None:
        if reason is None:
            self.path: str = ""
            self.reason: str = str(path)
            super().__init__(str(path))
            return
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot decode image {self.path}: {reason}")
