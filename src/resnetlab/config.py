"""Frozen, validated configuration objects.

Every object here is a frozen dataclass validated at construction: a bad value raises a
``ConfigError`` (a ``ValueError``) that names the field, echoes the value and says what is allowed.
What a field allows is declared beside it (``option(..., choices=...)`` or ``check=`` with its
``allowed`` phrase), so the checks and the listing of every key (:func:`config_keys`,
``resnetlab config``) come from one place.

Numbers may be written as people write them, in YAML files, ``key=value`` overrides or
Python: ``1e-3``, ``1E3``, ``1_000``, ``.5``, ``5.``, even as text (``"1e-3"``). YAML 1.1
(PyYAML) reads the first two as strings: a number field reads the text itself
(:func:`parse_number`); and files and overrides are read with YAML 1.2's integers
(:func:`read_yaml`: ``010`` is ten, not octal 8). An integer field takes a number only when
it is whole (``max_iters=1e3`` is 1000; ``epochs=2.5`` is an error).

A config is resolved from layers (:func:`build_config`; :func:`load_train_config` for
training: defaults <- YAML file <- flags <- ``key=value`` overrides). Each layer is read
against the fields' types (``typing`` objects, not their spelling) and checked as the
fields declare; OmegaConf then merges the layers onto the dataclass as a structured config,
resolves ``${key}`` interpolations, and builds the frozen objects.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from .errors import ConfigError

BLOCKS = ("basic", "bottleneck", "preact_basic", "preact_bottleneck")
STEMS = ("imagenet", "cifar", "cifar_pool")
SHORTCUTS = ("A", "B", "C", "none")
STRIDE_ON = ("3x3", "1x1")


def reject(field: str, value: Any, allowed: str) -> None:
    raise ConfigError(f"invalid {field}={value!r}: {allowed}")


def _check_choice(field: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        reject(field, value, f"expected one of {', '.join(repr(c) for c in choices)}")


def option(
    default: Any,
    *,
    choices: tuple[str, ...] | None = None,
    check: Callable[[Any], bool] | None = None,
    allowed: str = "",
) -> Any:
    """A dataclass field with what it allows: ``choices``, or a ``check`` (on non-null
    values) whose failure says "expected ``allowed``"."""
    meta: dict[str, Any] = {}
    if choices is not None:
        meta["choices"] = tuple(choices)
    if check is not None:
        meta["check"], meta["allowed"] = check, allowed
    elif allowed:
        meta["allowed"] = allowed
    return dataclasses.field(default=default, metadata=meta)


def validate_fields(obj: Any, prefix: str) -> None:
    """Coerce every field of ``obj`` to its type and check what the field declares;
    nested sections given as mappings are built (and so checked) too."""
    hints = field_types(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        section = _section(f)
        if section is not None:
            if isinstance(value, dict):
                value = build_config(section, value, prefix=f"{prefix}{f.name}.")
                object.__setattr__(obj, f.name, value)
            elif not isinstance(value, section):
                reject(prefix + f.name, value, "expected a mapping")
            continue
        object.__setattr__(obj, f.name, _check_field(prefix + f.name, value, f, hints[f.name]))


def _check_field(path: str, value: Any, f: dataclasses.Field, tp: Any) -> Any:
    value = coerce(path, value, tp)
    if value is None:
        return value
    meta = f.metadata
    if "choices" in meta:
        _check_choice(path, value, meta["choices"])
    check = meta.get("check")
    if check is not None and not check(value):
        reject(path, value, f"expected {meta['allowed']}")
    return value


def at_least(low: int | float) -> Callable[[Any], bool]:
    return lambda v: v >= low


def within(low: float, high: float, *, closed: bool = False) -> Callable[[Any], bool]:
    return (lambda v: low <= v <= high) if closed else (lambda v: low <= v < high)


@dataclass(frozen=True)
class ModelConfig:
    """The architecture of one network of the ResNet family.

    ``widths`` are the "planes" of each stage (the bottleneck's inner width before the
    ResNeXt factor); a stage outputs ``widths[i] * expansion`` channels, where expansion is
    1 for basic and 4 for bottleneck blocks. The first stage keeps the resolution, every
    later stage halves it.
    """

    block: str = option("basic", choices=BLOCKS)
    layers: tuple[int, ...] = option(
        (2, 2, 2, 2),
        check=lambda v: bool(v) and all(isinstance(n, int) and n >= 1 for n in v),
        allowed="a non-empty tuple of block counts >= 1",
    )
    widths: tuple[int, ...] = option(
        (64, 128, 256, 512), allowed="one positive int per stage of layers"
    )
    stem: str = option("imagenet", choices=STEMS)
    stem_width: int = option(64, check=at_least(1), allowed="an integer >= 1")
    shortcut: str = option("B", choices=SHORTCUTS)
    stride_on: str = option("3x3", choices=STRIDE_ON)
    groups: int = option(1, check=at_least(1), allowed="an integer >= 1")
    base_width: int = option(64, check=at_least(1), allowed="an integer >= 1")
    num_classes: int = option(1000, check=at_least(0), allowed="an integer >= 0 (0: no classifier)")
    in_chans: int = option(3, check=at_least(1), allowed="an integer >= 1")
    zero_init_last: bool = True
    drop_path_rate: float = option(0.0, check=within(0.0, 1.0), allowed="a probability in [0, 1)")
    grad_checkpointing: bool = False

    def __post_init__(self) -> None:
        # Lists (YAML, JSON) become tuples, so the config stays hashable.
        validate_fields(self, "")
        if len(self.widths) != len(self.layers) or not all(
            isinstance(w, int) and w >= 1 for w in self.widths
        ):
            reject(
                "widths",
                self.widths,
                f"expected {len(self.layers)} positive ints, one per stage of layers={self.layers}",
            )
        if not self.is_bottleneck and (self.groups != 1 or self.base_width != 64):
            reject(
                "groups" if self.groups != 1 else "base_width",
                self.groups if self.groups != 1 else self.base_width,
                f"block={self.block!r} supports only groups=1, base_width=64; "
                "use a bottleneck block for ResNeXt/wide nets",
            )
        for planes in self.widths:
            if self.is_bottleneck and planes * self.base_width // 64 < 1:
                reject(
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
            raise ConfigError(f"unknown model option(s) {unknown}: allowed are {allowed}")
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
            raise ConfigError(f"unknown model option(s) {unknown}: allowed are {sorted(fields)}")
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
        reject("depth", depth, "expected a positive integer")
    bottleneck = block in ("bottleneck", "preact_bottleneck")
    if stem == "imagenet":
        allowed = [d for d in IMAGENET_LAYERS if (d >= 50) == bottleneck]
        if depth not in allowed:
            reject("depth", depth, f"ImageNet {block} nets have depth in {allowed}")
        return IMAGENET_LAYERS[depth]
    per_block = 3 if bottleneck else 2
    step = per_block * num_stages
    if (depth - 2) % step or depth < step + 2:
        kind = f"{step}n+2"
        examples = ", ".join(str(step * n + 2) for n in (1, 2, 3, 9, 18))
        reject("depth", depth, f"CIFAR {block} nets need depth = {kind} (e.g. {examples})")
    return ((depth - 2) // step,) * num_stages


# --------------------------------------------------------------------------------------
# Training configuration: nested frozen dataclasses, read from YAML presets plus
# ``key=value`` overrides (dotted keys for nested sections: ``optim.lr=0.05``).

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("multistep", "cosine", "onecycle", "constant")
MILESTONE_UNITS = ("epoch", "iter")
TASKS = ("classification", "detection", "segmentation")
# The heads each dense task can put on a backbone (torchvision's models; models/dense.py).
DENSE_HEADS = {
    "detection": ("fasterrcnn", "maskrcnn", "retinanet", "fcos"),
    "segmentation": ("deeplabv3", "fcn"),
}
# Tasks whose ``precision: auto`` keeps fp32 on a CPU: FCOS's losses went non-finite within
# the first epoch under bf16 autocast on an AMX Xeon (tests/test_dense_train.py);
# ``precision: bf16`` still asks for it.
AUTO_FP32_ON_CPU = ("detection",)


def run_precision(precision: str, task: str, device: Any) -> str:
    """What a run's ``precision`` means for ``task`` on ``device``: ``auto`` follows
    :func:`resnetlab.device.training_precision`, except that the tasks of
    ``AUTO_FP32_ON_CPU`` keep fp32 on a CPU. The trainer and ``${if_bf16}`` both ask this."""
    from .device import training_precision

    if precision == "auto" and device.type == "cpu" and task in AUTO_FP32_ON_CPU:
        return "fp32"
    return training_precision(precision, device)


@dataclass(frozen=True)
class DataConfig:
    spec: str = option("fashion-mnist", allowed="a dataset spec: fashion-mnist, mnist, cifar10, "
                     "cifar100, imagefolder:PATH, synthetic[:OPTIONS]")  # fmt: skip
    data_dir: str | None = None
    # None: 128, or less on a small training set (at least 8 steps per epoch)
    batch_size: int | None = option(
        None, check=at_least(1), allowed="an integer >= 1 or null (chosen)"
    )
    eval_batch_size: int | None = option(None, check=at_least(1), allowed="an integer >= 1")
    augment: str = "standard"
    random_erasing: float = option(0.0, check=within(0, 1, closed=True),
                                 allowed="a probability in [0, 1]")  # fmt: skip
    # the run's last N epochs (of its plan, time budget included) without augmentation: no
    # crop, flip, erasing, mixup or cutmix (image folders: the evaluation transform)
    plain_final_epochs: int = option(0, check=at_least(0), allowed="an integer >= 0 (0: off)")
    # progressive resizing (classification): the first epoch trains at resize_from px (0: off),
    # the size grows linearly with the epoch and is the full size from resize_until of the
    # run's planned epochs on (time budget included); evaluation is always at the full size
    resize_from: int = option(0, check=at_least(0), allowed="an integer >= 0 (0: off)")
    resize_until: float = option(0.5, check=within(0, 1, closed=True),
                                 allowed="a fraction of the run's epochs in [0, 1]")  # fmt: skip
    num_workers: int = option(2, check=at_least(0), allowed="an integer >= 0")
    val_fraction: float = option(0.0, check=within(0, 1), allowed="a fraction in [0, 1)")
    eval_split: str | None = None
    skip_bad_images: bool = False
    # None: chosen from the data (image folders: the images' own size when small, else 224)
    image_size: int | None = option(None, check=at_least(1), allowed="an integer >= 1 or null")
    # Image folders: "auto" (small images: own size, pad + crop + flip; else the ImageNet
    # pipeline), "small" or "imagenet"; in_memory None decodes small images once into memory
    # when train + eval fit memory_budget_mb.
    pipeline: str = "auto"
    in_memory: bool | None = None
    memory_budget_mb: float = option(2048.0, check=at_least(0), allowed="a size in MB >= 0")

    def __post_init__(self) -> None:
        validate_fields(self, "data.")


@dataclass(frozen=True)
class OptimConfig:
    name: str = option("sgd", choices=OPTIMIZERS)
    lr: float = option(0.1, check=lambda v: v > 0, allowed="a learning rate > 0")
    momentum: float = option(0.9, check=within(0, 1), allowed="a value in [0, 1)")
    nesterov: bool = False
    weight_decay: float = option(1e-4, check=at_least(0), allowed="a value >= 0")
    # Exclude BN parameters and biases from weight decay (the usual "no-decay groups").
    no_decay_norm_bias: bool = False
    betas: tuple[float, float] = option(
        (0.9, 0.999),
        check=lambda v: len(v) == 2 and all(0.0 <= b < 1.0 for b in v),
        allowed="two values in [0, 1), e.g. [0.9, 0.999]",
    )
    grad_clip: float = option(0.0, check=at_least(0), allowed="a max norm >= 0 (0: off)")

    def __post_init__(self) -> None:
        validate_fields(self, "optim.")
        if self.nesterov and self.momentum == 0:
            reject("optim.nesterov", self.nesterov, "Nesterov momentum needs optim.momentum > 0")


_FACTOR = dict(check=within(0, 1, closed=True), allowed="a factor in [0, 1]")


@dataclass(frozen=True)
class ScheduleConfig:
    name: str = option("cosine", choices=SCHEDULES)
    # multistep: lr x gamma at each milestone, counted in epochs or iterations
    # (the ResNet paper: 32k and 48k of 64k iterations).
    milestones: tuple[float, ...] = option(
        (),
        check=lambda v: list(v) == sorted(v) and all(m > 0 for m in v),
        allowed="increasing positive values",
    )
    milestone_unit: str = option("epoch", choices=MILESTONE_UNITS)
    gamma: float = option(0.1, check=lambda v: 0 < v <= 1, allowed="a factor in (0, 1]")
    # Linear warm-up from warmup_factor * lr over warmup_epochs (fractions allowed).
    warmup_epochs: float = option(0.0, check=at_least(0), allowed="a length >= 0 in epochs")
    warmup_factor: float = option(0.1, **_FACTOR)
    # Constant low-lr warm-up (the ResNet paper's lr 0.01 for ResNet-110 until ~400 iters).
    constant_warmup_iters: int = option(0, check=at_least(0), allowed="an integer >= 0")
    constant_warmup_factor: float = option(0.1, **_FACTOR)
    # one-cycle: peak at pct_start of training, start at lr/div_factor, end at lr/final_div
    pct_start: float = option(0.25, check=lambda v: 0 < v < 1, allowed="a fraction in (0, 1)")
    div_factor: float = option(25.0, check=lambda v: v > 0, allowed="a factor > 0")
    final_div_factor: float = option(1e4, check=lambda v: v > 0, allowed="a factor > 0")
    min_lr_factor: float = option(0.0, **_FACTOR)

    def __post_init__(self) -> None:
        validate_fields(self, "schedule.")


@dataclass(frozen=True)
class FinetuneConfig:
    """How pretrained weights (``TrainConfig.weights``) are fine-tuned.

    ``freeze``: none, stem, stageN (the stem and stages 1..N) or backbone (all but the
    head). ``backbone_lr_scale`` multiplies the lr of everything but the head.
    ``head_epochs``: train the head alone for the first epochs. ``freeze_bn``: keep every
    BatchNorm's running statistics as pretrained (tiny datasets).
    """

    freeze: str = option(
        "none",
        check=lambda v: re.fullmatch(r"none|stem|backbone|stage[1-9]\d*", v) is not None,
        allowed="none, stem, stage1, stage2, ... or backbone",
    )
    backbone_lr_scale: float = option(1.0, check=at_least(0), allowed="a factor >= 0")
    head_epochs: int = option(0, check=at_least(0), allowed="an integer >= 0")
    freeze_bn: bool = False

    def __post_init__(self) -> None:
        validate_fields(self, "finetune.")


@dataclass(frozen=True)
class DenseConfig:
    """Detection and segmentation (``task`` other than classification): the dense model.

    ``head`` None: fasterrcnn for detection, deeplabv3 for segmentation. ``output_stride``
    None: 32 for detection (FPN), 16 for segmentation (dilated last stage). ``trainable_layers``
    (0..5, counted from the top as in torchvision) None: all without ``weights``, 3 with.
    ``frozen_bn`` None: frozen BatchNorm when starting from ``weights``. ``fpn_channels``: the
    width of the detectors' feature pyramid. ``score_threshold``: the detections drawn on images.
    """

    head: str | None = option(
        None,
        check=lambda v: any(v in heads for heads in DENSE_HEADS.values()),
        allowed="fasterrcnn, maskrcnn, retinanet, fcos (detection), deeplabv3 or fcn (segmentation)",
    )
    output_stride: int | None = option(
        None, check=lambda v: v in (8, 16, 32), allowed="8, 16, 32 or null"
    )
    trainable_layers: int | None = option(
        None, check=lambda v: 0 <= v <= 5, allowed="an integer in 0..5 or null"
    )
    frozen_bn: bool | None = None
    # detection: the channels of every FPN level (torchvision: 256; narrower for small nets)
    fpn_channels: int = option(
        256, check=lambda v: v >= 64 and v % 32 == 0, allowed="a multiple of 32, >= 64"
    )
    score_threshold: float = option(
        0.5, check=within(0, 1, closed=True), allowed="a score in [0, 1]"
    )

    def __post_init__(self) -> None:
        validate_fields(self, "dense.")

    def head_for(self, task: str) -> str:
        """The head a ``task`` run uses: ``head``, else the task's first (its default)."""
        return self.head if self.head is not None else DENSE_HEADS[task][0]


