"""The model card: what a model is, how its images are prepared, where its weights came from.

One typed description per model, in the spirit of timm's ``pretrained_cfg`` and
torchvision's ``Weights.meta`` + ``Weights.transforms()``:

* :class:`Preprocessing`: how an image becomes a model input (train crop, test resize and
  center crop, mean/std, interpolation, channels), with :meth:`Preprocessing.transforms`
  giving the torchvision transforms v2 pipeline. Data, predict, serve, export and bench use
  this one type.
* :class:`ModelCard`: the architecture (its ``ModelConfig`` as a dict), the classes, the
  preprocessing, the :class:`WeightsSource` and the published metrics where known. Every
  :class:`~resnetlab.models.ResNet` carries one as ``model.card``.

The JSON sidecar of resnetlab weights is a card's ``to_meta()`` form (the keys written since
the first version of the format, read back by :meth:`ModelCard.from_meta`).

Models know nothing of data: the defaults here are the conventions of the stems, ImageNet
statistics at 224 px for ImageNet-stem nets and CIFAR-10's at 32 px for CIFAR-stem nets
(He et al. 2015, sections 3.4 and 4.2); the data layer reads its constants from here.
torchvision's transforms are imported on first use, so that importing the models stays fast.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from importlib import resources
from typing import Any

import torch

from ..config import ModelConfig
from ..errors import ConfigError, InstallationError, ResnetlabError

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "INTERPOLATIONS",
    "MAX_IMAGE_SIZE",
    "PREPROCESSING_KEYS",
    "ModelCard",
    "Preprocessing",
    "PreprocessingError",
    "WeightsSource",
    "default_class_names",
    "default_preprocessing",
    "imagenet_class_names",
]

#: ImageNet's channel statistics (torchvision's weights, timm's IMAGENET_DEFAULT_MEAN/STD).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
#: CIFAR-10's channel statistics: the convention of the CIFAR-stem nets.
CIFAR10_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)

INTERPOLATIONS = ("nearest", "bilinear", "bicubic")
# The JSON keys of a preprocessing (the sidecar's ``preprocessing``): the first eight are
# the ones every version has written; ``train_image_size`` is written only where the
# training crop differs from the test crop.
PREPROCESSING_KEYS = (
    "mean", "std", "image_size", "channels", "in_chans", "resize", "crop", "interpolation",
    "train_image_size",
)  # fmt: skip
# Largest image side a model description may ask for: 3 x 4096 x 4096 floats are 200 MB
# per image; a description asking for more is damaged, not a model to run.
MAX_IMAGE_SIZE = 4096
# The sidecar of resnetlab weights: its format name and version.
SIDECAR_FORMAT = "resnetlab-weights"
SIDECAR_VERSION = 1
# The sidecar's key for the sha256 of the tensors (``weights.content_sha256``).
SIDECAR_CHECKSUM = "tensors_sha256"


class PreprocessingError(ResnetlabError, ValueError):
    """Preprocessing or class names that are invalid or do not fit the model."""


# ------------------------------------------------------------------------ preprocessing


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes a model input.

    Test time: resize the shorter side to ``resize``, center-crop ``image_size``, scale to
    [0, 1], normalize with ``mean``/``std`` (one value per image channel), then repeat a
    grey channel when ``channels=1`` and ``in_chans=3``. Training: a random resized crop of
    ``train_size`` (``train_image_size``, None: the test crop) and a horizontal flip instead
    of the resize and center crop. Immutable, so one instance can serve any number of
    threads.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_size: int
    channels: int
    in_chans: int
    resize: int
    crop: str = "center"
    interpolation: str = "bilinear"
    train_image_size: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if self.channels not in (1, 3):
            raise PreprocessingError(f"preprocessing channels={self.channels}: expected 1 or 3")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise PreprocessingError(
                f"preprocessing has {len(self.mean)} mean and {len(self.std)} std values for "
                f"{self.channels}-channel images: give one of each per channel"
            )
        if any(not s > 0 for s in self.std):
            raise PreprocessingError(f"preprocessing std={list(self.std)}: every value must be > 0")
        if self.in_chans not in (self.channels, 3):
            raise PreprocessingError(
                f"preprocessing turns {self.channels}-channel images into {self.in_chans} "
                "channels: only 1 -> 1, 3 -> 3 and 1 -> 3 (grey repeated) are possible"
            )
        if not 1 <= self.image_size <= self.resize <= MAX_IMAGE_SIZE:
            raise PreprocessingError(
                f"preprocessing resize={self.resize}, image_size={self.image_size}: expected "
                f"1 <= image_size <= resize <= {MAX_IMAGE_SIZE} (resize, then center-crop)"
            )
        if self.train_image_size is not None and not 1 <= self.train_image_size <= MAX_IMAGE_SIZE:
            raise PreprocessingError(
                f"preprocessing train_image_size={self.train_image_size}: expected an integer "
                f"in [1, {MAX_IMAGE_SIZE}]"
            )
        if self.crop != "center":
            raise PreprocessingError(
                f"preprocessing crop={self.crop!r}: only 'center' is supported"
            )
        if self.interpolation not in INTERPOLATIONS:
            raise PreprocessingError(
                f"preprocessing interpolation={self.interpolation!r}: expected one of "
                + ", ".join(INTERPOLATIONS)
            )

    @property
    def train_size(self) -> int:
        """The side of the training crop."""
        return self.train_image_size or self.image_size

    @property
    def crop_pct(self) -> float:
        """The test crop's share of the resized side (timm's ``crop_pct``)."""
        return self.image_size / self.resize

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        """Read the JSON form; ``resize``, ``channels``, ``in_chans``, ``crop``,
        ``interpolation`` and ``train_image_size`` may be left out (files written before
        them hold only ``mean``, ``std`` and ``image_size``)."""
        if not isinstance(data, dict):
            raise PreprocessingError(
                f"preprocessing must be a mapping of {', '.join(PREPROCESSING_KEYS)}; "
                f"got a {type(data).__name__}"
            )
        missing = [k for k in ("mean", "std", "image_size") if k not in data]
        if missing:
            raise PreprocessingError(
                f"preprocessing lacks {', '.join(missing)}: got {sorted(map(str, data))}"
            )
        unknown = sorted(set(map(str, data)) - set(PREPROCESSING_KEYS))
        if unknown:
            raise PreprocessingError(
                f"unknown preprocessing key(s) {unknown}: allowed are {sorted(PREPROCESSING_KEYS)}"
            )
        mean, std = (_floats(k, data[k]) for k in ("mean", "std"))
        channels = _int("channels", data.get("channels") or len(mean))
        size = _int("image_size", data["image_size"])
        train = data.get("train_image_size")
        return cls(
            mean=mean,
            std=std,
            image_size=size,
            channels=channels,
            in_chans=_int("in_chans", data.get("in_chans") or channels),
            resize=_int("resize", data.get("resize") or size),
            crop=_str("crop", data.get("crop", "center")),
            interpolation=_str("interpolation", data.get("interpolation", "bilinear")),
            train_image_size=None if train is None else _int("train_image_size", train),
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON form, with the keys sidecars have always had (``train_image_size`` only
        where the training crop is not the test crop)."""
        out: dict[str, Any] = {
            "mean": list(self.mean),
            "std": list(self.std),
            "image_size": self.image_size,
            "channels": self.channels,
            "in_chans": self.in_chans,
            "resize": self.resize,
            "crop": self.crop,
            "interpolation": self.interpolation,
        }
        if self.train_image_size not in (None, self.image_size):
            out["train_image_size"] = self.train_image_size
        return out

    # The pipeline, in pieces: the data layer adds its own augmentation between them.

    def resize_and_crop(self) -> list[Any]:
        """The test-time geometry: resize the shorter side, center-crop (transforms v2)."""
        from torchvision.transforms import v2

        mode = v2.InterpolationMode(self.interpolation)
        return [v2.Resize(self.resize, mode, antialias=True), v2.CenterCrop(self.image_size)]

    def train_crop(self) -> Any:
        """The training geometry: a random resized crop of :attr:`train_size`."""
        from torchvision.transforms import v2

        mode = v2.InterpolationMode(self.interpolation)
        return v2.RandomResizedCrop(self.train_size, interpolation=mode, antialias=True)

    def to_normalized_tensor(self) -> list[Any]:
        """An image (PIL or uint8/float tensor) to a float tensor, normalized."""
        from torchvision.transforms import v2

        return [
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(self.mean), list(self.std)),
        ]

    def transforms(self, train: bool = False) -> Any:
        """The whole pipeline (a ``torchvision.transforms.v2.Compose``) from a PIL image or a
        CxHxW / HxW tensor (uint8, or float in [0, 1]) to the model's input tensor.

        ``train=False``: the test pipeline (what predict and serve apply); ``train=True``: a
        random resized crop and a horizontal flip in place of the resize and center crop.
        """
        from torchvision.transforms import v2

        geometry = (
            [self.train_crop(), v2.RandomHorizontalFlip()] if train else self.resize_and_crop()
        )
        return v2.Compose(
            [
                _ImageChannels(self.channels),
                *geometry,
                *self.to_normalized_tensor(),
                v2.ToPureTensor(),
                _RepeatChannels(self.in_chans),
            ]
        )

    @cached_property
    def _test_transforms(self) -> Any:
        return self.transforms(train=False)

    @cached_property
    def _mean_std(self) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (len(self.mean), 1, 1)
        return torch.tensor(self.mean).view(shape), torch.tensor(self.std).view(shape)

    def __call__(self, image: Any) -> torch.Tensor:
        """A PIL image or a CxHxW / HxW tensor (uint8, or float in [0, 1]) -> a float tensor,
        by the test pipeline of :meth:`transforms`."""
        from PIL import Image

        if isinstance(image, Image.Image) and self.in_chans == self.channels:
            return self._pil_to_input(image)
        return self._test_transforms(image)

    def _pil_to_input(self, image: Any) -> torch.Tensor:
        """The test pipeline on a PIL image, as the same functional ops called directly:
        the Compose's per-transform dispatch costs five times the work itself on a small
        image (about 240 against 45 microseconds at 32 x 32), which is what a server of a
        small net spends most of its time on. The result is the Compose's, bit for bit
        (tests/test_model_card.py)."""
        from torchvision.transforms.v2 import functional as TF

        want = "L" if self.channels == 1 else "RGB"
        if image.mode != want:
            image = image.convert(want)
        if min(image.size) != self.resize:
            mode = TF.InterpolationMode(self.interpolation)
            image = TF.resize(image, [self.resize], interpolation=mode, antialias=True)
        if image.size != (self.image_size, self.image_size):
            image = TF.center_crop(image, [self.image_size])
        mean, std = self._mean_std
        x = TF.to_dtype(TF.pil_to_tensor(image), torch.float32, scale=True)
        return x.sub_(mean).div_(std)


