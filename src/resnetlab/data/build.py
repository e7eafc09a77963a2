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

import torch

from ..errors import ConfigError
from . import catalog
from .folder import (
    DEFAULT_IMAGE_SIZE,
    FolderLoader,
    ImageFileDataset,
    decode_into_memory,
    decode_side,
    default_folder_eval_split,
    folder_info,
    folder_splits,
    folder_transforms,
)
from .info import DataInfo
from .loader import AUGMENTS, InMemoryLoader, Loader
from .scan import PIPELINES, FolderPlan, choose_plan, scan_folder_splits
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
    return ConfigError(f"unknown dataset {spec!r}; valid datasets: {', '.join(VALID_SPECS)}.{hint}")


def parse_data_spec(spec: str) -> ParsedSpec:
    """Parse a ``--data`` string (see the module docstring); ValueError if it is not valid."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(
            f"dataset spec {spec!r} is empty; valid datasets: {', '.join(VALID_SPECS)}"
        )
    head, sep, rest = spec.strip().partition(":")
    key = head.strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
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
    if not isinstance(val_fraction, (int, float)) or not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction={val_fraction!r}: must be in [0, 1)")
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
    data = _in_memory_splits(
        parsed, (split,), data_dir=data_dir, download=download, seed=seed, val_fraction=val_fraction
    )
    images, labels = data[split]
    return images, labels, _info(parsed)


def check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name}={value!r}: must be a positive integer")


def _validate(
    *,
    batch_size: int | None,
    eval_batch_size: int | None,
    augment: str,
    random_erasing: float,
    in_chans: int | None,
    num_workers: int,
    rank: int,
    world_size: int,
    image_size: int | None,
    pipeline: str,
    device: str | torch.device,
) -> torch.device:
    if batch_size is not None:
        check_positive_int("batch_size", batch_size)
    if eval_batch_size is not None:
        check_positive_int("eval_batch_size", eval_batch_size)
    if augment not in AUGMENTS:
        raise ConfigError(f"augment={augment!r}: must be one of {', '.join(AUGMENTS)}")
    if pipeline not in PIPELINES:
        raise ConfigError(f"pipeline={pipeline!r}: must be one of {', '.join(PIPELINES)}")
    if not isinstance(random_erasing, (int, float)) or not 0.0 <= random_erasing <= 1.0:
        raise ConfigError(f"random_erasing={random_erasing!r}: must be a probability in [0, 1]")
    if in_chans not in (None, 1, 3):
        raise ConfigError(f"in_chans={in_chans!r}: must be None, 1 or 3")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ConfigError(f"num_workers={num_workers!r}: must be an integer >= 0")
    check_positive_int("world_size", world_size)
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ConfigError(
            f"rank={rank!r}: must be in 0..{world_size - 1} (world_size={world_size})"
        )
    if image_size is not None:
        check_positive_int("image_size", image_size)
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


def build_loaders(
    spec: str,
    *,
    data_dir: str | Path | None = None,
    batch_size: int | None = None,
    eval_batch_size: int | None = None,
    eval_split: str | None = None,
    augment: str = "standard",
    random_erasing: float = 0.0,
    in_chans: int | None = None,
    seed: int = 0,
    num_workers: int = 2,
    rank: int = 0,
    world_size: int = 1,
    device: str | torch.device = "cpu",
    channels_last: bool = False,
    download: bool = True,
    val_fraction: float = 0.0,
    skip_bad_images: bool = False,
    image_size: int | None = None,
    pipeline: str = "auto",
    in_memory: bool | None = None,
    memory_budget_mb: float = 2048,
    preprocessing: dict | None = None,
) -> tuple[Loader, Loader, DataInfo]:
    """The training loader, the evaluation loader and the :class:`DataInfo` of ``spec``.

    ``batch_size`` None chooses one for the training set (:func:`fit_batch_size`; the
    loaders' ``batch_size`` says which). ``eval_split`` defaults to :func:`default_eval_split`
    ("test", or for an image folder without a test/ folder "val"); the returned info's
    ``eval_split`` names the split the evaluation loader holds. ``augment`` is "none", "flip",
    "crop" or "standard" (crop + flip); ``random_erasing`` the per-sample probability of
    erasing a rectangle.
    ``in_chans=3`` feeds grayscale data to 3-channel models (channel repeated); for image
    folders ``in_chans=1`` decodes as grayscale. ``image_size`` resizes in-memory data and
    sets the crop size of image folders (default: chosen from the images).
    ``num_workers``, ``skip_bad_images``, ``pipeline`` ("auto", "small": own size, pad +
    crop + flip; "imagenet": RandomResizedCrop at 224), ``in_memory`` (None: decode small
    images once into memory when they fit ``memory_budget_mb``) and ``preprocessing``
    (pretrained weights' mean/std/size/interpolation, as in
    :meth:`DataInfo.preprocessing`) only concern image folders
    (:mod:`~resnetlab.data.scan`); in-memory loaders work in the calling process. The
    returned info's ``in_chans`` is the channel count the loaders yield, and for a folder its
    ``plan`` is the one line saying what was chosen.
    """
    dev = _validate(
        batch_size=batch_size,
        eval_batch_size=eval_batch_size,
        augment=augment,
        random_erasing=random_erasing,
        in_chans=in_chans,
        num_workers=num_workers,
        rank=rank,
        world_size=world_size,
        image_size=image_size,
        pipeline=pipeline,
        device=device,
    )
    parsed = parse_data_spec(spec)
    if parsed.kind == "imagefolder":
        return _build_folder_loaders(
            parsed,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            eval_split=eval_split,
            augment=augment,
            random_erasing=random_erasing,
            in_chans=in_chans,
            num_workers=num_workers,
            channels_last=channels_last,
            val_fraction=val_fraction,
            skip_bad_images=skip_bad_images,
            image_size=image_size,
            pipeline=pipeline,
            in_memory=in_memory,
            memory_budget_mb=memory_budget_mb,
            preprocessing=preprocessing,
            seed=seed,
            rank=rank,
            world_size=world_size,
            device=dev,
        )
    eval_split = eval_split or "test"
    _check_split(eval_split, val_fraction, "eval_split")
    info = _info(parsed)
    if in_chans not in (None, info.channels) and not (info.channels == 1 and in_chans == 3):
        raise ConfigError(
            f"in_chans={in_chans}: {info.name} has {info.channels} channel(s); "
            f"use {info.channels}" + (" or 3 (gray repeated)" if info.channels == 1 else "")
        )
    info = replace(info, in_chans=in_chans or info.channels, eval_split=eval_split)
    data = _in_memory_splits(
        parsed,
        ("train", eval_split),
        data_dir=data_dir,
        download=download,
        seed=seed,
        val_fraction=val_fraction,
    )
    if image_size is not None:
        info = replace(info, image_size=image_size)
    batch_size = fit_batch_size(batch_size, len(data["train"][1]), world_size, spec)
    eval_bs = eval_batch_size or batch_size
    hflip, padding = True, 4
    if parsed.kind == "builtin":
        hflip = catalog.CATALOG[parsed.name].hflip
        padding = catalog.CATALOG[parsed.name].crop_padding
    elif parsed.kind == "synthetic":
        hflip = False  # the class patterns are not mirror-symmetric
    return _memory_loaders(
        data["train"], data[eval_split], info, batch_size=batch_size, eval_batch_size=eval_bs,
        augment=augment, random_erasing=random_erasing, hflip=hflip, crop_padding=padding,
        in_chans=in_chans, channels_last=channels_last, seed=seed, rank=rank,
        world_size=world_size, device=dev,
    )  # fmt: skip


def _memory_loaders(
    train_data: tuple[torch.Tensor, torch.Tensor],
    eval_data: tuple[torch.Tensor, torch.Tensor],
    info: DataInfo,
    *,
    batch_size: int,
    eval_batch_size: int,
    augment: str,
    random_erasing: float,
    hflip: bool,
    crop_padding: int,
    in_chans: int | None,
    **common: object,
) -> tuple[Loader, Loader, DataInfo]:
    """The training and evaluation :class:`InMemoryLoader` of two uint8 splits.

    ``common``: ``channels_last``, ``seed``, ``rank``, ``world_size``, ``device``.
    """
    train = InMemoryLoader(
        *train_data, info, batch_size=batch_size, train=True, augment=augment,
        random_erasing=random_erasing, hflip=hflip, crop_padding=crop_padding,
        in_chans=in_chans, **common,
    )  # fmt: skip
    evaluation = InMemoryLoader(
        *eval_data, info, batch_size=eval_batch_size, train=False, in_chans=in_chans, **common
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
    *,
    batch_size: int | None,
    eval_batch_size: int | None,
    eval_split: str | None,
    augment: str,
    random_erasing: float,
    in_chans: int | None,
    num_workers: int,
    channels_last: bool,
    val_fraction: float,
    skip_bad_images: bool,
    image_size: int | None,
    pipeline: str,
    in_memory: bool | None,
    memory_budget_mb: float,
    preprocessing: dict | None,
    seed: int,
    rank: int,
    world_size: int,
    device: torch.device,
) -> tuple[Loader, Loader, DataInfo]:
    assert parsed.path is not None
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction={val_fraction!r}: must be in [0, 1)")
    splits = folder_splits(parsed.path, val_fraction=val_fraction, seed=seed)
    eval_split = eval_split or default_folder_eval_split(parsed.path)
    if eval_split not in SPLITS:
        raise ConfigError(f"eval_split={eval_split!r}: must be one of {', '.join(SPLITS)}")
    eval_samples = {"train": splits.train, "val": splits.val, "test": splits.test}[eval_split]
    if eval_samples is None:
        raise ConfigError(
            f"eval_split='test': {parsed.path} has no test/ folder; use eval_split='val'"
        )
    roots = [parsed.path / s for s in ("train", "val", "test") if (parsed.path / s).is_dir()]
    scan = scan_folder_splits(
        parsed.path,
        splits.classes,
        {"train": splits.train, eval_split: eval_samples},
        split_roots=roots if splits.layout == "folders" else [parsed.path],
        seed=seed,
        notes=splits.notes,
    )
    prep = preprocessing or {}
    plan = choose_plan(
        scan,
        eval_split=eval_split,
        pipeline=pipeline,
        image_size=image_size,
        in_chans=in_chans,
        in_memory=in_memory,
        memory_budget_mb=memory_budget_mb,
        default_size=int(prep.get("image_size") or DEFAULT_IMAGE_SIZE),
    )
    channels = plan.channels
    spec = f"imagefolder:{parsed.path}"
    batch_size = fit_batch_size(batch_size, len(splits.train), world_size, spec)
    eval_batch_size = eval_batch_size or batch_size
    info = replace(
        folder_info(parsed.path, splits.classes, image_size=plan.image_size, channels=channels),
        in_chans=channels,
        eval_split=eval_split,
        plan=plan.describe(),
        scan=scan.to_dict(),
    )
    if plan.pipeline == "small":
        info = replace(info, resize=plan.image_size)
    if prep.get("mean") and len(prep["mean"]) == channels:
        # Pretrained weights were trained with these statistics (and crop ratio).
        resize = prep.get("resize") or info.resize
        if plan.pipeline == "imagenet" and prep.get("image_size") and resize:
            resize = round(plan.image_size * resize / prep["image_size"])
        info = replace(
            info,
            mean=tuple(prep["mean"]),
            std=tuple(prep["std"]),
            resize=resize,
            interpolation=prep.get("interpolation", info.interpolation),
        )
    if plan.in_memory:
        return _folder_in_memory(
            splits.train, eval_samples, info, plan, stats=not prep.get("mean"),
            batch_size=batch_size, eval_batch_size=eval_batch_size, augment=augment,
            random_erasing=random_erasing, num_workers=num_workers,
            channels_last=channels_last, skip_bad_images=skip_bad_images, seed=seed,
            rank=rank, world_size=world_size, device=device,
        )  # fmt: skip
    loaders = []
    small = plan.pipeline == "small"
    for name, samples, train, bs in (
        ("train", splits.train, True, batch_size),
        (eval_split, eval_samples, False, eval_batch_size),
    ):
        transform = folder_transforms(
            info, train=train, augment=augment, random_erasing=random_erasing, small=small
        )
        dataset = ImageFileDataset(
            samples,
            transform,
            channels=channels,
            skip_bad_images=skip_bad_images,
            min_side=decode_side(info, train=train, augment=augment, small=small),
        )
        loaders.append(
            FolderLoader(
                dataset,
                info,
                batch_size=bs,
                train=train,
                seed=seed,
                rank=rank,
                world_size=world_size,
                num_workers=num_workers,
                device=device,
                channels_last=channels_last,
                split=name,
            )
        )
    return loaders[0], loaders[1], info


def _folder_in_memory(
    train_samples: list,
    eval_samples: list,
    info: DataInfo,
    plan: FolderPlan,
    *,
    stats: bool,
    batch_size: int,
    eval_batch_size: int,
    augment: str,
    random_erasing: float,
    num_workers: int,
    channels_last: bool,
    skip_bad_images: bool,
    seed: int,
    rank: int,
    world_size: int,
    device: torch.device,
) -> tuple[Loader, Loader, DataInfo]:
    """Decode both splits once and serve them from the in-memory loader."""
    decoded = [
        decode_into_memory(
            samples,
            image_size=plan.image_size,
            channels=plan.channels,
            skip_bad_images=skip_bad_images,
            num_workers=num_workers,
            desc=f"decoding {name}",
        )
        for name, samples in (("train", train_samples), (info.eval_split, eval_samples))
    ]
    if stats:  # a folder of its own: normalize with its own statistics
        mean, std = _channel_stats(decoded[0][0])
        info = replace(info, mean=mean, std=std)
    return _memory_loaders(
        decoded[0], decoded[1], info, batch_size=batch_size, eval_batch_size=eval_batch_size,
        augment=augment, random_erasing=random_erasing, hflip=True,
        crop_padding=max(1, plan.image_size // 8), in_chans=None, channels_last=channels_last,
        seed=seed, rank=rank, world_size=world_size, device=device,
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
