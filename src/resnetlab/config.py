"""Frozen, validated configuration objects.

Every object here is a frozen dataclass validated at construction: a bad value raises a
``ConfigError`` (a ``ValueError``) that names the field, echoes the value and says what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

BLOCKS = ("basic", "bottleneck", "preact_basic", "preact_bottleneck")
STEMS = ("imagenet", "cifar", "cifar_pool")
SHORTCUTS = ("A", "B", "C", "none")
STRIDE_ON = ("3x3", "1x1")


def _fail(field: str, value: Any, allowed: str) -> None:
    raise ConfigError(f"invalid {field}={value!r}: {allowed}")


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


# --------------------------------------------------------------------------------------
# Training configuration: nested frozen dataclasses, read from YAML presets plus
# ``key=value`` overrides (dotted keys for nested sections: ``optim.lr=0.05``).

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("multistep", "cosine", "onecycle", "constant")
MILESTONE_UNITS = ("epoch", "iter")


@dataclass(frozen=True)
class DataConfig:
    spec: str = "fashion-mnist"
    data_dir: str | None = None
    # None: 128, or less on a small training set (at least 8 steps per epoch)
    batch_size: int | None = None
    eval_batch_size: int | None = None
    augment: str = "standard"
    random_erasing: float = 0.0
    num_workers: int = 2
    val_fraction: float = 0.0
    eval_split: str | None = None
    skip_bad_images: bool = False
    # None: chosen from the data (image folders: the images' own size when small, else 224)
    image_size: int | None = None
    # Image folders: "auto" (small images: own size, pad + crop + flip; else the ImageNet
    # pipeline), "small" or "imagenet"; in_memory None decodes small images once into memory
    # when train + eval fit memory_budget_mb.
    pipeline: str = "auto"
    in_memory: bool | None = None
    memory_budget_mb: float = 2048.0

    def __post_init__(self) -> None:
        if not self.memory_budget_mb >= 0:
            _fail("data.memory_budget_mb", self.memory_budget_mb, "expected a size in MB >= 0")
        if self.batch_size is not None and self.batch_size < 1:
            _fail("data.batch_size", self.batch_size, "expected an integer >= 1 or null (chosen)")
        if self.eval_batch_size is not None and self.eval_batch_size < 1:
            _fail("data.eval_batch_size", self.eval_batch_size, "expected an integer >= 1")
        if not 0.0 <= self.random_erasing <= 1.0:
            _fail("data.random_erasing", self.random_erasing, "expected a probability in [0, 1]")
        if not 0.0 <= self.val_fraction < 1.0:
            _fail("data.val_fraction", self.val_fraction, "expected a fraction in [0, 1)")
        if self.num_workers < 0:
            _fail("data.num_workers", self.num_workers, "expected an integer >= 0")
        if self.image_size is not None and self.image_size < 1:
            _fail("data.image_size", self.image_size, "expected an integer >= 1 or null")


@dataclass(frozen=True)
class OptimConfig:
    name: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    # Exclude BN parameters and biases from weight decay (the usual "no-decay groups").
    no_decay_norm_bias: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 0.0

    def __post_init__(self) -> None:
        _check_choice("optim.name", self.name, OPTIMIZERS)
        if not self.lr > 0:
            _fail("optim.lr", self.lr, "expected a learning rate > 0")
        if not 0.0 <= self.momentum < 1.0:
            _fail("optim.momentum", self.momentum, "expected a value in [0, 1)")
        if self.weight_decay < 0:
            _fail("optim.weight_decay", self.weight_decay, "expected a value >= 0")
        if self.grad_clip < 0:
            _fail("optim.grad_clip", self.grad_clip, "expected a max norm >= 0 (0: off)")
        if self.nesterov and self.momentum == 0:
            _fail("optim.nesterov", self.nesterov, "Nesterov momentum needs optim.momentum > 0")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            _fail("optim.betas", self.betas, "expected two values in [0, 1), e.g. [0.9, 0.999]")


@dataclass(frozen=True)
class ScheduleConfig:
    name: str = "cosine"
    # multistep: lr x gamma at each milestone, counted in epochs or iterations
    # (the ResNet paper: 32k and 48k of 64k iterations).
    milestones: tuple[float, ...] = ()
    milestone_unit: str = "epoch"
    gamma: float = 0.1
    # Linear warm-up from warmup_factor * lr over warmup_epochs (fractions allowed).
    warmup_epochs: float = 0.0
    warmup_factor: float = 0.1
    # Constant low-lr warm-up (the ResNet paper's lr 0.01 for ResNet-110 until ~400 iters).
    constant_warmup_iters: int = 0
    constant_warmup_factor: float = 0.1
    # one-cycle: peak at pct_start of training, start at lr/div_factor, end at lr/final_div
    pct_start: float = 0.25
    div_factor: float = 25.0
    final_div_factor: float = 1e4
    min_lr_factor: float = 0.0

    def __post_init__(self) -> None:
        _check_choice("schedule.name", self.name, SCHEDULES)
        _check_choice("schedule.milestone_unit", self.milestone_unit, MILESTONE_UNITS)
        if list(self.milestones) != sorted(self.milestones) or any(m <= 0 for m in self.milestones):
            _fail("schedule.milestones", self.milestones, "expected increasing positive values")
        if not 0 < self.gamma <= 1:
            _fail("schedule.gamma", self.gamma, "expected a factor in (0, 1]")
        if self.warmup_epochs < 0 or self.constant_warmup_iters < 0:
            _fail("schedule.warmup", self.warmup_epochs, "expected warm-up lengths >= 0")
        if not 0 < self.pct_start < 1:
            _fail("schedule.pct_start", self.pct_start, "expected a fraction in (0, 1)")
        for name in ("warmup_factor", "constant_warmup_factor", "min_lr_factor"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                _fail(f"schedule.{name}", getattr(self, name), "expected a factor in [0, 1]")
        for name in ("div_factor", "final_div_factor"):
            if not getattr(self, name) > 0:
                _fail(f"schedule.{name}", getattr(self, name), "expected a factor > 0")


@dataclass(frozen=True)
class FinetuneConfig:
    """How pretrained weights (``TrainConfig.weights``) are fine-tuned.

    ``freeze``: none, stem, stageN (the stem and stages 1..N) or backbone (all but the
    head). ``backbone_lr_scale`` multiplies the lr of everything but the head.
    ``head_epochs``: train the head alone for the first epochs. ``freeze_bn``: keep every
    BatchNorm's running statistics as pretrained (tiny datasets).
    """

    freeze: str = "none"
    backbone_lr_scale: float = 1.0
    head_epochs: int = 0
    freeze_bn: bool = False

    def __post_init__(self) -> None:
        if not re.fullmatch(r"none|stem|backbone|stage[1-9]\d*", self.freeze):
            _fail(
                "finetune.freeze",
                self.freeze,
                "expected none, stem, stage1, stage2, ... or backbone",
            )
        if not self.backbone_lr_scale >= 0:
            _fail("finetune.backbone_lr_scale", self.backbone_lr_scale, "expected a factor >= 0")
        if self.head_epochs < 0:
            _fail("finetune.head_epochs", self.head_epochs, "expected an integer >= 0")


@dataclass(frozen=True)
class TrainConfig:
    model: str = "resnet20"
    model_args: dict = dataclasses.field(default_factory=dict)
    # Pretrained weights to start from: a file, a run directory, or a named weight such as
    # torchvision:resnet50.IMAGENET1K_V2 (see `resnetlab weights`).
    weights: str | None = None
    finetune: FinetuneConfig = dataclasses.field(default_factory=FinetuneConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    schedule: ScheduleConfig = dataclasses.field(default_factory=ScheduleConfig)
    epochs: int = 10
    # Stop after this many iterations in all (the ResNet paper's 64k); None: epochs decide.
    max_iters: int | None = None
    seed: int = 0
    label_smoothing: float = 0.0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    ema_decay: float = 0.0
    precision: str = "auto"
    channels_last: bool = True
    compile: bool = False
    device: str = "auto"
    output: str = "runs/default"
    save_every_steps: int = 0
    keep_last: int = 3
    eval_every: int = 1
    tta_flip: bool = False
    threads: int | None = None
    # Distributed (torchrun): batch statistics over all ranks, and how long a collective
    # may wait for a missing rank before the job fails.
    sync_bn: bool = False
    dist_timeout_s: float = 300.0

    def __post_init__(self) -> None:
        _check_choice("precision", self.precision, PRECISIONS)
        if self.epochs < 1:
            _fail("epochs", self.epochs, "expected an integer >= 1")
        if self.max_iters is not None and self.max_iters < 1:
            _fail("max_iters", self.max_iters, "expected an integer >= 1 or null")
        if not 0.0 <= self.label_smoothing < 1.0:
            _fail("label_smoothing", self.label_smoothing, "expected a value in [0, 1)")
        for name in ("mixup_alpha", "cutmix_alpha"):
            if getattr(self, name) < 0:
                _fail(name, getattr(self, name), "expected a Beta parameter >= 0 (0: off)")
        if not 0.0 <= self.ema_decay < 1.0:
            _fail("ema_decay", self.ema_decay, "expected a decay in [0, 1) (0: no EMA)")
        for name in ("save_every_steps", "eval_every"):
            if getattr(self, name) < 0:
                _fail(name, getattr(self, name), "expected an integer >= 0")
        if self.keep_last < 1:
            _fail("keep_last", self.keep_last, "expected an integer >= 1")
        if not 0 <= self.seed < 2**63:
            _fail("seed", self.seed, "expected an integer in [0, 2**63)")
        if self.threads is not None and self.threads < 1:
            _fail("threads", self.threads, "expected an integer >= 1 or null (all cores)")
        if not isinstance(self.model_args, dict) or not all(
            isinstance(k, str) for k in self.model_args
        ):
            _fail("model_args", self.model_args, "expected a mapping of model option names")

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


def _coerce(path: str, value: Any, annotation: str) -> Any:
    """Check one YAML/override value against its field's annotation, converting gently."""
    ann = annotation.replace(" ", "")
    if value is None:
        if "None" in ann:
            return None
        _fail(path, value, f"expected a value of type {annotation}, not null")
    base = ann.replace("|None", "")
    if base == "bool":
        if isinstance(value, bool):
            return value
        _fail(path, value, "expected true or false")
    if base == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        _fail(path, value, "expected an integer")
    if base == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not _finite(value):
                _fail(path, value, "expected a finite number")
            return float(value)
        _fail(path, value, "expected a number")
    if base == "str":
        if isinstance(value, str):
            return value
        _fail(path, value, "expected a string")
    if base.startswith("tuple"):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and _finite(v) for v in value
        ):
            _fail(path, value, "expected a list of finite numbers")
        return tuple(value)
    if base == "dict":
        if isinstance(value, dict):
            return value
        _fail(path, value, "expected a mapping")
    return value


