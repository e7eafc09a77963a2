"""The settings of the experiments: one frozen dataclass per experiment, and its presets.

:class:`DegradationConfig`, :class:`GradientsConfig` and :class:`CardinalityConfig` share
:class:`ExperimentConfig`'s fields (preset, data, seed, machine, how the engine runs a
step). Each field is declared once, with :func:`setting`: its default (the full setting,
the papers' own where they say), its value in the quick setting (``quick=``, minutes on a
CPU), what it allows (as :mod:`resnetlab.config` declares fields: ``choices=`` or ``check=``
with its ``allowed`` phrase) and one line of help. The checks, the presets, the command
line's flags and its list of ``KEY=VALUE`` settings (:func:`describe_fields`) all come from
there.

A config is validated at construction, as the training configs are: a bad value raises a
``ConfigError`` that names the field, echoes the value and says what is allowed.
:meth:`ExperimentConfig.resolve` builds one from a preset, keyword values and ``KEY=VALUE``
overrides (read as YAML, as ``resnetlab train`` reads them).

This module needs only the configs and the model zoo (the names of nets), so that the
command line can list the settings without loading the data layer or the engine.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..config import (
    PRECISIONS,
    ModelConfig,
    allowed_values,
    at_least,
    build_config,
    describe_type,
    field_types,
    layers_for_depth,
    option,
    parse_override,
    show_value,
    validate_fields,
)
from ..errors import ConfigError, ResnetlabError
from ..models import get_config, list_models

# The nets each experiment trains by default.
FAMILIES = ("plain", "resnet")  # degradation: a plain and a residual net of each depth
DEFAULT_MODELS = ("plain56", "resnet56", "resnet56_v2")  # gradients: nets of equal depth
DEEP_MODELS = ("resnet1001_v2", "resnet1202")  # gradients: more than 1000 layers

# Names beyond the zoo: ``plainD``, ``resnetD`` and ``resnetD_v2`` at any CIFAR depth D = 6n+2,
# built from the zoo entry of the same family with ``depth=D``.
_FAMILY_TEMPLATES = {"plain": "plain20", "resnet": "resnet20", "resnet_v2": "resnet110_v2"}
_DEPTH_NAME = re.compile(r"^(plain|resnet)(\d+)(_v2)?$")


class ExperimentError(ResnetlabError, RuntimeError):
    """An experiment cannot run as asked (settings that clash with earlier results, ...)."""


class ExperimentSettingsError(ExperimentError, ValueError):
    """An experiment's setting is invalid (a size, a count, a depth): the message says which."""


def resolve_model(name: str) -> ModelConfig:
    """The config of a zoo model, or of ``plainD`` / ``resnetD`` / ``resnetD_v2`` (CIFAR, D=6n+2).

    Unknown names and impossible depths raise a ``ValueError`` that says what is allowed.
    """
    if name in list_models():
        return get_config(name)
    match = _DEPTH_NAME.match(name)
    if match is None:
        return get_config(name)  # raises "unknown model ... did you mean ..."
    family = match.group(1) + (match.group(3) or "")
    return get_config(_FAMILY_TEMPLATES[family], depth=int(match.group(2)))


def cifar_config(family: str, depth: int) -> ModelConfig:
    """A CIFAR net of the 2015 paper's section 4.2 (``plain`` or ``resnet``) at any 6n+2 depth."""
    return get_config(_FAMILY_TEMPLATES[family], depth=depth)


# A field annotated ``Names`` holds model names: a list, or one text split on white space.
Names = tuple[str, ...]
_UNSET = object()
# The fields that say how a step runs in the engine, not what is measured: recorded in a
# run's settings only when they differ from their defaults, so that results written before
# they existed still match.
ENGINE_FIELDS = ("precision", "channels_last", "grad_clip")


def setting(
    default: Any,
    *,
    help: str,
    quick: Any = _UNSET,
    choices: tuple[str, ...] | None = None,
    check: Callable[[Any], bool] | None = None,
    allowed: str = "",
) -> Any:
    """A config field: ``default`` (the full setting), its ``quick`` value if it has its
    own, what it allows (``choices`` or a ``check`` whose failure says "expected
    ``allowed``") and its ``help``."""
    base = option(default, choices=choices, check=check, allowed=allowed)
    meta = {**base.metadata, "help": help}
    if quick is not _UNSET:
        meta["quick"] = quick
    return dataclasses.field(default=default, metadata=meta)