class _ImageChannels:
    """A PIL image in the mode of ``channels`` images (L or RGB); a tensor checked to be an
    image and given ``channels`` channels (RGB to grey by luma, grey repeated to RGB)."""

    def __init__(self, channels: int) -> None:
        self.channels = channels

    def __call__(self, image: Any) -> Any:
        from PIL import Image
        from torchvision.transforms.v2 import functional as TF

        if isinstance(image, Image.Image):
            want = "L" if self.channels == 1 else "RGB"
            return image if image.mode == want else image.convert(want)
        if not isinstance(image, torch.Tensor):
            raise TypeError(
                f"cannot prepare a {type(image).__name__}: give a path, a PIL image or a tensor"
            )
        x = image.unsqueeze(0) if image.ndim == 2 else image
        if x.ndim != 3 or x.shape[0] not in (1, 3):
            raise PreprocessingError(
                f"an image tensor must be CxHxW with C = 1 or 3 (or HxW), got {tuple(x.shape)}"
            )
        if not (x.dtype == torch.uint8 or x.is_floating_point()):
            raise PreprocessingError(
                f"image tensors must be uint8 or float in [0, 1], got {x.dtype}"
            )
        if x.shape[0] == 3 and self.channels == 1:
            return TF.rgb_to_grayscale(x)
        if x.shape[0] == 1 and self.channels == 3:
            return x.expand(3, -1, -1)
        return x

    def __repr__(self) -> str:
        return f"{type(self).__name__}(channels={self.channels})"


