"""What a model needs around it at inference time: preprocessing, class names, a device.

A resnetlab weights file says how its images were prepared and what its classes are called
(the sidecar's ``preprocessing`` and ``class_names``). A state dict from elsewhere does not,
so :func:`describe_model` falls back to the conventions of the model's stem: ImageNet
statistics, a 256 resize and a 224 center crop for ImageNet-stem nets; CIFAR-10 statistics
at 32x32 for CIFAR-stem nets; ImageNet's class names for 1000-class models.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

import torch
from PIL import Image
from torch import nn
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from ..data.catalog import CIFAR10, IMAGENET_MEAN, IMAGENET_STD
from ..device import resolve_device
from ..errors import ResnetlabError
from ..models.weights import MAX_IMAGE_SIZE, PREPROCESSING_KEYS, WeightsError

__all__ = [
    "Preprocessing",
    "PreprocessingError",
    "default_class_names",
    "default_preprocessing",
    "describe_model",
    "imagenet_class_names",
    "resolve_device",
]

INTERPOLATIONS = ("nearest", "bilinear", "bicubic")


class PreprocessingError(ResnetlabError, ValueError):
    """Preprocessing or class names that are invalid or do not fit the model."""


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes a model input (the sidecar's ``preprocessing``, validated).

    Resize the shorter side to ``resize``, center-crop ``image_size``, scale to [0, 1],
    normalize with ``mean``/``std`` (one value per image channel), then repeat a grey
    channel when ``channels=1`` and ``in_chans=3``. Immutable, so one instance can serve
    any number of threads.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_size: int
    channels: int
    in_chans: int
    resize: int
    crop: str = "center"
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise PreprocessingError(f"preprocessing channels={self.channels}: expected 1 or 3")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise PreprocessingError(
                f"preprocessing has {len(self.mean)} mean and {len(self.std)} std values for "
                f"{self.channels}-channel images: give one of each per channel"
            )
        if any(s <= 0 for s in self.std):
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
        if self.crop != "center":
            raise PreprocessingError(
                f"preprocessing crop={self.crop!r}: only 'center' is supported"
            )
        if self.interpolation not in INTERPOLATIONS:
            raise PreprocessingError(
                f"preprocessing interpolation={self.interpolation!r}: expected one of "
                + ", ".join(INTERPOLATIONS)
            )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        """Read the sidecar's dict; ``resize``, ``channels`` and ``in_chans`` may be left out."""
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
        return cls(
            mean=mean,
            std=std,
            image_size=size,
            channels=channels,
            in_chans=_int("in_chans", data.get("in_chans") or channels),
            resize=_int("resize", data.get("resize") or size),
            crop=_str("crop", data.get("crop", "center")),
            interpolation=_str("interpolation", data.get("interpolation", "bilinear")),
        )

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["mean"], out["std"] = list(self.mean), list(self.std)
        return out

    def __call__(self, image: Image.Image | torch.Tensor) -> torch.Tensor:
        """A PIL image or a CxHxW / HxW tensor (uint8, or float in [0, 1]) -> a float tensor."""
        mode = InterpolationMode(self.interpolation)
        if isinstance(image, Image.Image):
            want = "L" if self.channels == 1 else "RGB"
            if image.mode != want:
                image = image.convert(want)
            # Resize the PIL image, as the image-folder evaluation pipeline does.
            image = TF.resize(image, [self.resize], interpolation=mode, antialias=True)
            x = TF.pil_to_tensor(TF.center_crop(image, [self.image_size]))
        elif isinstance(image, torch.Tensor):
            x = self._channels_of(image)
            x = TF.resize(x, [self.resize], interpolation=mode, antialias=True)
            x = TF.center_crop(x, [self.image_size])
        else:
            raise TypeError(
                f"cannot prepare a {type(image).__name__}: give a path, a PIL image or a tensor"
            )
        x = TF.normalize(TF.to_dtype(x, torch.float32, scale=True), self.mean, self.std)
        if self.in_chans != self.channels:
            x = x.expand(self.in_chans, -1, -1)
        return x

    def _channels_of(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 2:
            x = x.unsqueeze(0)
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


def default_preprocessing(model: nn.Module) -> Preprocessing:
    """The usual preprocessing for a model whose weights do not describe their own."""
    cfg = getattr(model, "config", None)
    if cfg is None:
        raise PreprocessingError(
            f"{type(model).__name__} is not a resnetlab model: pass its preprocessing "
            "(mean, std, image_size, resize) explicitly"
        )
    if cfg.stem == "imagenet":
        mean, std, size, resize = IMAGENET_MEAN, IMAGENET_STD, 224, 256
    else:
        mean, std, size, resize = CIFAR10.mean, CIFAR10.std, CIFAR10.image_size, CIFAR10.image_size
    if cfg.in_chans == 1:
        mean, std = (round(sum(mean) / 3, 4),), (round(sum(std) / 3, 4),)
    elif cfg.in_chans != 3:
        raise PreprocessingError(
            f"no default preprocessing for a model with in_chans={cfg.in_chans}: image files "
            "have 1 or 3 channels; feed it tensors of your own"
        )
    return Preprocessing(
        mean=tuple(mean),
        std=tuple(std),
        image_size=size,
        channels=cfg.in_chans,
        in_chans=cfg.in_chans,
        resize=resize,
    )


@lru_cache(maxsize=1)
def imagenet_class_names() -> tuple[str, ...]:
    """ImageNet-1k's class names in the standard index order (as torchvision's weights have them)."""
    text = resources.files("resnetlab").joinpath("assets/imagenet_classes.txt").read_text()
    names = tuple(line for line in text.splitlines() if line)
    if len(names) != 1000:
        raise RuntimeError(f"the packaged ImageNet class list has {len(names)} names, not 1000")
    return names


def default_class_names(num_classes: int) -> tuple[str, ...]:
    """ImageNet's names for a 1000-class model, else ``class_0`` .. ``class_{n-1}``."""
    if num_classes == 1000:
        return imagenet_class_names()
    return tuple(f"class_{i}" for i in range(num_classes))


def describe_model(
    model: nn.Module,
    preprocessing: Preprocessing | dict[str, Any] | None = None,
    class_names: list[str] | tuple[str, ...] | None = None,
) -> tuple[Preprocessing, tuple[str, ...]]:
    """The preprocessing and class names to use with ``model``.

    Explicit arguments win; then the model's ``meta`` (set by ``load_model`` from the
    weights' sidecar); then the defaults of :func:`default_preprocessing` and
    :func:`default_class_names`.
    """
    meta = getattr(model, "meta", None) or {}
    # What the weights' description says is checked where it is read; a problem found here
    # (a value out of range) still names the weights it came from.
    report = getattr(model, "load_report", None)
    source = f"description of {report.source}" if report is not None else "model meta"
    from_meta = preprocessing is None
    if preprocessing is None:
        preprocessing = meta.get("preprocessing")
    if preprocessing is None:
        prep = default_preprocessing(model)
    elif isinstance(preprocessing, Preprocessing):
        prep = preprocessing
    else:
        try:
            prep = Preprocessing.from_dict(preprocessing)
        except PreprocessingError as e:
            if not from_meta:
                raise
            raise WeightsError(f"bad {source}: {e}") from None
    cfg = getattr(model, "config", None)
    if cfg is not None and prep.in_chans != cfg.in_chans:
        raise PreprocessingError(
            f"the preprocessing makes {prep.in_chans}-channel inputs; the model takes "
            f"{cfg.in_chans} channels"
        )
    num_classes = getattr(model, "num_classes", None)
    if class_names is None:
        class_names = meta.get("class_names")
    if class_names is None:
        if num_classes is None:
            raise PreprocessingError(
                "pass class_names: the model does not say how many classes it has"
            )
        class_names = default_class_names(num_classes)
    names = tuple(str(c) for c in class_names)
    if num_classes is not None and len(names) != num_classes:
        raise PreprocessingError(f"{len(names)} class names for a model with {num_classes} classes")
    return prep, names