def positive(what: str) -> dict[str, Any]:
    """``check`` and ``allowed`` of a positive integer: "a positive number of ``what``"."""
    return dict(check=at_least(1), allowed=f"a positive number of {what}")


def subset(what: str) -> dict[str, Any]:
    """``check`` and ``allowed`` of an image count where null means all of them."""
    return dict(check=at_least(1), allowed=f"a positive number of {what} (or none: all)")


@dataclass(frozen=True)
class ExperimentConfig:
    """What every experiment has: the preset, the data, the seed and the machine, and how
    the engine runs a step (precision, memory layout, gradient clipping)."""

    quick: bool = setting(
        False, help="the short setting (minutes on a CPU) instead of the full one"
    )
    dataset: str = setting(
        "fashion-mnist",
        allowed="fashion-mnist, mnist, cifar10, cifar100 or synthetic[:OPTIONS]",
        help="the data, held in memory",
    )
    data_dir: str | None = setting(None, help="where datasets live (as for train)")
    seed: int = setting(
        0, check=lambda v: 0 <= v < 2**63, allowed="an integer in [0, 2**63)",
        help="the seed of every net: the same initialisation and data order for each",
    )  # fmt: skip
    device: str = setting("auto", allowed="auto, cpu, cuda or cuda:N", help="where to train")
    threads: int | None = setting(
        None, **positive("threads"), help="CPU threads for torch (null: as torch chooses)"
    )
    precision: str = setting(
        "fp32", choices=PRECISIONS,
        help="autocast of training and evaluation (auto: bf16 on GPUs and CPUs fast at it)",
    )  # fmt: skip
    channels_last: bool = setting(True, help="train in the NHWC memory layout")
    grad_clip: float = setting(
        0.0, check=at_least(0), allowed="a max norm >= 0 (0: off)",
        help="clip the gradients' global norm before each step",
    )  # fmt: skip

    def __post_init__(self) -> None:
        validate_fields(self, "")
        from ..data import parse_data_spec  # (the data layer is read when a config is built)

        parsed = parse_data_spec(self.dataset)  # "unknown dataset ...: did you mean ..."
        if parsed.kind == "imagefolder":
            raise ConfigError(
                f"invalid dataset={self.dataset!r}: the experiments hold their data in "
                "memory; use fashion-mnist, mnist, cifar10, cifar100 or synthetic[:OPTIONS]"
            )
        self.check()

    def check(self) -> None:
        """The checks of one experiment that span fields (after each field's own)."""

    # ----------------------------------------------------------------------------------
    # Presets

    @classmethod
    def preset(cls, quick: bool = False) -> dict[str, Any]:
        """The values of the quick or the full setting, for every field with its own."""
        return {
            f.name: f.metadata["quick"] if quick else f.default
            for f in dataclasses.fields(cls)
            if "quick" in f.metadata
        }

    @classmethod
    def resolve(
        cls, *, quick: bool | None = None, overrides: Sequence[str] = (), **values: Any
    ) -> ExperimentConfig:
        """The config of the quick (or full) setting, with ``values`` on top (None: the
        preset's) and then ``overrides`` (``KEY=VALUE``; ``quick=true`` chooses the preset
        too; ``KEY=null`` sets None, e.g. ``train_size=null``: all images)."""
        parsed = [parse_override(text) for text in overrides]
        chosen = bool(quick)
        for layer in parsed:
            chosen = layer.get("quick", chosen)  # checked as the field is, below
        given = {k: v for k, v in values.items() if v is not None}
        return build_config(cls, cls.preset(chosen is True), given, *parsed, {"quick": chosen})

    def changed(self) -> list[str]:
        """The fields of the setting's preset that this config changes."""
        preset = self.preset(self.quick)
        return sorted(k for k, v in preset.items() if getattr(self, k) != v)

    @property
    def setting_name(self) -> str:
        """The phrase naming the setting: its preset, and the preset fields it changes."""
        changed = self.changed()
        name = "Quick setting" if self.quick else "Full setting"
        return name + (f" with {', '.join(changed)} changed" if changed else "")

    def engine_settings(self) -> dict[str, Any]:
        """The engine's settings (:data:`ENGINE_FIELDS`) that differ from their defaults."""
        fields = {f.name: f for f in dataclasses.fields(self)}
        return {k: getattr(self, k) for k in ENGINE_FIELDS if getattr(self, k) != fields[k].default}

    def to_dict(self) -> dict[str, Any]:
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }


def describe_fields(cls: type[ExperimentConfig]) -> list[dict[str, str]]:
    """Every field of ``cls``, its own first and then the common ones: key, type, default,
    the quick setting's value (where it has its own), what it allows and its help."""
    own = [f for f in dataclasses.fields(cls) if f.name not in _COMMON]
    common = [f for f in dataclasses.fields(cls) if f.name in _COMMON]
    hints = field_types(cls)
    rows = []
    for f in own + common:
        tp = hints[f.name]
        rows.append(
            dict(
                key=f.name,
                type=describe_type(tp),
                default=show_value(f.default),
                quick=show_value(f.metadata["quick"]) if "quick" in f.metadata else "",
                allowed="model names" if tp == Names else allowed_values(f, tp),
                help=f.metadata.get("help", ""),
            )
        )
    return rows


_COMMON = {f.name for f in dataclasses.fields(ExperimentConfig)}


# --------------------------------------------------------------------------------------
# The experiments' configs.


@dataclass(frozen=True)
class DegradationConfig(ExperimentConfig):
    """Plain and residual CIFAR nets of two or more depths, the same recipe for all.

    The full setting is the paper's (64k iterations of batch 128 on the whole training set,
    its init); the quick one is about 10 minutes on two free cores (a 10k-image subset, 200
    iterations per net, the residual branches zero-initialised: why, in :mod:`.degradation`).
    """

    depths: tuple[int, ...] = setting(
        (20, 56), check=lambda v: all(isinstance(d, int) and d > 0 for d in v),
        allowed="CIFAR depths 6n+2 (e.g. 20 56)", help="a plain and a residual net of each",
    )  # fmt: skip
    iters: int = setting(64000, quick=200, **positive("iterations"), help="iterations per net")
    train_size: int | None = setting(
        None, quick=10000, **subset("images"), help="training images, a seeded subset"
    )
    train_eval_size: int | None = setting(
        10000, quick=2000, **subset("images"),
        help="training images the training error is measured on (a fixed subset of them)",
    )  # fmt: skip
    test_size: int | None = setting(
        None, quick=1000, **subset("images"), help="test images the test error is measured on"
    )
    eval_every: int = setting(
        1000, quick=40, check=at_least(0), allowed="an integer >= 0",
        help="iterations between points of the curves (0: only at the end)",
    )  # fmt: skip
    batch_size: int = setting(128, **positive("images"), help="images per step")
    lr: float = setting(
        0.1, check=lambda v: v > 0, allowed="a learning rate > 0",
        help="learning rate, divided by 10 at 50% and 75% of the iterations",
    )  # fmt: skip
    weight_decay: float = setting(1e-4, check=at_least(0), allowed="a value >= 0",
                                  help="SGD weight decay")  # fmt: skip
    warmup_iters: int = setting(
        0, check=at_least(0), allowed="an integer >= 0",
        help="lr / 10 for the first N iterations, as the paper did for 110+ layers",
    )  # fmt: skip
    zero_init: bool = setting(
        False, quick=True,
        help="zero-init the residual branches' last BN, so each residual unit starts as the "
        "identity (the paper: off)",
    )  # fmt: skip
    tolerance: float = setting(
        0.01, check=at_least(0), allowed="a fraction >= 0",
        help="how far the deeper ResNet's training error may exceed the shallower one's and "
        "still count as no degradation",
    )  # fmt: skip

    def check(self) -> None:
        depths = sorted(set(self.depths))
        if len(depths) < 2:
            raise ExperimentSettingsError(
                f"depths={depths}: give at least two depths to compare (e.g. 20 56)"
            )
        object.__setattr__(self, "depths", tuple(depths))
        for family in FAMILIES:
            for d in depths:
                cifar_config(family, d)  # "CIFAR basic nets need depth = 6n+2 ..."

    def model_configs(self) -> dict[str, ModelConfig]:
        return {f"{f}{d}": cifar_config(f, d) for f in FAMILIES for d in self.depths}