class _RepeatChannels:
    """A grey input repeated to the ``in_chans`` channels a model takes."""

    def __init__(self, in_chans: int) -> None:
        self.in_chans = in_chans

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x if x.shape[-3] == self.in_chans else x.expand(self.in_chans, -1, -1)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(in_chans={self.in_chans})"


def _floats(key: str, value: Any) -> tuple[float, ...]:
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value
    ):
        raise PreprocessingError(f"preprocessing {key}={value!r}: expected a list of numbers")
    return tuple(float(v) for v in value)


def _int(key: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise PreprocessingError(f"preprocessing {key}={value!r}: expected an integer")
    return value


def _str(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise PreprocessingError(f"preprocessing {key}={value!r}: expected a string")
    return value


def default_preprocessing(config: ModelConfig) -> Preprocessing:
    """The convention of the model's stem, for weights that do not describe their own:
    ImageNet statistics, a 256 resize and a 224 center crop for ImageNet-stem nets; CIFAR-10
    statistics at 32x32 for CIFAR-stem nets; their channel mean for 1-channel models."""
    if config.stem == "imagenet":
        mean, std, size, resize = IMAGENET_MEAN, IMAGENET_STD, 224, 256
    else:
        mean, std, size, resize = CIFAR10_MEAN, CIFAR10_STD, 32, 32
    if config.in_chans == 1:
        mean, std = (round(sum(mean) / 3, 4),), (round(sum(std) / 3, 4),)
    elif config.in_chans != 3:
        raise PreprocessingError(
            f"no default preprocessing for a model with in_chans={config.in_chans}: image "
            "files have 1 or 3 channels; feed it tensors of your own"
        )
    return Preprocessing(mean=mean, std=std, image_size=size, channels=config.in_chans,
                         in_chans=config.in_chans, resize=resize)  # fmt: skip


@lru_cache(maxsize=1)
def imagenet_class_names() -> tuple[str, ...]:
    """ImageNet-1k's class names in the standard index order (as torchvision's weights have them)."""
    text = resources.files("resnetlab").joinpath("assets/imagenet_classes.txt").read_text()
    names = tuple(line for line in text.splitlines() if line)
    if len(names) != 1000:
        raise InstallationError(
            f"the packaged ImageNet class list has {len(names)} names, not 1000"
        )
    return names


def default_class_names(num_classes: int) -> tuple[str, ...]:
    """ImageNet's names for a 1000-class model, else ``class_0`` .. ``class_{n-1}``."""
    if num_classes == 1000:
        return imagenet_class_names()
    return tuple(f"class_{i}" for i in range(num_classes))


# --------------------------------------------------------------------------------- card


@dataclass(frozen=True)
class WeightsSource:
    """Where a model's weights came from.

    ``format`` is the key layout they were read in (resnetlab, torchvision or timm);
    ``file`` the local file; ``name`` and ``url`` those of named pretrained weights;
    ``sha256`` the digest of the downloaded file, or a prefix of it (torch.hub's rule for
    torchvision's file names); ``tensors_sha256`` the checksum of the tensors recorded in a
    resnetlab weights description. None: not known.
    """

    format: str
    file: str | None = None
    name: str | None = None
    url: str | None = None
    sha256: str | None = None
    tensors_sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WeightsSource:
        known = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(data, dict) or "format" not in data or set(data) - known:
            raise ConfigError(
                f"a weights source is a mapping with 'format' and any of {sorted(known)}; "
                f"got {data!r}"
            )
        bad = [k for k, v in data.items() if not (v is None or isinstance(v, str))]
        if bad or not isinstance(data["format"], str):
            raise ConfigError(f"weights source {bad or ['format']}: expected strings")
        return cls(**data)


@dataclass(frozen=True)
class ModelCard:
    """One typed description of a model: what it is, how to feed it, where its weights came from.

    ``architecture`` is the zoo name (``custom`` for a net built from a config), ``config``
    its :class:`~resnetlab.config.ModelConfig` as a dict (``to_dict()``). ``class_names``,
    ``preprocessing`` and ``source`` are None when nothing says (random weights, a plain
    state dict): ``model.preprocessing`` then falls back to :func:`default_preprocessing`.
    ``metrics`` are the published ones of named pretrained weights (ImageNet-1k ``top1``,
    ``top5``, percent), cited by ``metrics_source``. Immutable: derive another card with
    ``dataclasses.replace``.
    """

    architecture: str
    config: dict[str, Any] = field(hash=False)
    num_classes: int
    class_names: tuple[str, ...] | None = None
    preprocessing: Preprocessing | None = None
    source: WeightsSource | None = None
    metrics: dict[str, float | None] = field(default_factory=dict, hash=False)
    metrics_source: str | None = None

    def __post_init__(self) -> None:
        if self.config.get("num_classes", self.num_classes) != self.num_classes:
            raise ConfigError(
                f"model card: num_classes={self.num_classes} but its config says "
                f"{self.config.get('num_classes')}"
            )
        if self.class_names is not None:
            names = tuple(str(c) for c in self.class_names)
            if len(names) != self.num_classes:
                raise PreprocessingError(
                    f"{len(names)} class names for a model with {self.num_classes} classes"
                )
            object.__setattr__(self, "class_names", names)

    @classmethod
    def from_config(cls, config: ModelConfig, architecture: str = "custom") -> ModelCard:
        """The card of a freshly built (randomly initialised) model."""
        return cls(architecture, config.to_dict(), config.num_classes)

    @property
    def in_chans(self) -> int:
        return int(self.config.get("in_chans", 3))

    def model_config(self) -> ModelConfig:
        """The architecture as a :class:`~resnetlab.config.ModelConfig`."""
        return ModelConfig.from_dict(self.config)

    def with_new_head(self, config: ModelConfig) -> ModelCard:
        """The card once the classifier is replaced by a fresh one (``config``'s classes):
        neither the class names nor the published metrics describe it any more."""
        return dataclasses.replace(self, config=config.to_dict(), num_classes=config.num_classes,
                                   class_names=None, metrics={}, metrics_source=None)  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict of the whole card (:meth:`from_dict` reads it back)."""
        return {
            "architecture": self.architecture,
            "config": dict(self.config),
            "num_classes": self.num_classes,
            "class_names": list(self.class_names) if self.class_names is not None else None,
            "preprocessing": self.preprocessing.to_dict() if self.preprocessing else None,
            "source": self.source.to_dict() if self.source else None,
            "metrics": dict(self.metrics),
            "metrics_source": self.metrics_source,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        if not isinstance(data, dict) or not isinstance(data.get("config"), dict):
            raise ConfigError("a model card is a mapping with 'architecture' and 'config'")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown model card key(s) {unknown}: allowed are {sorted(known)}")
        config = ModelConfig.from_dict(data["config"]).to_dict()  # checked, then kept as a dict
        prep, source, names = data.get("preprocessing"), data.get("source"), data.get("class_names")
        return cls(
            architecture=str(data.get("architecture") or "custom"),
            config=config,
            num_classes=int(data.get("num_classes", config["num_classes"])),
            class_names=tuple(names) if names is not None else None,
            preprocessing=Preprocessing.from_dict(prep) if prep is not None else None,
            source=WeightsSource.from_dict(source) if source is not None else None,
            metrics=dict(data.get("metrics") or {}),
            metrics_source=data.get("metrics_source"),
        )

    def to_meta(self) -> dict[str, Any]:
        """The card in the layout of a resnetlab weights sidecar (without its checksum)."""
        return {
            "format": SIDECAR_FORMAT,
            "version": SIDECAR_VERSION,
            "architecture": self.architecture,
            "config": dict(self.config),
            "num_classes": self.num_classes,
            "in_chans": self.in_chans,
            "preprocessing": self.preprocessing.to_dict() if self.preprocessing else None,
            "class_names": list(self.class_names) if self.class_names is not None else None,
        }

    @classmethod
    def from_meta(cls, meta: dict[str, Any], *, file: str | None = None) -> ModelCard:
        """The card of a resnetlab weights sidecar (already checked key by key, as
        ``read_weights`` does); ``file`` is the weights file it describes."""
        prep, names = meta.get("preprocessing"), meta.get("class_names")
        config = ModelConfig.from_dict(meta["config"]).to_dict()  # every field, defaults filled
        return cls(
            architecture=meta.get("architecture") or "custom",
            config=config,
            num_classes=config["num_classes"],
            class_names=tuple(names) if names is not None else None,
            preprocessing=Preprocessing.from_dict(prep) if prep is not None else None,
            source=WeightsSource("resnetlab", file=file, tensors_sha256=meta.get(SIDECAR_CHECKSUM)),
        )
