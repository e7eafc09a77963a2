"""Entry points: ``--data SPEC`` strings, :func:`load_split` and :func:`build_loaders`.

Dataset specs:

* ``fashion-mnist``, ``mnist``, ``cifar10``, ``cifar100``: the built-in datasets
  (:mod:`~resnetlab.data.catalog`), found on disk or downloaded (:mod:`~resnetlab.data.sources`);
  ``:train=N,test=M`` keeps the first N training and M test images.
* ``imagefolder:PATH``: image files in ``PATH/<class>/<image>`` (:mod:`~resnetlab.data.folder`).
* ``synthetic``, ``synthetic:N`` or ``synthetic:classes=10,size=32,channels=3,n=512,test=256,
  seed=0``: generated data (:mod:`~resnetlab.data.synthetic`).

Names are case-insensitive and ``_`` may stand for ``-`` (``Fashion_MNIST``, ``CIFAR-10`` work).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ..config import DataConfig
from ..errors import ConfigError
from . import catalog
from .folder import (
    DEFAULT_IMAGE_SIZE,
    FolderLoader,
    FolderSplits,
    ImageFileDataset,
    Sample,
    decode_into_memory,
    decode_side,
    default_folder_eval_split,
    folder_info,
    folder_splits,
    folder_transforms,
)
from .info import DataInfo
from .loader import AUGMENTS, InMemoryLoader, Loader, check_ranks
from .scan import PIPELINES, FolderPlan, FolderScan, choose_plan, scan_folder_splits
from .sources import load_official_split
from .splits import stratified_split
from .synthetic import SyntheticConfig, make_synthetic, parse_synthetic_options

__all__ = ["SPLITS", "VALID_SPECS", "ParsedSpec", "build_loaders", "load_split", "parse_data_spec"]

#: The dataset specs accepted by :func:`parse_data_spec`, for help texts and error messages.
VALID_SPECS: tuple[str, ...] = (
    "fashion-mnist",
    "mnist",
    "cifar10",
    "cifar100",
    "imagefolder:PATH",
    "synthetic[:N | :classes=10,size=32,channels=3,n=512,test=256,seed=0]",
)
SPLITS: tuple[str, ...] = ("train", "val", "test")

_ALIASES = {"fashionmnist": "fashion-mnist", "cifar-10": "cifar10", "cifar-100": "cifar100"}


@dataclass(frozen=True)
class ParsedSpec:
    """A parsed ``--data`` string: ``kind`` is "builtin", "imagefolder" or "synthetic"."""

    kind: str
    name: str
    path: Path | None = None
    synthetic: SyntheticConfig | None = None
    #: built-in datasets: keep only the first N images of a split ({"train": N, "test": M})
    limit: dict[str, int] | None = None


def _unknown(spec: str, head: str) -> ConfigError:
    names = [*catalog.CATALOG, "imagefolder", "synthetic"]
    close = difflib.get_close_matches(head, names, n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    if Path(spec).expanduser().is_dir():
        hint = f" {spec!r} is a folder: pass it as 'imagefolder:{spec}'."
    return ConfigError(f"unknown dataset {spec!r}; valid datasets: {', '.join(VALID_SPECS)}.{hint}")


def split_spec(spec: str, aliases: dict[str, str]) -> tuple[str, bool, str]:
    """``"CIFAR_10:train=5"`` -> ``("cifar10", True, "train=5")``: the dataset's name (lower
    case, ``_`` read as ``-``, then ``aliases``), whether options follow, and the options."""
    head, sep, rest = spec.strip().partition(":")
    key = head.strip().lower().replace("_", "-")
    return aliases.get(key, key), bool(sep), rest


def parse_data_spec(spec: str) -> ParsedSpec:
    """Parse a ``--data`` string (see the module docstring); ValueError if it is not valid."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(
            f"dataset spec {spec!r} is empty; valid datasets: {', '.join(VALID_SPECS)}"
        )
    key, sep, rest = split_spec(spec, _ALIASES)
    if key == "imagefolder":
        if not rest.strip():
            raise ConfigError(f"dataset spec {spec!r}: give the folder, as imagefolder:PATH")
        return ParsedSpec("imagefolder", "imagefolder", path=Path(rest.strip()).expanduser())
    if key == "synthetic":
        return ParsedSpec("synthetic", "synthetic", synthetic=parse_synthetic_options(rest))
    if key in catalog.CATALOG:
        return ParsedSpec("builtin", key, limit=_parse_limit(spec, key, rest) if sep else None)
    raise _unknown(spec, key)


