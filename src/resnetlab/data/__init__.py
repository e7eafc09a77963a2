"""Datasets and data loaders of resnetlab.

``--data`` specs (:func:`parse_data_spec`): ``fashion-mnist``, ``mnist``, ``cifar10``,
``cifar100``, ``imagefolder:PATH``, ``synthetic[:OPTIONS]``.

* :func:`build_loaders` gives the training loader, the evaluation loader and the
  :class:`DataInfo` (classes, image size, normalization) of a
  :class:`~resnetlab.config.DataConfig`.
* :func:`load_split` reads one split of an in-memory dataset as uint8 tensors.
* :func:`load_image` decodes one image file, for prediction on files.
* :func:`is_image_file` and :data:`IMAGE_EXTENSIONS` say which files are images, for
  folders and ``predict`` alike.
* :func:`build_dense_loaders` gives the loaders and :class:`DenseInfo` of the detection and
  segmentation specs (:func:`parse_dense_spec`): ``coco:PATH`` (:func:`read_coco`) and
  ``fashion-mnist-scenes[:OPTIONS]`` (:func:`write_scene_set`).

Of the rest of resnetlab this package imports only the configs (:mod:`resnetlab.config`),
the error base and file I/O (:mod:`resnetlab.io`).
"""

from .build import SPLITS, VALID_SPECS, ParsedSpec, build_loaders, load_split, parse_data_spec
from .catalog import CATALOG, IMAGENET_MEAN, IMAGENET_STD, DatasetSpec, RemoteFile
from .coco import (
    IGNORE_INDEX,
    CocoDataset,
    CocoImage,
    CocoObject,
    CocoSplit,
    decode_masks,
    read_coco,
    semantic_target,
)
from .dense import (
    DENSE_AUGMENTS,
    DENSE_TASKS,
    VALID_DENSE_SPECS,
    DenseDataset,
    DenseInfo,
    DenseLoader,
    DenseSource,
    build_dense_loaders,
    parse_dense_spec,
)
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
from .scenes import SCENES_NAME, SceneConfig, ensure_scene_set, write_scene_set
from .sources import default_data_dir

__all__ = [
    "AUGMENTS",
    "CATALOG",
    "DENSE_AUGMENTS",
    "DENSE_TASKS",
    "IGNORE_INDEX",
    "IMAGE_EXTENSIONS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SCENES_NAME",
    "SPLITS",
    "VALID_DENSE_SPECS",
    "VALID_SPECS",
    "ChecksumError",
    "CocoDataset",
    "CocoImage",
    "CocoObject",
    "CocoSplit",
    "DataError",
    "DataFormatError",
    "DataInfo",
    "DatasetSpec",
    "DenseDataset",
    "DenseInfo",
    "DenseLoader",
    "DenseSource",
    "DownloadError",
    "FolderLoader",
    "ImageDecodeError",
    "InMemoryLoader",
    "Loader",
    "MissingDataError",
    "NoImagesError",
    "ParsedSpec",
    "RemoteFile",
    "SceneConfig",
    "build_dense_loaders",
    "build_loaders",
    "decode_masks",
    "default_data_dir",
    "ensure_scene_set",
    "is_image_file",
    "load_image",
    "load_split",
    "parse_data_spec",
    "parse_dense_spec",
    "read_coco",
    "semantic_target",
    "write_scene_set",
]
