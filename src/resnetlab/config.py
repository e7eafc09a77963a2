"""Frozen, validated configuration objects.

Every object here is a frozen dataclass validated at construction: a bad value raises a
``ValueError`` that names the field, echoes the value and says what is allowed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

BLOCKS = ("basic", "bottleneck", "preact_basic", "preact_bottleneck")
STEMS = ("imagenet", "cifar")
SHORTCUTS = ("A", "B", "C", "none")
STRIDE_ON = ("3x3", "1x1")


def _fail(field: str, value: Any, allowed: str) -> None:
    raise ValueError(f"invalid {field}={value!r}: {allowed}")


def _check_choice(field: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        _fail(field, value, f"expected one of {', '.join(repr(c) for c in choices)}")


@dataclass(frozen=True)
class ModelConfig:
    """The architecture of one network of the ResNet family.

    ``widths`` are the "planes" of each stage (the bottleneck's inner width before the
    ResNeXt factor); a stage outputs ``widths[i] * expansion`` channels, where expansion is
    1 for basic and 4 for bottleneck blocks. The first stage keeps the resolution, every
    later stage halves it.
    """

    block: str = "basic"
    layers: tuple[int, ...] = (2, 2, 2, 2)
    widths: tuple[int, ...] = (64, 128, 256, 512)
    stem: str = "imagenet"
    stem_width: int = 64
    shortcut: str = "B"
    stride_on: str = "3x3"
    groups: int = 1
    base_width: int = 64
    num_classes: int = 1000
    in_chans: int = 3
    zero_init_last: bool = True
    drop_path_rate: float = 0.0
    grad_checkpointing: bool = False

    def __post_init__(self) -> None:
        # Normalise list inputs (YAML, JSON) to tuples so the config stays hashable.
        for name in ("layers", "widths"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        _check_choice("block", self.block, BLOCKS)
        _check_choice("stem", self.stem, STEMS)
        _check_choice("shortcut", self.shortcut, SHORTCUTS)
        _check_choice("stride_on", self.stride_on, STRIDE_ON)
        if not self.layers or not all(isinstance(n, int) and n >= 1 for n in self.layers):
            _fail("layers", self.layers, "expected a non-empty tuple of block counts >= 1")
        if len(self.widths) != len(self.layers) or not all(
            isinstance(w, int) and w >= 1 for w in self.widths
        ):
            _fail(
                "widths",
                self.widths,
                f"expected {len(self.layers)} positive ints, one per stage of layers={self.layers}",
            )
        for name in ("stem_width", "in_chans", "groups", "base_width"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                _fail(name, value, "expected an integer >= 1")
        if not isinstance(self.num_classes, int) or self.num_classes < 0:
            _fail("num_classes", self.num_classes, "expected an integer >= 0 (0: no classifier)")
        if not 0.0 <= self.drop_path_rate < 1.0:
            _fail("drop_path_rate", self.drop_path_rate, "expected a probability in [0, 1)")
        if not self.is_bottleneck and (self.groups != 1 or self.base_width != 64):
            _fail(
                "groups" if self.groups != 1 else "base_width",
                self.groups if self.groups != 1 else self.base_width,
                f"block={self.block!r} supports only groups=1, base_width=64; "
                "use a bottleneck block for ResNeXt/wide nets",
            )
        for planes in self.widths:
            if self.is_bottleneck and planes * self.base_width // 64 < 1:
                _fail(
                    "base_width",
                    self.base_width,
                    f"width per group floor({planes} * {self.base_width} / 64) is 0 in a stage "
                    f"of {planes} planes; the cardinality groups={self.groups} must divide a "
                    "width >= groups: raise base_width",
                )

    @property
    def is_bottleneck(self) -> bool:
        return self.block in ("bottleneck", "preact_bottleneck")

    @property
    def is_preact(self) -> bool:
        return self.block.startswith("preact")

    @property
    def expansion(self) -> int:
        return 4 if self.is_bottleneck else 1

    @property
    def depth(self) -> int:
        """Weighted layers as the papers count them: stem conv + convs in blocks + fc."""
        return 2 + sum(self.layers) * (3 if self.is_bottleneck else 2)

    @property
    def num_features(self) -> int:
        return self.widths[-1] * self.expansion

    @property
    def input_size(self) -> tuple[int, int, int]:
        """The native input size of the stem: 224 for ImageNet nets, 32 for CIFAR nets."""
        side = 224 if self.stem == "imagenet" else 32
        return (self.in_chans, side, side)

    def replace(self, **changes: Any) -> ModelConfig:
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            allowed = ", ".join(f.name for f in dataclasses.fields(self))
            raise ValueError(f"unknown model option(s) {unknown}: allowed are {allowed}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise ValueError(f"unknown model option(s) {unknown}: allowed are {sorted(fields)}")
        return cls(**data)


# Blocks per stage of the ImageNet nets (ResNet paper, Table 1; ResNet-200 from the
# pre-activation paper).
IMAGENET_LAYERS: dict[int, tuple[int, ...]] = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
    200: (3, 24, 36, 3),
}


def layers_for_depth(depth: int, *, block: str, stem: str, num_stages: int = 3) -> tuple[int, ...]:
    """Blocks per stage for a given depth.

    CIFAR nets (ResNet paper section 4.2): basic blocks, depth = 6n + 2 over three stages;
    bottleneck (pre-activation paper): depth = 9n + 2. ImageNet nets use the paper's table.
    """
    if not isinstance(depth, int) or depth < 1:
        _fail("depth", depth, "expected a positive integer")
    bottleneck = block in ("bottleneck", "preact_bottleneck")
    if stem == "imagenet":
        allowed = [d for d in IMAGENET_LAYERS if (d >= 50) == bottleneck]
        if depth not in allowed:
            _fail("depth", depth, f"ImageNet {block} nets have depth in {allowed}")
        return IMAGENET_LAYERS[depth]
    per_block = 3 if bottleneck else 2
    step = per_block * num_stages
    if (depth - 2) % step or depth < step + 2:
        kind = f"{step}n+2"
        examples = ", ".join(str(step * n + 2) for n in (1, 2, 3, 9, 18))
        _fail("depth", depth, f"CIFAR {block} nets need depth = {kind} (e.g. {examples})")
    return ((depth - 2) // step,) * num_stages