def _parse_limit(spec: str, key: str, rest: str) -> dict[str, int]:
    """``train=2000,test=500`` -> ``{"train": 2000, "test": 500}``."""
    limit = {}
    for item in filter(None, (i.strip() for i in rest.split(","))):
        name, _, value = item.partition("=")
        if name.strip() not in ("train", "test") or not value.strip().isdigit() or not int(value):
            raise ConfigError(
                f"dataset spec {spec!r}: {key} takes train=N and test=N (the first N images "
                f"of the official split), e.g. {key}:train=2000,test=500; got {item!r}"
            )
        limit[name.strip()] = int(value)
    return limit


def _synthetic_info(config: SyntheticConfig) -> DataInfo:
    return DataInfo(
        name="synthetic",
        num_classes=config.classes,
        class_names=tuple(f"class_{i}" for i in range(config.classes)),
        channels=config.channels,
        image_size=config.size,
        mean=(0.5,) * config.channels,
        std=(0.2,) * config.channels,
    )


def _info(parsed: ParsedSpec) -> DataInfo:
    if parsed.kind == "synthetic":
        assert parsed.synthetic is not None
        return _synthetic_info(parsed.synthetic)
    spec = catalog.CATALOG[parsed.name]
    return DataInfo(
        name=spec.name,
        num_classes=spec.num_classes,
        class_names=spec.class_names,
        channels=spec.channels,
        image_size=spec.image_size,
        mean=spec.mean,
        std=spec.std,
    )