# The model options a training config may set (``model_args``): the architecture's fields
# and the papers' ``depth``; the classifier's size always comes from the data.
MODEL_ARG_DEPTH = "an integer >= 1 (the papers' depth rules set the layers)"


def _check_model_args(args: dict[str, Any]) -> dict[str, Any]:
    fields = {f.name: f for f in dataclasses.fields(ModelConfig)}
    hints = field_types(ModelConfig)
    allowed = ", ".join(sorted([*(k for k in fields if k != "num_classes"), "depth"]))
    out = {}
    for key, value in args.items():
        path = f"model_args.{key}"
        if key == "num_classes":
            raise ConfigError(
                f"invalid {path}={value!r}: the classifier's size comes from the data (the "
                "classes of data.spec); remove model_args.num_classes"
            )
        if key == "weights":
            raise ConfigError(
                f"invalid {path}={value!r}: give pretrained weights as weights=SOURCE "
                "(--weights SOURCE)"
            )
        if key == "depth":
            depth = coerce(path, value, int)
            if depth < 1:
                reject(path, depth, f"expected {MODEL_ARG_DEPTH}")
            out[key] = depth
        elif key in fields:
            out[key] = _check_field(path, value, fields[key], hints[key])
        else:
            raise ConfigError(f"unknown model option model_args.{key}: allowed are {allowed}")
    return out


