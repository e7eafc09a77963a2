"""Every named network of the three papers, as one table of configs.

An entry is one line: a name and its :class:`ModelConfig`. Anything not in the table is a
``ModelConfig`` away (``create_model(ModelConfig(...))``) or an override of a named entry
(``create_model("resnet20", depth=38)``).
"""

from __future__ import annotations

import difflib
import fnmatch
from typing import Any

from ..config import ModelConfig, layers_for_depth
from ..errors import ConfigError

# Shared settings of the two scales. ImageNet nets: 7x7 stem, widths 64..512, projection
# shortcuts where the shape changes (option B, the 2015 paper's default for ImageNet).
_IN = dict(stem="imagenet", stem_width=64, widths=(64, 128, 256, 512), num_classes=1000)
# CIFAR nets (2015 paper, section 4.2): 3x3 stem of 16, widths 16/32/64, option A.
_C = dict(stem="cifar", stem_width=16, widths=(16, 32, 64), num_classes=10)
# The same at twice the width, with a 2x2 max-pool after the stem.
_CP = dict(_C, stem="cifar_pool", stem_width=32, widths=(32, 64, 128))
# Pre-activation CIFAR bottleneck nets (2016 paper; its reference code subsamples in the
# first 1x1 conv and projects where the shape changes).
_C2 = dict(_C, block="preact_bottleneck", shortcut="B", stride_on="1x1")
# ResNeXt-29 (ResNeXt paper, section 5.3): 3x3 stem of 64, three stages of 3 bottlenecks.
_X29 = dict(_C, stem_width=64, widths=(64, 128, 256), block="bottleneck", shortcut="B")

_R18, _R34, _R50, _R101, _R152, _R200 = ((2, 2, 2, 2), (3, 4, 6, 3), (3, 4, 6, 3),
                                         (3, 4, 23, 3), (3, 8, 36, 3), (3, 24, 36, 3))  # fmt: skip

