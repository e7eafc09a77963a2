"""Datasets and data loaders of resnetlab.

``--data`` specs (:func:`parse_data_spec`): ``fashion-mnist``, ``mnist``, ``cifar10``,
``cifar100``, ``imagefolder:PATH``, ``synthetic[:OPTIONS]``.

* :func:`build_loaders` gives the training loader, the evaluation loader and the
  :class:`DataInfo` (classes, image size, normalization) of a spec.
* :func:`load_split` reads one split of an in-memory dataset as uint8 tensors.
* :func:`load_image` decodes one image file, for prediction on files.
* :func:`is_image_file` and :data:`IMAGE_EXTENSIONS` say which files are images, for
  folders and ``predict`` alike.

This package is the lowest layer of resnetlab: it imports nothing else from it.
"""

from .build import SPLITS, VALID_SPECS, ParsedSpec, build_loaders, load_split, parse_data_spec
from .catalog import CATALOG, IMAGENET_MEAN, IMAGENET_STD, DatasetSpec, RemoteFile
from .errors import (
    ChecksumError,
    DataError,
    DataFormatError,
    DownloadError,
    ImageDecodeError,
    MissingDataError,
    NoImagesError,
)
from .files import IMAGE_EXTENSIONS, is_image_file
from .folder import FolderLoader
from .images import load_image
from .info import DataInfo
from .loader import AUGMENTS, InMemoryLoader, Loader
from .sources import default_data_dir

__all__ = [
    "AUGMENTS",
    "CATALOG",
    "IMAGE_EXTENSIONS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SPLITS",
    "VALID_SPECS",
    "ChecksumError",
    "DataError",
    "DataFormatError",
    "DataInfo",
    "DatasetSpec",
    "DownloadError",
    "FolderLoader",
    "ImageDecodeError",
    "InMemoryLoader",
    "Loader",
    "MissingDataError",
    "NoImagesError",
    "ParsedSpec",
    "RemoteFile",
    "build_loaders",
    "default_data_dir",
    "is_image_file",
    "load_image",
    "load_split",
    "parse_data_spec",
]
