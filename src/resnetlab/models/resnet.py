"""The ResNet trunk: stem -> stages of residual units -> global pool -> classifier.

One class serves every net of the family (He et al. 2015; He et al. 2016; Xie et al.
2017); the ``ModelConfig`` says which blocks, stem and shortcuts it is built from. Module
names are torchvision's (``conv1``, ``bn1``, ``layer1``..., ``fc``), so torchvision and timm
v1 state dicts load without renaming.

``output_stride`` replaces the stride of the last stages by dilation (the atrous algorithm
of Chen et al., "DeepLab", 2016; torchvision's ``replace_stride_with_dilation``, timm's
``output_stride``) for dense prediction: the parameters are the same, so are the state-dict
keys, and the features keep a finer resolution.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint_sequential

from ..config import ModelConfig
from ..errors import ConfigError
from .blocks import BLOCK_TYPES, BatchNormAct2d
from .card import ModelCard, Preprocessing, default_preprocessing


def _make_stage(
    cfg: ModelConfig,
    in_chs: int,
    planes: int,
    num_blocks: int,
    stride: int,
    rates: list[float],
    *,
    dilation: int = 1,
    first_dilation: int = 1,
) -> nn.Sequential:
    block_cls = BLOCK_TYPES[cfg.block]
    extra = {}
    if cfg.is_bottleneck:
        extra = dict(groups=cfg.groups, base_width=cfg.base_width, stride_on=cfg.stride_on)
    out_chs = planes * block_cls.expansion
    blocks = [
        block_cls(
            in_chs if i == 0 else out_chs,
            planes,
            stride if i == 0 else 1,
            shortcut=cfg.shortcut,
            drop_path_rate=rates[i],
            # torchvision's convention: the first unit keeps the previous stage's dilation
            # where the stride used to be, every later one takes the stage's own.
            dilation=dilation,
            first_dilation=first_dilation if i == 0 else dilation,
            **extra,
        )
        for i in range(num_blocks)
    ]
    return nn.Sequential(*blocks)


# How much each stem reduces the input: 7x7/2 conv + 3x3/2 max-pool, 3x3 conv + 2x2/2
# max-pool, a lone 3x3 conv.
STEM_REDUCTION = {"imagenet": 4, "cifar_pool": 2, "cifar": 1}


def allowed_output_strides(cfg: ModelConfig) -> list[int]:
    """The output strides a net of ``cfg`` can be built with, largest (no dilation) first."""
    stem_reduction = STEM_REDUCTION[cfg.stem]
    strided = len(cfg.layers) - 1  # every stage but the first halves the resolution
    return [stem_reduction * 2 ** (strided - k) for k in range(strided + 1)]


def _check_output_stride(value: int | None, cfg: ModelConfig, name: str) -> int:
    allowed = allowed_output_strides(cfg)
    if value is None:
        return allowed[0]
    if isinstance(value, bool) or not isinstance(value, int) or value not in allowed:
        raise ConfigError(
            f"invalid output_stride={value!r} for {name}: allowed are "
            f"{', '.join(map(str, allowed))} (its full reduction {allowed[0]} divided by 2**k "
            f"for k = 0..{len(allowed) - 1}, one per strided stage that dilates instead)"
        )
    return value


class ResNet(nn.Module):
    """A network of the ResNet family built from a :class:`ModelConfig`.

    ``forward(x) == forward_head(forward_features(x))``. With ``features_only=True`` the
    model has no head and ``forward`` returns the feature maps at ``out_indices``
    (0 = stem output, i = output of stage i; for a 4-stage ImageNet net, 1..4 are C2..C5).

    ``output_stride`` (None: the net's full reduction, 32 for ImageNet nets, 4 for CIFAR
    nets) is the reduction of the last stage's output: the net's full reduction divided by
    2**k, k = 0..(number of strided stages); the last k strided stages dilate instead of
    striding. ``feature_info`` gives every level's ``num_chs``, true ``reduction`` and the
    ``module`` whose output it is.

    ``card`` describes the model (:class:`~resnetlab.models.card.ModelCard`): a fresh one
    from the config here, the weights' own once ``load_weights`` loaded them.
    """

    #: what the model is, how to feed it, where its weights came from
    card: ModelCard

    def __init__(
        self,
        cfg: ModelConfig,
        *,
        name: str = "custom",
        features_only: bool = False,
        out_indices: Sequence[int] | None = None,
        output_stride: int | None = None,
    ) -> None:
        super().__init__()
        self.config = cfg
        self.name = name
        self.num_classes = cfg.num_classes
        self.card = ModelCard.from_config(cfg, architecture=name)
        self.grad_checkpointing = cfg.grad_checkpointing
        imagenet = cfg.stem == "imagenet"
        # Stem. ImageNet: 7x7/2 conv + 3x3/2 max-pool (2015 paper, Table 1). CIFAR: one 3x3
        # conv (section 4.2). Pre-activation nets leave the stem's BN-ReLU to the first unit.
        if imagenet:
            self.conv1 = nn.Conv2d(cfg.in_chans, cfg.stem_width, 7, 2, padding=3, bias=False)
        else:
            self.conv1 = nn.Conv2d(cfg.in_chans, cfg.stem_width, 3, 1, padding=1, bias=False)
        self.bn1 = nn.Identity() if cfg.is_preact else nn.BatchNorm2d(cfg.stem_width)
        self.relu = nn.Identity() if cfg.is_preact else nn.ReLU(inplace=True)
        # "cifar_pool" adds a 2x2/2 max-pool to the CIFAR stem: the full-resolution 3x3 conv
        # still sees every pixel, and every later layer costs a quarter (small fast nets).
        if imagenet:
            self.maxpool = nn.MaxPool2d(3, 2, padding=1)
        elif cfg.stem == "cifar_pool":
            self.maxpool = nn.MaxPool2d(2, 2)
        else:
            self.maxpool = nn.Identity()

        # Stages. Stochastic depth grows linearly with depth (Huang et al. 2016).
        total = sum(cfg.layers)
        rates = [cfg.drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        stem_reduction = STEM_REDUCTION[cfg.stem]
        self.output_stride = _check_output_stride(output_stride, cfg, name)
        self.feature_info = [
            dict(num_chs=cfg.stem_width, reduction=stem_reduction, module="maxpool")
        ]
        in_chs = cfg.stem_width
        self.stage_names: list[str] = []
        reduction, dilation = stem_reduction, 1
        for i, (planes, n) in enumerate(zip(cfg.widths, cfg.layers, strict=True)):
            stride, first_dilation = 1 if i == 0 else 2, dilation
            if stride > 1 and reduction >= self.output_stride:
                stride, dilation = 1, dilation * stride  # dilate instead of striding
            reduction *= stride
            stage = _make_stage(
                cfg, in_chs, planes, n, stride, rates[:n],
                dilation=dilation, first_dilation=first_dilation,
            )  # fmt: skip
            rates = rates[n:]
            name = f"layer{i + 1}"
            self.add_module(name, stage)
            self.stage_names.append(name)
            in_chs = planes * cfg.expansion
            self.feature_info.append(dict(num_chs=in_chs, reduction=reduction, module=name))
        self.num_features = in_chs
        # Pre-activation nets end with BN-ReLU before pooling (2016 paper, appendix).
        self.norm = BatchNormAct2d(in_chs) if cfg.is_preact else nn.Identity()

        self.features_only = features_only
        if features_only:
            indices = tuple(range(1, len(cfg.layers) + 1)) if out_indices is None else out_indices
            bad = [i for i in indices if not 0 <= i <= len(cfg.layers)]
            if bad or not indices:
                raise ConfigError(
                    f"invalid out_indices={tuple(indices)}: expected indices in "
                    f"0..{len(cfg.layers)} (0 = stem, i = stage i)"
                )
            self.out_indices = tuple(indices)
            self.feature_info = [self.feature_info[i] for i in self.out_indices]
        else:
            if out_indices is not None:
                raise ConfigError("out_indices is only valid with features_only=True")
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = self._new_head(cfg.num_classes)
        self._init_weights()

    def _new_head(self, num_classes: int) -> nn.Module:
        return nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def _init_weights(self) -> None:
        # He init with fan_out (MSRA init, as in the papers' Torch code and torchvision).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if self.config.zero_init_last:
            for m in self.modules():
                if hasattr(m, "zero_init_last"):
                    m.zero_init_last()

    @property
    def preprocessing(self) -> Preprocessing:
        """How an image becomes this model's input: the card's, or the stem's convention."""
        return self.card.preprocessing or default_preprocessing(self.config)

    def transforms(self, train: bool = False) -> nn.Module:
        """The torchvision v2 pipeline of :attr:`preprocessing` (the test one unless ``train``)."""
        return self.preprocessing.transforms(train)

    @property
    def meta(self) -> dict[str, Any]:
        """The card in the layout of the weights' JSON sidecar (read-only)."""
        return self.card.to_meta()

    @property
    def stages(self) -> list[nn.Sequential]:
        return [getattr(self, name) for name in self.stage_names]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def _run_stage(self, stage: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            # Activation checkpointing in sqrt(n) segments: memory O(sqrt(n)) per stage for
            # one extra forward. Note that BN running statistics see the recomputed forward
            # too (the same as in timm/torchvision checkpointed nets).
            segments = max(1, math.isqrt(len(stage)))
            return checkpoint_sequential(stage, segments, x, use_reentrant=False)
        return stage(x)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_stem(x)
        for stage in self.stages:
            x = self._run_stage(stage, x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.features_only:
            raise RuntimeError("a features_only model has no head")
        x = torch.flatten(self.avgpool(x), 1)
        return x if pre_logits else self.fc(x)

    def forward_intermediates(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The stem output followed by every stage's output."""
        x = self.forward_stem(x)
        outs = [x]
        for stage in self.stages:
            x = self._run_stage(stage, x)
            outs.append(x)
        return outs

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        if self.features_only:
            outs = self.forward_intermediates(x)
            return [outs[i] for i in self.out_indices]
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier by a freshly initialised one with ``num_classes`` outputs."""
        if self.features_only:
            raise RuntimeError("a features_only model has no classifier to reset")
        if not isinstance(num_classes, int) or num_classes < 0:
            raise ConfigError(f"invalid num_classes={num_classes!r}: expected an integer >= 0")
        device = next(self.parameters()).device
        self.fc = self._new_head(num_classes).to(device)
        self.num_classes = num_classes
        self.config = self.config.replace(num_classes=num_classes)
        self.card = self.card.with_new_head(self.config)