MODEL_CONFIGS: dict[str, ModelConfig] = {
    # ResNet v1.5 (torchvision's nets: the bottleneck's stride on the 3x3).
    "resnet18": ModelConfig(**_IN, block="basic", layers=_R18),
    "resnet34": ModelConfig(**_IN, block="basic", layers=_R34),
    "resnet50": ModelConfig(**_IN, block="bottleneck", layers=_R50),
    "resnet101": ModelConfig(**_IN, block="bottleneck", layers=_R101),
    "resnet152": ModelConfig(**_IN, block="bottleneck", layers=_R152),
    "resnet200": ModelConfig(**_IN, block="bottleneck", layers=_R200),
    # ResNet v1 exactly as in the 2015 paper: the stride on the first 1x1.
    "resnet50_v1": ModelConfig(**_IN, block="bottleneck", layers=_R50, stride_on="1x1"),
    "resnet101_v1": ModelConfig(**_IN, block="bottleneck", layers=_R101, stride_on="1x1"),
    "resnet152_v1": ModelConfig(**_IN, block="bottleneck", layers=_R152, stride_on="1x1"),
    # Plain ImageNet nets of the 2015 paper's Table 2.
    "plain18": ModelConfig(**_IN, block="basic", layers=_R18, shortcut="none"),
    "plain34": ModelConfig(**_IN, block="basic", layers=_R34, shortcut="none"),
    # Pre-activation ImageNet nets (timm resnetv2_*: stride on the 3x3).
    "resnet18_v2": ModelConfig(**_IN, block="preact_basic", layers=_R18),
    "resnet34_v2": ModelConfig(**_IN, block="preact_basic", layers=_R34),
    "resnet50_v2": ModelConfig(**_IN, block="preact_bottleneck", layers=_R50),
    "resnet101_v2": ModelConfig(**_IN, block="preact_bottleneck", layers=_R101),
    "resnet152_v2": ModelConfig(**_IN, block="preact_bottleneck", layers=_R152),
    "resnet200_v2": ModelConfig(**_IN, block="preact_bottleneck", layers=_R200),
    # ResNeXt (cardinality x width per group) and wide ResNets, as in torchvision.
    "resnext50_32x4d": ModelConfig(**_IN, block="bottleneck", layers=_R50, groups=32, base_width=4),
    "resnext101_32x4d": ModelConfig(**_IN, block="bottleneck", layers=_R101, groups=32, base_width=4),
    "resnext101_32x8d": ModelConfig(**_IN, block="bottleneck", layers=_R101, groups=32, base_width=8),
    "resnext101_64x4d": ModelConfig(**_IN, block="bottleneck", layers=_R101, groups=64, base_width=4),
    "wide_resnet50_2": ModelConfig(**_IN, block="bottleneck", layers=_R50, base_width=128),
    "wide_resnet101_2": ModelConfig(**_IN, block="bottleneck", layers=_R101, base_width=128),
    # CIFAR ResNets of the 2015 paper (depth 6n+2, option A) and their plain twins.
    "resnet20": ModelConfig(**_C, block="basic", layers=(3, 3, 3), shortcut="A"),
    "resnet32": ModelConfig(**_C, block="basic", layers=(5, 5, 5), shortcut="A"),
    "resnet44": ModelConfig(**_C, block="basic", layers=(7, 7, 7), shortcut="A"),
    "resnet56": ModelConfig(**_C, block="basic", layers=(9, 9, 9), shortcut="A"),
    "resnet110": ModelConfig(**_C, block="basic", layers=(18, 18, 18), shortcut="A"),
    "resnet1202": ModelConfig(**_C, block="basic", layers=(200, 200, 200), shortcut="A"),
    "plain20": ModelConfig(**_C, block="basic", layers=(3, 3, 3), shortcut="none"),
    "plain32": ModelConfig(**_C, block="basic", layers=(5, 5, 5), shortcut="none"),
    "plain44": ModelConfig(**_C, block="basic", layers=(7, 7, 7), shortcut="none"),
    "plain56": ModelConfig(**_C, block="basic", layers=(9, 9, 9), shortcut="none"),
    "plain110": ModelConfig(**_C, block="basic", layers=(18, 18, 18), shortcut="none"),
    # CIFAR nets of the pre-activation paper (depth 9n+2 for bottlenecks) and the v1
    # bottleneck nets it compares them with.
    "resnet110_v2": ModelConfig(**_C, block="preact_basic", layers=(18, 18, 18), shortcut="B"),
    "resnet164_v2": ModelConfig(**_C2, layers=(18, 18, 18)),
    "resnet1001_v2": ModelConfig(**_C2, layers=(111, 111, 111)),
    "resnet164": ModelConfig(**dict(_C2, block="bottleneck"), layers=(18, 18, 18)),
    "resnet1001": ModelConfig(**dict(_C2, block="bottleneck"), layers=(111, 111, 111)),
    # ResNeXt-29 for CIFAR (cardinality x 64 channels per group in the first stage).
    "resnext29_8x64d": ModelConfig(**_X29, layers=(3, 3, 3), groups=8, base_width=64),
    "resnext29_16x64d": ModelConfig(**_X29, layers=(3, 3, 3), groups=16, base_width=64),
    # Small, fast CIFAR-style nets for 28-32 px images on CPUs: the 3x3 stem at full
    # resolution, then a 2x2 max-pool, so that the stages (at twice the CIFAR nets' width)
    # run at half resolution for a quarter of the cost (configs/fashion_mnist_*.yaml).
    "resnet8_pool": ModelConfig(**_CP, block="basic", layers=(1, 1, 1), shortcut="A"),
    "resnet14_pool": ModelConfig(**_CP, block="basic", layers=(2, 2, 2), shortcut="A"),
}  # fmt: skip


def family(cfg: ModelConfig) -> str:
    """A short human name of the family a config belongs to."""
    if cfg.shortcut == "none":
        return "plain"
    if cfg.groups > 1:
        return "resnext"
    if cfg.base_width > 64:
        return "wide-resnet"
    return "resnet-v2" if cfg.is_preact else "resnet"


def list_models(pattern: str = "*") -> list[str]:
    """Names of the built-in models matching a shell-style ``pattern``."""
    return [name for name in MODEL_CONFIGS if fnmatch.fnmatch(name, pattern)]


def get_config(name: str, **overrides: Any) -> ModelConfig:
    """The config of a named model, with ``overrides`` of its fields applied.

    ``depth=`` is accepted as an override and recomputes ``layers`` with the papers' rule
    (6n+2 / 9n+2 on CIFAR, the ImageNet table otherwise).
    """
    if name not in MODEL_CONFIGS:
        close = difflib.get_close_matches(name, list(MODEL_CONFIGS), n=4, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(
            f"unknown model {name!r}{hint} (`resnetlab models` lists all "
            f"{len(MODEL_CONFIGS)}; build anything else from a ModelConfig)"
        )
    cfg = MODEL_CONFIGS[name]
    if "depth" in overrides:
        depth = overrides.pop("depth")
        block = overrides.get("block", cfg.block)
        stem = overrides.get("stem", cfg.stem)
        overrides["layers"] = layers_for_depth(
            depth, block=block, stem=stem, num_stages=len(cfg.layers)
        )
    return cfg.replace(**overrides) if overrides else cfg
