"""What a model needs around it at inference time: preprocessing, class names, a device.

A model's card (:class:`~resnetlab.models.card.ModelCard`, ``model.card``) says how its
images were prepared and what its classes are called, when its weights say so (a resnetlab
sidecar, named pretrained weights). A state dict from elsewhere does not, so
:func:`describe_model` falls back to the conventions of the model's stem: ImageNet
statistics, a 256 resize and a 224 center crop for ImageNet-stem nets; CIFAR-10 statistics
at 32x32 for CIFAR-stem nets; ImageNet's class names for 1000-class models.

:class:`Preprocessing` here is the card's own class (one type everywhere).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..device import resolve_device
from ..models.card import (
    INTERPOLATIONS,
    ModelCard,
    Preprocessing,
    PreprocessingError,
    default_class_names,
    imagenet_class_names,
)
from ..models.card import default_preprocessing as _stem_preprocessing
from ..models.weights import WeightsError

__all__ = [
    "INTERPOLATIONS",
    "Preprocessing",
    "PreprocessingError",
    "default_class_names",
    "default_preprocessing",
    "describe_model",
    "imagenet_class_names",
    "resolve_device",
]


def default_preprocessing(model: nn.Module) -> Preprocessing:
    """The usual preprocessing for a model whose weights do not describe their own."""
    cfg = getattr(model, "config", None)
    if cfg is None:
        raise PreprocessingError(
            f"{type(model).__name__} is not a resnetlab model: pass its preprocessing "
            "(mean, std, image_size, resize) explicitly"
        )
    return _stem_preprocessing(cfg)


def _described(model: nn.Module) -> tuple[Preprocessing | None, tuple[str, ...] | None]:
    """The preprocessing and class names the model's card gives (None where it is silent).

    A module without a card (one of another library that carries a resnetlab sidecar as
    ``meta``) is read from that dict; a bad preprocessing in it names where it came from.
    """
    card = getattr(model, "card", None)
    if isinstance(card, ModelCard):
        return card.preprocessing, card.class_names
    meta = getattr(model, "meta", None) or {}
    prep, names = meta.get("preprocessing"), meta.get("class_names")
    if prep is not None:
        try:
            prep = Preprocessing.from_dict(prep)
        except PreprocessingError as e:
            report = getattr(model, "load_report", None)
            source = f"description of {report.source}" if report is not None else "model meta"
            raise WeightsError(f"bad {source}: {e}") from None
    return prep, (tuple(str(c) for c in names) if names is not None else None)


def describe_model(
    model: nn.Module,
    preprocessing: Preprocessing | dict[str, Any] | None = None,
    class_names: list[str] | tuple[str, ...] | None = None,
) -> tuple[Preprocessing, tuple[str, ...]]:
    """The preprocessing and class names to use with ``model``.

    Explicit arguments win; then the model's card (the weights' description, see
    :func:`~resnetlab.models.load_model`); then the defaults of
    :func:`default_preprocessing` and :func:`default_class_names`.
    """
    card_prep, card_names = _described(model)
    if isinstance(preprocessing, dict):
        preprocessing = Preprocessing.from_dict(preprocessing)
    prep = preprocessing or card_prep or default_preprocessing(model)
    cfg = getattr(model, "config", None)
    if cfg is not None and prep.in_chans != cfg.in_chans:
        raise PreprocessingError(
            f"the preprocessing makes {prep.in_chans}-channel inputs; the model takes "
            f"{cfg.in_chans} channels"
        )
    num_classes = getattr(model, "num_classes", None)
    if class_names is None:
        class_names = card_names
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