@dataclass(frozen=True)
class TrainConfig:
    # classification, or a dense task on the model as backbone (``dense`` says how)
    task: str = option("classification", choices=TASKS)
    model: str = option("resnet20", allowed="a name from `resnetlab models`")
    model_args: dict = dataclasses.field(default_factory=dict)
    # Pretrained weights to start from: a file, a run directory, or a named weight such as
    # torchvision:resnet50.IMAGENET1K_V2 (see `resnetlab weights`).
    weights: str | None = option(
        None, allowed="a file, a run directory or a name from `resnetlab weights`"
    )
    finetune: FinetuneConfig = dataclasses.field(default_factory=FinetuneConfig)
    dense: DenseConfig = dataclasses.field(default_factory=DenseConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    schedule: ScheduleConfig = dataclasses.field(default_factory=ScheduleConfig)
    epochs: int = option(10, check=at_least(1), allowed="an integer >= 1")
    # Stop after this many iterations in all (the ResNet paper's 64k); None: epochs decide.
    max_iters: int | None = option(
        None, check=at_least(1), allowed="an integer >= 1 or null (epochs decide)"
    )
    # A time budget in seconds: the run's length is set from the measured speed of its first
    # steps (and re-planned after each epoch) so that training, set-up included and
    # evaluation excluded, ends after about budget_s; epochs / max_iters are then the most it
    # may train. None: epochs / max_iters decide.
    budget_s: float | None = option(
        None, check=lambda v: v > 0, allowed="seconds > 0 or null (epochs decide)"
    )
    seed: int = option(0, check=lambda v: 0 <= v < 2**63, allowed="an integer in [0, 2**63)")
    label_smoothing: float = option(0.0, check=within(0, 1), allowed="a value in [0, 1)")
    mixup_alpha: float = option(0.0, check=at_least(0), allowed="a Beta parameter >= 0 (0: off)")
    cutmix_alpha: float = option(0.0, check=at_least(0), allowed="a Beta parameter >= 0 (0: off)")
    ema_decay: float = option(0.0, check=within(0, 1), allowed="a decay in [0, 1) (0: no EMA)")
    precision: str = option("auto", choices=PRECISIONS)
    channels_last: bool = True
    compile: bool = False
    device: str = option("auto", allowed="auto, cpu, cuda or cuda:N")
    output: str = option("runs/default", allowed="the run directory")
    save_every_steps: int = option(0, check=at_least(0), allowed="an integer >= 0")
    keep_last: int = option(3, check=at_least(1), allowed="an integer >= 1")
    eval_every: int = option(1, check=at_least(0), allowed="an integer >= 0")
    tta_flip: bool = False
    threads: int | None = option(
        None, check=at_least(1), allowed="an integer >= 1 or null (all cores)"
    )
    # Distributed (torchrun): batch statistics over all ranks, and how long a collective
    # may wait for a missing rank before the job fails.
    sync_bn: bool = False
    dist_timeout_s: float = option(300.0, check=lambda v: v > 0, allowed="seconds > 0")

    def __post_init__(self) -> None:
        validate_fields(self, "")
        if not all(isinstance(k, str) for k in self.model_args):
            reject("model_args", self.model_args, "expected a mapping of model option names")
        object.__setattr__(self, "model_args", _check_model_args(self.model_args))
        if self.task != "classification":
            self._check_dense()

    def _check_dense(self) -> None:
        head = self.dense.head
        if head is not None and head not in DENSE_HEADS[self.task]:
            reject("dense.head", head, f"a {self.task} head is one of "
                  f"{', '.join(DENSE_HEADS[self.task])}")  # fmt: skip
        if self.task == "detection" and self.dense.output_stride not in (None, 32):
            reject("dense.output_stride", self.dense.output_stride,
                  "detection uses FPN on strides 4..32: leave it null (32)")  # fmt: skip
        for key in ("label_smoothing", "mixup_alpha", "cutmix_alpha"):
            if getattr(self, key):
                reject(key, getattr(self, key), f"classification only; set {key}=0 for {self.task}")
        if self.tta_flip:
            reject("tta_flip", True, f"classification only; set tta_flip=false for {self.task}")
        if self.data.resize_from:
            reject("data.resize_from", self.data.resize_from,
                   f"classification only; set data.resize_from=0 for {self.task}")  # fmt: skip
        if self.finetune != FinetuneConfig():
            raise ConfigError(
                f"finetune.* applies to classification; for {self.task} say which stages train "
                "with dense.trainable_layers and dense.frozen_bn"
            )

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _finite(value: int | float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


# --------------------------------------------------------------------------------------
# Numbers as people write them.

_DIGITS = r"[0-9]+(?:_[0-9]+)*"
_NUMBER = re.compile(rf"[-+]?(?:{_DIGITS}(?:\.(?:{_DIGITS})?)?|\.{_DIGITS})(?:[eE][-+]?{_DIGITS})?")
_INTEGER = re.compile(rf"[-+]?{_DIGITS}")
_NON_FINITE = re.compile(r"[-+]?\.?(?:inf|infinity|nan)", re.IGNORECASE)


def parse_number(text: str) -> int | float | None:
    """The number ``text`` spells (``1e-3``, ``1E3``, ``1_000``, ``.5``, ``5.``, ``-2e-4``,
    ``inf``, ``nan``): an int for an integer literal, else a float; None for anything else."""
    s = text.strip()
    if _INTEGER.fullmatch(s):
        return int(s.replace("_", ""))
    if _NUMBER.fullmatch(s):
        return float(s.replace("_", ""))
    if _NON_FINITE.fullmatch(s):
        return float(s.replace(".", ""))
    return None


def _as_int(path: str, value: Any) -> int:
    if isinstance(value, bool):
        reject(path, value, "expected an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        if parse_number(value) is None:
            reject(path, value, "expected an integer")
        try:  # exact: "1e20" is 10**20, not the float nearest to it
            number = Decimal(value.strip().replace("_", ""))
        except InvalidOperation:  # pragma: no cover - parse_number accepted it
            reject(path, value, "expected an integer")
        if not number.is_finite() or number != number.to_integral_value():
            reject(path, value, "expected an integer (a whole number, e.g. 1000 or 1e3)")
        if number.adjusted() > 30:
            reject(path, value, "expected an integer of at most 31 digits")
        return int(number)
    if isinstance(value, float):
        if _finite(value) and value.is_integer():
            if abs(value) >= 1e31:
                reject(path, value, "expected an integer of at most 31 digits")
            return int(value)
        reject(path, value, "expected an integer (a whole number, e.g. 1000 or 1e3)")
    reject(path, value, "expected an integer")


def _as_float(path: str, value: Any) -> float:
    if isinstance(value, str):
        number = parse_number(value)
        if number is None:
            reject(path, value, "expected a number, e.g. 0.1, 1e-3 or 5e4")
        if not _finite(number):
            reject(path, value, "expected a finite number")
        return float(number)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not _finite(value):
            reject(path, value, "expected a finite number")
        return float(value)
    reject(path, value, "expected a number, e.g. 0.1, 1e-3 or 5e4")


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """The fields' types of a config dataclass, as typing objects (annotations resolved)."""
    return typing.get_type_hints(cls)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """``X | None`` -> ``(X, True)``; any other type -> ``(type, False)``."""
    if typing.get_origin(tp) in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) != 1 or len(args) == len(typing.get_args(tp)):
            raise TypeError(f"a config field may be X or X | None, not {tp!r}")
        return args[0], True
    return tp, False


def coerce(path: str, value: Any, tp: Any) -> Any:
    """Check one YAML/override value against its field's type, converting gently: numbers
    written as text are read, ints widen to floats, whole floats narrow to ints. A type the
    configs do not declare is a programming error (``TypeError``), never passed unchecked."""
    base, nullable = _unwrap_optional(tp)
    if value is None:
        if nullable:
            return None
        reject(path, value, f"expected a value of type {describe_type(tp)}, not null")
    if base is bool:
        if isinstance(value, bool):
            return value
        reject(path, value, "expected true or false")
    if base is int:
        return _as_int(path, value)
    if base is float:
        return _as_float(path, value)
    if base is str:
        if isinstance(value, str):
            return value
        reject(path, value, "expected a string")
    if typing.get_origin(base) is tuple:
        return _as_tuple(path, value, typing.get_args(base))
    if base is dict or typing.get_origin(base) is dict:
        if isinstance(value, dict) and all(isinstance(k, str) for k in value):
            return value
        reject(path, value, "expected a mapping of names to values")
    raise TypeError(f"{path}: config fields of type {tp!r} have no reading")


def _as_tuple(path: str, value: Any, args: tuple[Any, ...]) -> tuple:
    item = args[0]
    if item is str:  # model names: a list, or one text of names split on white space
        if isinstance(value, str):
            value = value.split()
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            reject(path, value, "expected a list of names")
        return tuple(value)
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)):
        reject(path, value, "expected a list of finite numbers")
    out = []
    for v in value:
        if isinstance(v, str):
            number = parse_number(v)
            v = v if number is None else number
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not _finite(v):
            reject(path, value, "expected a list of finite numbers")
        # Integer fields (layers, widths): a whole float is the integer; others stay as
        # written, for the field's own check to name.
        out.append(int(v) if item is int and isinstance(v, float) and v.is_integer() else v)
    return tuple(out)