def build_dataclass(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Construct a (nested) config dataclass from plain data, naming any bad key."""
    if not isinstance(data, dict):
        _fail(prefix.rstrip(".") or "config", data, "expected a mapping of keys to values")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {', '.join(prefix + k for k in unknown)}: allowed "
            f"{'in ' + prefix.rstrip('.') if prefix else 'at the top level'} are "
            f"{', '.join(sorted(fields))}"
        )
    kwargs = {}
    for key, value in data.items():
        f = fields[key]
        if dataclasses.is_dataclass(f.default_factory if callable(f.default_factory) else None):
            kwargs[key] = build_dataclass(f.default_factory, value, f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(prefix + key, value, str(f.type))
    return cls(**kwargs)


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(text: str) -> dict[str, Any]:
    """``a.b=VALUE`` -> ``{"a": {"b": VALUE}}``, VALUE read as YAML (numbers, lists, null)."""
    import yaml

    if "=" not in text or text.startswith("="):
        raise ConfigError(f"invalid override {text!r}: expected KEY=VALUE, e.g. optim.lr=0.05")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"invalid value in override {text!r}: {e}") from None
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

    data: dict[str, Any] = {}
    if preset is not None:
        from pathlib import Path

        path = Path(preset)
        if not path.exists():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot parse {path}: {e}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"{path} must hold a mapping of config keys, got {type(loaded).__name__}"
            )
        data = _merge(data, loaded)
    data = _merge(data, {k: v for k, v in values.items() if v is not None})
    for text in overrides:
        data = _merge(data, parse_override(text))
    return build_dataclass(TrainConfig, data)
