"""The ResNet family: blocks, the trunk, the table of named nets, weights and complexity."""

from __future__ import annotations

import os
from typing import Any

import torch

from ..config import ModelConfig
from ..errors import ArchitectureNotDescribedError, ConfigError
from .card import ModelCard, Preprocessing, PreprocessingError, WeightsSource
from .complexity import count_params, measure
from .pretrained import (
    PretrainedWeights,
    download_pretrained,
    is_pretrained_name,
    list_pretrained,
    resolve_pretrained,
)
from .resnet import ResNet
from .weights import (
    LoadReport,
    WeightsError,
    WeightsFile,
    config_from_meta,
    load_weights,
    read_weights,
    save_weights,
    to_torchvision_state_dict,
)
from .zoo import MODEL_CONFIGS, family, get_config, list_models

__all__ = [
    "MODEL_CONFIGS",
    "ArchitectureNotDescribedError",
    "LoadReport",
    "ModelCard",
    "ModelConfig",
    "Preprocessing",
    "PreprocessingError",
    "PretrainedWeights",
    "ResNet",
    "WeightsError",
    "WeightsSource",
    "count_params",
    "create_model",
    "download_pretrained",
    "family",
    "get_config",
    "list_models",
    "list_pretrained",
    "load_model",
    "load_weights",
    "model_info",
    "read_weights",
    "resolve_pretrained",
    "save_weights",
    "to_torchvision_state_dict",
]


def create_model(
    name: str | ModelConfig,
    *,
    num_classes: int | None = None,
    in_chans: int | None = None,
    weights: str | os.PathLike | PretrainedWeights | WeightsFile | None = None,
    features_only: bool = False,
    out_indices: tuple[int, ...] | list[int] | None = None,
    output_stride: int | None = None,
    **overrides: Any,
) -> ResNet:
    """Build a named model (or one from a ``ModelConfig``), optionally loading weights.

    ``overrides`` are ``ModelConfig`` fields (``drop_path_rate=0.1``, ``shortcut="B"``,
    ``grad_checkpointing=True``...) or ``depth=`` for the papers' depth rules.
    With ``weights`` and no ``num_classes`` the model takes the weights' class count; with
    a different ``num_classes`` the head is re-initialised (and a warning says so).
    ``weights`` may name pretrained weights (``"torchvision:resnet50.IMAGENET1K_V2"``, see
    :func:`list_pretrained`): they are downloaded into the torch hub cache once, must be
    weights of this model, and their table row becomes the model's ``pretrained_card``; a
    :class:`WeightsFile` already read by :func:`read_weights` is used as it is.
    ``model.card`` (:class:`ModelCard`) describes the result: the weights' classes,
    preprocessing, source and published metrics (less the classes and metrics when the
    head is re-initialised).
    ``output_stride`` dilates the last stages instead of striding them (see
    :class:`ResNet`; weights fit every output stride).
    """
    if isinstance(name, ModelConfig):
        label, cfg = "custom", name.replace(**overrides)
    else:
        label, cfg = name, get_config(name, **overrides)
    card = weights.card if isinstance(weights, WeightsFile) else None
    if isinstance(weights, PretrainedWeights) or is_pretrained_name(weights):
        card = weights = resolve_pretrained(weights)  # checked before anything is downloaded
    if card is not None and label != "custom" and card.model != label:
        fits = [c.name for c in list_pretrained(label)] if label in MODEL_CONFIGS else []
        raise WeightsError(
            f"{card.name} are weights of {card.model}, not {label}: "
            + (f"named weights of {label}: {', '.join(fits)}" if fits
               else f"{label} has no named pretrained weights (`resnetlab weights` lists them)")
        )  # fmt: skip
    if isinstance(weights, WeightsFile) or weights is None:
        source = weights
    else:
        source = read_weights(weights)
    head = num_classes
    if head is None and source is not None and source.num_classes is not None:
        head = source.num_classes
    if in_chans is not None:  # None: the config's own (3 for every named net)
        cfg = cfg.replace(in_chans=in_chans)
    if head is not None:
        cfg = cfg.replace(num_classes=head)
    model = ResNet(
        cfg,
        name=label,
        features_only=features_only,
        out_indices=out_indices,
        output_stride=output_stride,
    )
    if source is not None:
        fmt = card.source if card is not None else "auto"
        model.load_report = load_weights(
            model, source, fmt=fmt, reinit_head=num_classes is not None
        )
    if card is not None:
        model.pretrained_card = card
    return model


def load_model(source: str | os.PathLike | PretrainedWeights, **overrides: Any) -> ResNet:
    """Rebuild a model from resnetlab weights (a run directory or ``.safetensors``) alone,
    or from named pretrained weights (which name their model); ``model.card`` is the one
    the weights describe.

    Weights that do not describe their architecture (a torchvision/timm state dict) raise
    :class:`~resnetlab.errors.ArchitectureNotDescribedError`.
    """
    if isinstance(source, PretrainedWeights) or is_pretrained_name(source):
        return create_model(resolve_pretrained(source).model, weights=source, **overrides)
    wf = read_weights(source)
    if wf.meta is None:
        raise ArchitectureNotDescribedError(
            f"{wf.path} does not describe its architecture (no resnetlab sidecar): use "
            "create_model(NAME, weights=PATH) instead"
        )
    label, cfg = config_from_meta(wf.meta)
    model = ResNet(cfg.replace(**overrides) if overrides else cfg, name=label)
    model.load_report = load_weights(model, wf)
    return model


def model_info(
    model_or_name: ResNet | str, input_size: tuple[int, int, int] | None = None
) -> dict[str, Any]:
    """Params and MACs measured on the built module, with a per-stage breakdown.

    ``input_size`` defaults to the net's native one (3x224x224 ImageNet, 3x32x32 CIFAR).
    """
    if isinstance(model_or_name, str):
        # Shapes are all that counting needs: build on the meta device (no memory, no init).
        with torch.device("meta"):
            model = create_model(model_or_name, in_chans=input_size[0] if input_size else 3)
    else:
        model = model_or_name
    if input_size is not None and input_size[0] != model.config.in_chans:
        raise ConfigError(
            f"input_size={tuple(input_size)} has {input_size[0]} channels; the model takes "
            f"{model.config.in_chans}"
        )
    cfg = model.config
    info = measure(model, input_size or cfg.input_size)
    info.update(name=model.name, family=family(cfg), depth=cfg.depth, config=cfg.to_dict())
    return info