def _section(f: dataclasses.Field) -> type | None:
    """The config dataclass a field nests (``TrainConfig.optim``), or None."""
    factory = f.default_factory if callable(f.default_factory) else None
    return factory if dataclasses.is_dataclass(factory) else None


def _checked_layer(cls: type, data: Any, prefix: str) -> dict[str, Any]:
    """One layer of settings for ``cls`` (a YAML file, flags, one override) with every key
    known and every value read as its field's type and checked as it declares; interpolations (``${data.batch_size}``)
    are left for OmegaConf to resolve and type."""
    if dataclasses.is_dataclass(data) and isinstance(data, cls):
        data = dataclasses.asdict(data)
    if not isinstance(data, dict):
        reject(prefix.rstrip(".") or "config", data, "expected a mapping of keys to values")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(str(k) for k in set(data) - set(fields))  # (YAML keys may be numbers)
    if unknown:
        near = difflib.get_close_matches(unknown[0], list(fields), n=1)
        raise ConfigError(
            f"unknown config key(s) {', '.join(prefix + k for k in unknown)}: allowed "
            f"{'in ' + prefix.rstrip('.') if prefix else 'at the top level'} are "
            f"{', '.join(sorted(fields))}" + (f" (did you mean {prefix}{near[0]}?)" if near else "")
        )
    hints = field_types(cls)
    out: dict[str, Any] = {}
    for key, value in data.items():
        section = _section(fields[key])
        if section is not None:
            out[key] = _checked_layer(section, value, f"{prefix}{key}.")
        elif isinstance(value, str) and "${" in value:
            out[key] = value
        else:
            out[key] = _check_field(prefix + key, value, fields[key], hints[key])
    return out