def _official(
    parsed: ParsedSpec, split: str, data_dir: str | Path | None, download: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    if parsed.kind == "synthetic":
        assert parsed.synthetic is not None
        return make_synthetic(parsed.synthetic, split)
    images, labels = load_official_split(parsed.name, split, data_dir=data_dir, download=download)
    n = (parsed.limit or {}).get(split)
    return (images[:n], labels[:n]) if n else (images, labels)


def _check_split(split: str, val_fraction: float, argument: str = "split") -> None:
    if split not in SPLITS:
        raise ConfigError(f"{argument}={split!r}: must be one of {', '.join(SPLITS)}")
    if split == "val" and val_fraction == 0:
        raise ConfigError(
            f"{argument}='val' needs val_fraction > 0 (e.g. 0.1 holds out 10% of the official "
            "training set per class, CIFAR's 45k/5k split)"
        )


def _in_memory_splits(
    parsed: ParsedSpec,
    splits: tuple[str, ...],
    *,
    data_dir: str | Path | None,
    download: bool,
    seed: int,
    val_fraction: float,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    if "test" in splits:
        out["test"] = _official(parsed, "test", data_dir, download)
    if "train" in splits or "val" in splits:
        images, labels = _official(parsed, "train", data_dir, download)
        if val_fraction > 0:
            train_idx, val_idx = stratified_split(labels, val_fraction, seed)
            out["train"] = images[train_idx], labels[train_idx]
            out["val"] = images[val_idx], labels[val_idx]
        else:
            out["train"] = images, labels
    return out


def load_split(
    spec: str,
    split: str,
    *,
    data_dir: str | Path | None = None,
    download: bool = True,
    seed: int = 0,
    val_fraction: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, DataInfo]:
    """Read one split of an in-memory dataset: uint8 images (N, C, H, W), int64 labels, info.

    ``split`` is "train", "val" or "test". With ``val_fraction > 0`` a seeded stratified
    ``val_fraction`` of the official training set is "val" and "train" is the rest; "val"
    without it is an error. ``imagefolder:`` datasets are streamed from disk and not
    supported here: use :func:`build_loaders`.
    """
    parsed = parse_data_spec(spec)
    if parsed.kind == "imagefolder":
        raise ConfigError(
            f"load_split reads in-memory datasets only; {spec!r} is read from image files: "
            "use build_loaders"
        )
    _check_split(split, val_fraction)
    if not isinstance(val_fraction, (int, float)) or not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction={val_fraction!r}: must be in [0, 1)")
    data = _in_memory_splits(
        parsed, (split,), data_dir=data_dir, download=download, seed=seed, val_fraction=val_fraction
    )
    images, labels = data[split]
    return images, labels, _info(parsed)


def _check_arguments(
    data: DataConfig,
    *,
    in_chans: int | None,
    rank: int,
    world_size: int,
    device: str | torch.device,
) -> torch.device:
    """The checks :class:`~resnetlab.config.DataConfig` leaves to build time (choices of
    this module, and the arguments that are not part of the config); the torch device."""
    if not isinstance(data, DataConfig):
        hint = f" (e.g. DataConfig({data!r}))" if isinstance(data, str) else ""
        raise TypeError(f"build_loaders takes a DataConfig{hint}, got {type(data).__name__}")
    if data.augment not in AUGMENTS:
        raise ConfigError(f"augment={data.augment!r}: must be one of {', '.join(AUGMENTS)}")
    if data.pipeline not in PIPELINES:
        raise ConfigError(f"pipeline={data.pipeline!r}: must be one of {', '.join(PIPELINES)}")
    if in_chans not in (None, 1, 3):
        raise ConfigError(f"in_chans={in_chans!r}: must be None, 1 or 3")
    check_ranks(rank, world_size)
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"device={device!r}: not a torch device ({exc})") from None


#: The batch size when none is given, for training sets large enough for it.
DEFAULT_BATCH_SIZE = 128
#: ... else the largest power of two that still gives this many steps per epoch.
MIN_STEPS_PER_EPOCH = 8


# The smallest batch size chosen automatically (an explicit one may be smaller).
MIN_AUTO_BATCH = 8


def fit_batch_size(batch_size: int | None, n: int, world_size: int, spec: str) -> int:
    """``batch_size`` checked against ``n`` training samples, or (None) one chosen for them:
    :data:`DEFAULT_BATCH_SIZE`, or less on a small set so that an epoch has at least
    :data:`MIN_STEPS_PER_EPOCH` steps per rank (240 images: 16, not one step of 128)."""
    per_rank = n // world_size
    if batch_size is None:
        fit = 1 << max(0, (per_rank // MIN_STEPS_PER_EPOCH).bit_length() - 1)
        # never below MIN_AUTO_BATCH where the data allows: BatchNorm's batch statistics
        # and the step's noise get poor at 1-4 images (12 images: 8, not 12 steps of 1)
        fit = max(fit, MIN_AUTO_BATCH)
        return max(1, min(DEFAULT_BATCH_SIZE, fit, per_rank))
    return check_batch_fits(batch_size, n, world_size, spec)


def check_batch_fits(
    batch_size: int, n: int, world_size: int, spec: str, unit: str = "samples"
) -> int:
    """``batch_size``, or a ConfigError when it exceeds each rank's share of ``n``."""
    per_rank = n // world_size
    if batch_size > per_rank:
        where = f" per rank ({n} in all, world_size={world_size})" if world_size > 1 else ""
        raise ConfigError(
            f"batch_size={batch_size} is larger than the training set of {spec!r}: {per_rank} "
            f"{unit}{where}; use batch_size <= {per_rank}, or leave it out to have one chosen"
        )
    return batch_size


@dataclass(frozen=True)
class _Placement:
    """What every loader takes besides the :class:`~resnetlab.config.DataConfig`: the seed
    of its order and augmentation, this rank's share, and where its batches go."""

    seed: int
    rank: int
    world_size: int
    device: torch.device
    channels_last: bool

    def kwargs(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "rank": self.rank,
            "world_size": self.world_size,
            "device": self.device,
            "channels_last": self.channels_last,
        }


def build_loaders(
    data: DataConfig,
    *,
    in_chans: int | None = None,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    device: str | torch.device = "cpu",
    channels_last: bool = False,
    download: bool = True,
    preprocessing: dict | None = None,
) -> tuple[Loader, Loader, DataInfo]:
    """The training loader, the evaluation loader and the :class:`DataInfo` of ``data.spec``.

    ``data`` (a :class:`~resnetlab.config.DataConfig`) says what is read and how.
    ``batch_size`` None chooses one for the training set (:func:`fit_batch_size`; the
    loaders' ``batch_size`` says which). ``eval_split`` None is :func:`default_eval_split`
    ("test", or for an image folder without a test/ folder "val"); the returned info's
    ``eval_split`` names the split the evaluation loader holds. ``augment`` is "none",
    "flip", "crop" or "standard" (crop + flip); ``random_erasing`` the per-sample probability
    of erasing a rectangle. ``image_size`` resizes in-memory data and sets the crop size of
    image folders (default: chosen from the images). ``num_workers``, ``skip_bad_images``,
    ``pipeline`` ("auto", "small": own size, pad + crop + flip; "imagenet":
    RandomResizedCrop at 224) and ``in_memory`` (None: decode small images once into memory
    when they fit ``memory_budget_mb``) only concern image folders
    (:mod:`~resnetlab.data.scan`); in-memory loaders work in the calling process.

    The arguments are what the config does not describe: ``in_chans=3`` feeds grayscale data
    to 3-channel models (channel repeated), and for image folders ``in_chans=1`` decodes as
    grayscale. ``seed`` seeds the order, the augmentation and a held-out val split; ``rank``
    of ``world_size`` takes its share; batches go to ``device`` (in ``channels_last``
    format when asked). ``download`` fetches a built-in dataset that is not on disk.
    ``preprocessing`` (pretrained weights' mean/std/size/interpolation, as in
    :meth:`DataInfo.preprocessing`) only concerns image folders. The returned info's
    ``in_chans`` is the channel count the loaders yield, and for a folder its ``plan`` is
    the one line saying what was chosen.
    """
    dev = _check_arguments(data, in_chans=in_chans, rank=rank, world_size=world_size, device=device)
    placement = _Placement(seed, rank, world_size, dev, channels_last)
    parsed = parse_data_spec(data.spec)
    if parsed.kind == "imagefolder":
        return _build_folder_loaders(parsed, data, in_chans, preprocessing, placement)
    return _build_memory_loaders(parsed, data, in_chans, download, placement)


def _build_memory_loaders(
    parsed: ParsedSpec,
    data: DataConfig,
    in_chans: int | None,
    download: bool,
    placement: _Placement,
) -> tuple[Loader, Loader, DataInfo]:
    """The :class:`InMemoryLoader` pair of a built-in or synthetic dataset."""
    eval_split = data.eval_split or "test"
    _check_split(eval_split, data.val_fraction, "eval_split")
    info = _memory_info(parsed, in_chans, eval_split, data.image_size)
    splits = _in_memory_splits(
        parsed,
        ("train", eval_split),
        data_dir=data.data_dir,
        download=download,
        seed=placement.seed,
        val_fraction=data.val_fraction,
    )
    bs = fit_batch_size(data.batch_size, len(splits["train"][1]), placement.world_size, data.spec)
    hflip, padding = _flip_and_padding(parsed)
    return _memory_loaders(
        splits["train"], splits[eval_split], info, data,
        batch_sizes=(bs, data.eval_batch_size or bs), hflip=hflip, crop_padding=padding,
        in_chans=in_chans, placement=placement,
    )  # fmt: skip


def _memory_info(
    parsed: ParsedSpec, in_chans: int | None, eval_split: str, image_size: int | None
) -> DataInfo:
    """The info of an in-memory dataset read with ``in_chans`` channels at ``image_size``."""
    info = _info(parsed)
    if in_chans not in (None, info.channels) and not (info.channels == 1 and in_chans == 3):
        raise ConfigError(
            f"in_chans={in_chans}: {info.name} has {info.channels} channel(s); "
            f"use {info.channels}" + (" or 3 (gray repeated)" if info.channels == 1 else "")
        )
    info = replace(info, in_chans=in_chans or info.channels, eval_split=eval_split)
    return info if image_size is None else replace(info, image_size=image_size)


def _flip_and_padding(parsed: ParsedSpec) -> tuple[bool, int]:
    """Whether training images may be mirrored, and the zero padding of their random crop."""
    if parsed.kind == "builtin":
        spec = catalog.CATALOG[parsed.name]
        return spec.hflip, spec.crop_padding
    return False, 4  # synthetic: the class patterns are not mirror-symmetric


def _memory_loaders(
    train_data: tuple[torch.Tensor, torch.Tensor],
    eval_data: tuple[torch.Tensor, torch.Tensor],
    info: DataInfo,
    data: DataConfig,
    *,
    batch_sizes: tuple[int, int],
    hflip: bool,
    crop_padding: int,
    in_chans: int | None,
    placement: _Placement,
) -> tuple[Loader, Loader, DataInfo]:
    """The training and evaluation :class:`InMemoryLoader` of two uint8 splits."""
    common = placement.kwargs()
    train = InMemoryLoader(
        *train_data, info, batch_size=batch_sizes[0], train=True, augment=data.augment,
        random_erasing=data.random_erasing, hflip=hflip, crop_padding=crop_padding,
        in_chans=in_chans, **common,
    )  # fmt: skip
    evaluation = InMemoryLoader(
        *eval_data, info, batch_size=batch_sizes[1], train=False, in_chans=in_chans, **common
    )
    return train, evaluation, info


def _channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images on the [0, 1] scale, in chunks."""
    c = images.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    squares = torch.zeros(c, dtype=torch.float64)
    for chunk in images.split(4096):
        x = chunk.to(torch.float64).div_(255.0).transpose(0, 1).reshape(c, -1)
        total += x.sum(1)
        squares += (x * x).sum(1)
    n = images.numel() // c
    mean = total / n
    std = (squares / n - mean * mean).clamp_min(1e-12).sqrt()
    return tuple(round(float(m), 4) for m in mean), tuple(round(float(v), 4) for v in std)


def _build_folder_loaders(
    parsed: ParsedSpec,
    data: DataConfig,
    in_chans: int | None,
    preprocessing: dict | None,
    placement: _Placement,
) -> tuple[Loader, Loader, DataInfo]:
    """The loaders of ``imagefolder:PATH``: its splits are found and scanned, a plan is
    chosen from the scan (:mod:`~resnetlab.data.scan`), then the images are decoded into
    memory once or streamed from their files."""
    root = parsed.path
    assert root is not None
    splits = folder_splits(root, val_fraction=data.val_fraction, seed=placement.seed)
    eval_split = data.eval_split or default_folder_eval_split(root)
    eval_samples = _folder_eval_samples(root, splits, eval_split)
    scan = scan_folder_splits(
        root,
        splits.classes,
        {"train": splits.train, eval_split: eval_samples},
        split_roots=_split_roots(root, splits),
        seed=placement.seed,
        notes=splits.notes,
    )
    prep = preprocessing or {}
    plan = choose_plan(
        scan,
        eval_split=eval_split,
        pipeline=data.pipeline,
        image_size=data.image_size,
        in_chans=in_chans,
        in_memory=data.in_memory,
        memory_budget_mb=data.memory_budget_mb,
        default_size=int(prep.get("image_size") or DEFAULT_IMAGE_SIZE),
    )
    spec = f"imagefolder:{root}"
    bs = fit_batch_size(data.batch_size, len(splits.train), placement.world_size, spec)
    batch_sizes = (bs, data.eval_batch_size or bs)
    info = _folder_info(root, splits.classes, scan, plan, prep, eval_split)
    if plan.in_memory:
        return _folder_in_memory(
            splits.train, eval_samples, info, plan, data, stats=not prep.get("mean"),
            batch_sizes=batch_sizes, placement=placement,
        )  # fmt: skip
    return _folder_streamed(
        splits.train, eval_samples, info, plan, data, batch_sizes=batch_sizes, placement=placement
    )


def _folder_eval_samples(root: Path, splits: FolderSplits, eval_split: str) -> list[Sample]:
    """The samples of the split a folder is evaluated on."""
    if eval_split not in SPLITS:
        raise ConfigError(f"eval_split={eval_split!r}: must be one of {', '.join(SPLITS)}")
    samples = {"train": splits.train, "val": splits.val, "test": splits.test}[eval_split]
    if samples is None:
        raise ConfigError(f"eval_split='test': {root} has no test/ folder; use eval_split='val'")
    return samples


def _split_roots(root: Path, splits: FolderSplits) -> list[Path]:
    """The folders the scan walks: the split folders, or ``root`` when it is split here."""
    if splits.layout != "folders":
        return [root]
    return [root / s for s in SPLITS if (root / s).is_dir()]


def _folder_info(
    root: Path,
    classes: list[str],
    scan: FolderScan,
    plan: FolderPlan,
    prep: dict[str, Any],
    eval_split: str,
) -> DataInfo:
    """The info of a folder read by ``plan``; pretrained weights' preprocessing ``prep``
    (mean, std, resize ratio, interpolation) replaces the folder's own where it fits."""
    info = replace(
        folder_info(root, classes, image_size=plan.image_size, channels=plan.channels),
        in_chans=plan.channels,
        eval_split=eval_split,
        plan=plan.describe(),
        scan=scan.to_dict(),
    )
    if plan.pipeline == "small":
        info = replace(info, resize=plan.image_size)
    if not (prep.get("mean") and len(prep["mean"]) == plan.channels):
        return info
    # Pretrained weights were trained with these statistics (and crop ratio).
    resize = prep.get("resize") or info.resize
    if plan.pipeline == "imagenet" and prep.get("image_size") and resize:
        resize = round(plan.image_size * resize / prep["image_size"])
    elif plan.pipeline == "small":
        resize = info.resize  # the small pipeline resizes to its own size, not the weights'
    return replace(
        info,
        mean=tuple(prep["mean"]),
        std=tuple(prep["std"]),
        resize=resize,
        interpolation=prep.get("interpolation", info.interpolation),
    )


def _folder_streamed(
    train_samples: list[Sample],
    eval_samples: list[Sample],
    info: DataInfo,
    plan: FolderPlan,
    data: DataConfig,
    *,
    batch_sizes: tuple[int, int],
    placement: _Placement,
) -> tuple[Loader, Loader, DataInfo]:
    """Loaders that decode and transform the image files batch by batch."""
    small = plan.pipeline == "small"
    loaders = []
    for name, samples, train, bs in (
        ("train", train_samples, True, batch_sizes[0]),
        (info.eval_split, eval_samples, False, batch_sizes[1]),
    ):
        transform = folder_transforms(
            info, train=train, augment=data.augment, random_erasing=data.random_erasing,
            small=small,
        )  # fmt: skip
        # a training epoch without augmentation (data.plain_final_epochs) sees eval's pipeline
        plain = folder_transforms(info, train=False, small=small) if train else None
        dataset = ImageFileDataset(
            samples,
            transform,
            plain=plain,
            channels=plan.channels,
            skip_bad_images=data.skip_bad_images,
            min_side=decode_side(info, train=train, augment=data.augment, small=small),
        )
        loaders.append(
            FolderLoader(
                dataset,
                info,
                batch_size=bs,
                train=train,
                num_workers=data.num_workers,
                split=name,
                **placement.kwargs(),
            )
        )
    return loaders[0], loaders[1], info


def _folder_in_memory(
    train_samples: list[Sample],
    eval_samples: list[Sample],
    info: DataInfo,
    plan: FolderPlan,
    data: DataConfig,
    *,
    stats: bool,
    batch_sizes: tuple[int, int],
    placement: _Placement,
) -> tuple[Loader, Loader, DataInfo]:
    """Decode both splits once and serve them from the in-memory loader."""
    decoded = [
        decode_into_memory(
            samples,
            image_size=plan.image_size,
            channels=plan.channels,
            skip_bad_images=data.skip_bad_images,
            num_workers=data.num_workers,
            desc=f"decoding {name}",
        )
        for name, samples in (("train", train_samples), (info.eval_split, eval_samples))
    ]
    if stats:  # a folder of its own: normalize with its own statistics
        mean, std = _channel_stats(decoded[0][0])
        info = replace(info, mean=mean, std=std)
    return _memory_loaders(
        decoded[0], decoded[1], info, data, batch_sizes=batch_sizes, hflip=True,
        crop_padding=max(1, plan.image_size // 8), in_chans=None, placement=placement,
    )  # fmt: skip


def default_eval_split(spec: str) -> str:
    """The split :func:`build_loaders` evaluates on when ``eval_split`` is not given.

    "test" for the built-in and synthetic datasets; for ``imagefolder:PATH``,
    :func:`~resnetlab.data.folder.default_folder_eval_split`: "test" when ``PATH`` has
    train/, val/ and test/ folders, else "val". The loaders' info says the same in
    ``info.eval_split``, for the split they were actually built with.
    """
    parsed = parse_data_spec(spec)
    if parsed.kind != "imagefolder":
        return "test"
    assert parsed.path is not None
    return default_folder_eval_split(parsed.path)