@dataclass(frozen=True)
class GradientsConfig(ExperimentConfig):
    """Per-layer gradient norms of nets of equal depth, then very deep nets trained, and the
    memory of their step with and without activation checkpointing. The quick setting takes
    a few minutes on 2 CPU cores: fewer steps, and the deep nets on 16x16 images."""

    models: Names = setting(
        DEFAULT_MODELS,
        help="nets of equal depth: zoo names or plainD / resnetD / resnetD_v2 for a CIFAR "
        "depth D = 6n+2 (none: only the 1000+-layer nets)",
    )
    steps: int = setting(
        200, quick=50, check=at_least(0), allowed="an integer >= 0",
        help="training steps between the two measurements",
    )  # fmt: skip
    batch_size: int = setting(128, quick=64, **positive("images"), help="images per step")
    lr: float = setting(0.1, check=lambda v: v > 0, allowed="a learning rate > 0",
                        help="learning rate")  # fmt: skip
    probe_size: int = setting(
        128, **positive("images"), help="training images of the batch the norms are measured on"
    )
    deep_models: Names = setting(DEEP_MODELS, help="very deep nets to train (none: skip them)")
    deep_steps: int = setting(300, quick=50, check=at_least(1), allowed="an integer >= 1",
                              help="their steps")  # fmt: skip
    deep_batch_size: int = setting(16, quick=16, **positive("images"),
                                   help="their images per step")  # fmt: skip
    deep_image_size: int | None = setting(
        None, quick=16, **positive("pixels"), help="resize their images to this (none: as stored)"
    )
    deep_train_size: int = setting(1024, quick=512, **positive("images"),
                                   help="their training images")  # fmt: skip
    deep_lr: float = setting(
        0.01, check=lambda v: v > 0, allowed="a learning rate > 0",
        help="their learning rate (a tenth of it for the first 10% of steps)",
    )  # fmt: skip
    memory: bool = setting(True, help="measure their step's memory with and without "
                           "activation checkpointing")  # fmt: skip

    def check(self) -> None:
        if not self.models and not self.deep_models:
            raise ExperimentSettingsError("models and deep_models are both empty: nothing to run")
        for name in (*self.models, *self.deep_models):
            resolve_model(name)  # "unknown model ...: did you mean ..."


@dataclass(frozen=True)
class CardinalityConfig(ExperimentConfig):
    """The matched-MACs variants of :func:`cardinality_variants`, one recipe for all. The
    quick setting is a few minutes on 2 CPU cores for the six default variants: a smoke
    test of the setup, too short to rank them (the full setting is for a GPU)."""

    budget: float = setting(
        1.0, check=lambda v: v > 0, allowed="a positive multiple of the baseline's MACs",
        help="MACs as a multiple of ResNet-29 1x16d's (2 is the paper's Table 4)",
    )  # fmt: skip
    depths: tuple[int, ...] = setting(
        (20, 56), check=lambda v: all(isinstance(d, int) and d > 0 for d in v),
        allowed="bottleneck depths 9n+2 (e.g. 20 56)", help="C=1 nets of other depths",
    )  # fmt: skip
    cardinalities: tuple[int, ...] = setting(
        (2, 4, 8), check=lambda v: all(isinstance(c, int) and c >= 2 for c in v),
        allowed="values >= 2", help="ResNeXt-29 cardinalities",
    )  # fmt: skip
    iters: int = setting(20000, quick=60, **positive("iterations"), help="iterations per net")
    train_size: int | None = setting(
        None, quick=10000, **subset("images"), help="training images, a seeded subset"
    )
    train_eval_size: int | None = setting(
        10000, quick=1000, **subset("images"),
        help="training images the training error is measured on (a fixed subset of them)",
    )  # fmt: skip
    test_size: int | None = setting(
        None, quick=2000, **subset("images"), help="test images the test error is measured on"
    )
    eval_every: int = setting(
        1000, quick=30, check=at_least(0), allowed="an integer >= 0",
        help="iterations between points of the curves (0: only at the end)",
    )  # fmt: skip
    batch_size: int = setting(128, **positive("images"), help="images per step")
    lr: float = setting(
        0.1, check=lambda v: v > 0, allowed="a learning rate > 0",
        help="learning rate (Nesterov SGD, x0.1 at 50% and 75% of the iterations)",
    )  # fmt: skip
    weight_decay: float = setting(5e-4, check=at_least(0), allowed="a value >= 0",
                                  help="SGD weight decay")  # fmt: skip

    def check(self) -> None:
        for depth in self.depths:
            layers_for_depth(depth, block="bottleneck", stem="cifar")  # "... 9n+2 ..."