def _if_bf16(fp32_value: Any, bf16_value: Any, *, _root_: Any) -> Any:
    """``${if_bf16:A,B}`` in a config: ``B`` where the run trains in bf16 (``precision: bf16``,
    or ``auto`` on a CPU with AMX or a GPU with bf16, as :func:`run_precision` says for the
    run's task), else ``A``. For a setting whose best value depends on the arithmetic: the
    fast preset's channel widths (multiples of 32 run as fast as 24/48/96 in bf16 on AMX,
    whose batch norm kernels are much slower at 24)."""
    from .device import resolve_device

    device = resolve_device(_root_.get("device") or "auto")
    precision = run_precision(_root_.get("precision") or "auto",
                              _root_.get("task") or "classification", device)  # fmt: skip
    return bf16_value if precision == "bf16" else fp32_value


def build_config(cls: type, *layers: Any, prefix: str = "") -> Any:
    """One frozen config of ``cls`` from layers of plain settings, later layers over
    earlier ones (defaults <- file <- flags <- overrides).

    OmegaConf merges the layers onto ``cls`` as a structured config (nested sections merge
    key by key, lists are replaced, ``${key}`` interpolations resolve) and builds the
    dataclasses, whose construction checks every field. The layers are read first, key by
    key, by this module's rules (numbers as people write them, strict booleans, no unknown
    key), which OmegaConf's own conversions are laxer or stricter than (``"yes"`` is a
    boolean to it, ``1e3`` not an integer), so the messages stay the project's.
    ``${if_bf16:A,B}`` resolves to B where the run trains in bf16, else A (:func:`_if_bf16`).
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if not OmegaConf.has_resolver("if_bf16"):
        # OmegaConf 2.4 renamed register_new_resolver (still there, deprecated)
        register = getattr(OmegaConf, "register_resolver", None) or OmegaConf.register_new_resolver
        register("if_bf16", _if_bf16)
    checked = [_checked_layer(cls, layer, prefix) for layer in layers]
    try:
        merged = OmegaConf.merge(OmegaConf.structured(cls), *checked)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        where = prefix + key if key else prefix.rstrip(".") or "config"
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"invalid {where}: {message}") from None


# --------------------------------------------------------------------------------------
# YAML as the configs are read. Numbers YAML 1.1 leaves as text (1e-3, 1E3) are read by the
# fields' coercion above, so a string field keeps its text ("1e3" stays "1e3", as
# yaml.safe_dump writes it back); its integers are YAML 1.2's: 010 is ten, not octal 8, and
# 1:30 is text, not the sexagesimal 90.


def _yaml_loader() -> type:
    import yaml

    int_tag = "tag:yaml.org,2002:int"

    class Loader(yaml.SafeLoader):
        pass

    Loader.yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag != int_tag]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    integer = rf"^(?:[-+]?{_DIGITS}|0x[0-9a-fA-F]+(?:_[0-9a-fA-F]+)*|0b[01]+)$"
    Loader.add_implicit_resolver(int_tag, re.compile(integer), list("-+0123456789"))

    def construct_int(loader: yaml.SafeLoader, node: yaml.Node) -> int:
        text = loader.construct_scalar(node).replace("_", "")
        return int(text, 0) if text[:2].lower() in ("0x", "0b") else int(text, 10)

    Loader.add_constructor(int_tag, construct_int)
    return Loader


_LOADER: type | None = None


def read_yaml(text: str) -> Any:
    """Parse YAML text as the configs are read: safe, with YAML 1.2's integers."""
    import yaml

    global _LOADER
    if _LOADER is None:
        _LOADER = _yaml_loader()
    return yaml.load(text, Loader=_LOADER)  # noqa: S506 - a SafeLoader subclass


def parse_override(text: str) -> dict[str, Any]:
    """``a.b=VALUE`` -> ``{"a": {"b": VALUE}}``, VALUE read as YAML (numbers, lists, null).

    (Not OmegaConf's ``from_dotlist``: it reads values with YAML 1.1's integers, so ``010``
    would be eight, and the files and the overrides would read numbers differently.)"""
    import yaml

    if "=" not in text or text.startswith("="):
        raise ConfigError(f"invalid override {text!r}: expected KEY=VALUE, e.g. optim.lr=0.05")
    key, raw = text.split("=", 1)
    try:
        value = read_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        message = " ".join(str(e).split())
        raise ConfigError(f"invalid value in override {text!r}: {message}") from None
    out: dict[str, Any] = {}
    node = out
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def load_train_config(
    preset: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    **values: Any,
) -> TrainConfig:
    """Resolve one frozen ``TrainConfig``: defaults <- YAML preset <- ``values`` <- overrides.

    ``values`` are already-structured entries (``epochs=3``, ``optim={"lr": 0.05}``) such as
    the CLI's explicit flags; ``overrides`` are ``key=value`` strings.
    """
    import yaml

    layers: list[dict[str, Any]] = []
    if preset is not None:
        from pathlib import Path

        path = Path(preset)
        if not path.exists():
            raise ConfigError(f"config file not found: {path}")
        if path.is_dir():
            raise ConfigError(
                f"config {path} is a directory: expected a YAML file, e.g. "
                "configs/fashion_mnist_fast.yaml (to continue a run, use --resume RUN_DIR)"
            )
        try:
            loaded = read_yaml(path.read_text()) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot parse {path}: {' '.join(str(e).split())}") from None
        except OSError as e:
            raise ConfigError(f"cannot read {path}: {e.strerror or e}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"{path} must hold a mapping of config keys, got {type(loaded).__name__}"
            )
        layers.append(loaded)
    layers.append({k: v for k, v in values.items() if v is not None})
    layers += [parse_override(text) for text in overrides]
    return build_config(TrainConfig, *layers)


# --------------------------------------------------------------------------------------
# Every key, for `resnetlab config`.


def describe_type(tp: Any) -> str:
    """A field's type as ``resnetlab config`` lists it: int, list of floats, ... or null."""
    base, nullable = _unwrap_optional(tp)
    if typing.get_origin(base) is tuple:
        args = typing.get_args(base)
        items = {int: "ints", float: "floats", str: "names"}[args[0]]
        name = f"list of {items}" if Ellipsis in args else f"list of {len(args)} {items}"
    elif base is dict or typing.get_origin(base) is dict:
        name = "mapping"
    else:
        name = base.__name__
    return f"{name} or null" if nullable else name


def show_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(show_value(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def allowed_values(f: dataclasses.Field, tp: Any) -> str:
    """What a field of type ``tp`` allows, as its declaration says."""
    if "choices" in f.metadata:
        return ", ".join(f.metadata["choices"])
    base, nullable = _unwrap_optional(tp)
    if base is bool:
        return "true, false" + (", null" if nullable else "")
    return f.metadata.get("allowed", "")


def config_keys(pattern: str = "*") -> list[dict[str, str]]:
    """Every key of a training config (dotted, as overrides and YAML files write them), with
    its type, default and what it allows; ``model_args.*`` are the model's own options.
    ``pattern``: a shell-style filter on the key."""
    import fnmatch

    rows: list[dict[str, str]] = []

    def walk(cls: type, prefix: str) -> None:
        hints = field_types(cls)
        for f in dataclasses.fields(cls):
            section = _section(f)
            if section is not None:
                walk(section, f"{prefix}{f.name}.")
                continue
            if f.name == "model_args":
                rows.append(dict(key="model_args", type="mapping", default="{}",
                                 allowed="the model options below"))  # fmt: skip
                model_types = field_types(ModelConfig)
                for m in dataclasses.fields(ModelConfig):
                    if m.name != "num_classes":
                        tp = model_types[m.name]
                        rows.append(dict(key=f"model_args.{m.name}", type=describe_type(tp),
                                         default="the model's", allowed=allowed_values(m, tp)))  # fmt: skip
                rows.append(dict(key="model_args.depth", type="int", default="the model's",
                                 allowed=MODEL_ARG_DEPTH))  # fmt: skip
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            tp = hints[f.name]
            rows.append(dict(key=prefix + f.name, type=describe_type(tp),
                             default=show_value(default), allowed=allowed_values(f, tp)))  # fmt: skip

    walk(TrainConfig, "")
    return [r for r in rows if fnmatch.fnmatchcase(r["key"], pattern)]
