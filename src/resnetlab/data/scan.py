"""Looking at an image folder before reading it, and choosing how to read it.

:func:`scan_folder_splits` reads image headers only (Pillow's ``Image.open`` parses the header
and decodes nothing until pixels are asked for), on at most ``sample_limit`` files per split
(a seeded sample on a huge folder): sizes, modes, unreadable files; class counts and
non-image files are counted on every file. :func:`choose_plan` turns the scan into a
:class:`FolderPlan`: small images (up to :data:`SMALL_IMAGE_MAX_SIDE` px) get their own size
and the CIFAR-style pipeline (pad + random crop, flip), decoded once into the in-memory
loader when they fit ``memory_budget_mb``; larger images keep the ImageNet pipeline at 224
(or the size pretrained weights ask for). :meth:`FolderPlan.describe` is the one line that
says what was chosen and why.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from ..errors import ConfigError
from .errors import DataError
from .files import walk_files

__all__ = [
    "PIPELINES",
    "SMALL_IMAGE_MAX_SIDE",
    "FolderPlan",
    "FolderScan",
    "choose_plan",
    "scan_folder_splits",
]

#: Accepted values of ``data.pipeline``.
PIPELINES: tuple[str, ...] = ("auto", "small", "imagenet")
#: Images whose typical longer side is at most this get the small-image pipeline.
SMALL_IMAGE_MAX_SIDE = 64
#: Headers read per split; beyond it a seeded sample stands for the split.
DEFAULT_SAMPLE_LIMIT = 2000
#: Pillow modes that hold one grey channel.
GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
# A class this many times larger than the smallest is worth a warning.
IMBALANCE_RATIO = 3.0
# Fewer training images than this in a class is worth a warning.
FEW_IMAGES = 5
_SIZE_BINS = (16, 32, 64, 128, 256, 512, 1024, 2048)


def _size_bin(side: int) -> str:
    for edge in _SIZE_BINS:
        if side <= edge:
            return f"<={edge}"
    return f">{_SIZE_BINS[-1]}"


@dataclass
class FolderScan:
    """What a header scan of an image folder found (JSON-able with :meth:`to_dict`)."""

    root: str
    classes: list[str]
    #: split -> class name -> number of images
    counts: dict[str, dict[str, int]]
    #: headers actually read (all files, or a sample)
    sampled: int = 0
    #: (width, height) -> how many sampled images have it (the 20 most common)
    sizes: dict[str, int] = field(default_factory=dict)
    #: longer side binned ("<=32", "<=64", ...) -> count, over the sample
    size_histogram: dict[str, int] = field(default_factory=dict)
    modes: dict[str, int] = field(default_factory=dict)
    min_side: int = 0
    max_side: int = 0
    #: the median longer side of the sample
    median_side: int = 0
    #: the most common (width, height) of the sample
    common_size: tuple[int, int] = (0, 0)
    #: files with an image extension whose header could not be read: [path, reason]
    unreadable: list[list[str]] = field(default_factory=list)
    #: files without an image extension, left out: how many, and a few examples
    non_images: int = 0
    non_image_examples: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def gray(self) -> bool:
        """True when every sampled image holds one grey channel."""
        return bool(self.modes) and all(m in GRAY_MODES for m in self.modes)

    def total(self, split: str) -> int:
        return sum(self.counts.get(split, {}).values())

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["common_size"] = list(self.common_size)
        out["gray"] = self.gray
        return out


def _read_header(path: str) -> tuple[tuple[int, int], str]:
    with Image.open(path) as im:
        return im.size, im.mode


def _non_images(root: Path) -> tuple[int, list[str]]:
    """Files without an image extension in ``root``'s class folders (files beside the class
    folders are not samples), listed as the folder dataset lists them."""
    count, examples = 0, []
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        others = walk_files(entry.path).others
        count += len(others)
        examples += others[: 3 - len(examples)]
    return count, examples


def scan_folder_splits(
    root: str | Path,
    classes: list[str],
    splits: dict[str, list[tuple[str, int]]],
    *,
    split_roots: list[Path],
    sample_limit: int = DEFAULT_SAMPLE_LIMIT,
    seed: int = 0,
    notes: Sequence[str] = (),
) -> FolderScan:
    """Scan the samples of each split (``{"train": [(path, label), ...], ...}``).

    ``split_roots`` are the folders holding the class folders (``root`` itself, or
    ``root/train`` and ``root/val``): their files without an image extension are counted.
    ``notes``: warnings found while listing the files (links not followed, files met
    twice), added to the scan's warnings.
    """
    tallies = {name: Counter(label for _, label in samples) for name, samples in splits.items()}
    counts = {name: {c: tally[i] for i, c in enumerate(classes)} for name, tally in tallies.items()}
    scan = FolderScan(root=str(root), classes=list(classes), counts=counts)
    rng = random.Random(seed)
    sizes: Counter[tuple[int, int]] = Counter()
    modes: Counter[str] = Counter()
    sides: list[int] = []
    for samples in splits.values():
        chosen = samples if len(samples) <= sample_limit else rng.sample(samples, sample_limit)
        for path, _ in chosen:
            try:
                size, mode = _read_header(path)
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
                reason = (
                    "not an image Pillow can read"
                    if isinstance(exc, UnidentifiedImageError)
                    else f"unreadable header ({exc})"
                )
                scan.unreadable.append([path, reason])
                continue
            except Image.DecompressionBombError as exc:
                scan.unreadable.append([path, f"refused as a decompression bomb ({exc})"])
                continue
            sizes[size] += 1
            modes[mode] += 1
            sides.append(max(size))
    scan.sampled = len(sides)
    if sides:
        sides.sort()
        scan.min_side, scan.max_side = sides[0], sides[-1]
        scan.median_side = sides[len(sides) // 2]
        scan.common_size = sizes.most_common(1)[0][0]
        scan.sizes = {f"{w}x{h}": n for (w, h), n in sizes.most_common(20)}
        scan.size_histogram = dict(Counter(_size_bin(s) for s in sides))
    scan.modes = dict(modes.most_common())
    for split_root in split_roots:
        n, examples = _non_images(Path(split_root))
        scan.non_images += n
        scan.non_image_examples += examples[: 3 - len(scan.non_image_examples)]
    scan.warnings = [*notes, *_warnings(scan)]
    return scan


def _warnings(scan: FolderScan) -> list[str]:
    out = []
    train = scan.counts.get("train", {})
    empty = [c for c, n in train.items() if n == 0]
    if empty:
        out.append(f"class(es) with no training image: {', '.join(empty)}")
    tiny = [f"{c!r} ({n})" for c, n in train.items() if 0 < n < FEW_IMAGES]
    if tiny:
        out.append(
            f"class(es) with fewer than {FEW_IMAGES} training images: {', '.join(tiny)}; "
            "their accuracy will be a guess: add images"
        )
    present = [n for n in train.values() if n > 0]
    if present and max(present) > IMBALANCE_RATIO * min(present):
        big = max(train, key=train.__getitem__)
        small = min((c for c in train if train[c] > 0), key=train.__getitem__)
        out.append(
            f"classes are imbalanced: {big!r} has {train[big]} training images, {small!r} "
            f"{train[small]} ({train[big] / train[small]:.1f}x); accuracy favours the large "
            "classes (see the per-class accuracy)"
        )
    if scan.max_side > 4 * max(scan.min_side, 1):
        out.append(
            f"image sizes vary from {scan.min_side} to {scan.max_side} px (longer side): all "
            "are resized to one size"
        )
    if scan.unreadable:
        out.append(f"{len(scan.unreadable)} unreadable file(s), e.g. {scan.unreadable[0][0]}")
    if scan.non_images:
        out.append(
            f"{scan.non_images} file(s) without an image extension left out, e.g. "
            f"{scan.non_image_examples[0]}"
        )
    return out


@dataclass(frozen=True)
class FolderPlan:
    """How an image folder will be read: pipeline, size, channels, in memory or streamed."""

    pipeline: str  # "small" or "imagenet"
    image_size: int
    channels: int
    in_memory: bool
    #: bytes of the uint8 tensors when held in memory (train + eval)
    memory_bytes: int
    reason: str
    summary: str  # "1,200 train / 300 val, 10 classes, 32x32 gray"

    def describe(self) -> str:
        """The one line printed when the folder is opened."""
        where = f"in memory ({_human_bytes(self.memory_bytes)})" if self.in_memory else "streamed"
        name = "small-image" if self.pipeline == "small" else "ImageNet"
        return (
            f"image folder: {self.summary} -> {name} pipeline at {self.image_size} px, {where}"
            f" ({self.reason})"
        )


def _human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}".replace(".0 ", " ")
        n /= 1024
    return f"{n} B"


def choose_plan(
    scan: FolderScan,
    *,
    eval_split: str,
    pipeline: str = "auto",
    image_size: int | None = None,
    in_chans: int | None = None,
    in_memory: bool | None = None,
    memory_budget_mb: float = 2048,
    default_size: int = 224,
) -> FolderPlan:
    """Choose a :class:`FolderPlan` from a scan; every argument left at its default is decided
    from the data, every other one is obeyed.

    ``default_size`` is the ImageNet pipeline's size (pretrained weights pass theirs).
    """
    if pipeline not in PIPELINES:
        raise ConfigError(f"pipeline={pipeline!r}: must be one of {', '.join(PIPELINES)}")
    if scan.sampled == 0:
        raise DataError(
            f"imagefolder: no readable image in {scan.root} "
            + (
                f"(e.g. {scan.unreadable[0][0]}: {scan.unreadable[0][1]})"
                if scan.unreadable
                else ""
            )
        )
    small = scan.median_side <= SMALL_IMAGE_MAX_SIDE
    reasons = []
    if pipeline == "auto":
        pipeline = "small" if small else "imagenet"
        reasons.append(
            f"typical side {scan.median_side} px "
            + (f"<= {SMALL_IMAGE_MAX_SIDE}" if small else f"> {SMALL_IMAGE_MAX_SIDE}")
        )
    else:
        reasons.append(f"pipeline={pipeline} asked for")
    if image_size is None:
        image_size = scan.median_side if pipeline == "small" else default_size
    else:
        reasons.append(f"image_size={image_size} asked for")
    channels = in_chans or (1 if scan.gray else 3)
    n = scan.total("train") + scan.total(eval_split)
    memory = n * channels * image_size * image_size
    if in_memory is None:
        in_memory = pipeline == "small" and memory <= memory_budget_mb * 2**20
        if pipeline == "small" and not in_memory:
            reasons.append(f"over the {memory_budget_mb:g} MB memory budget")
    elif in_memory:
        reasons.append("in_memory asked for")
    w, h = scan.common_size
    look = (
        f"{w}x{h}"
        if scan.max_side <= 2 * max(scan.min_side, 1)
        else (f"{scan.min_side}-{scan.max_side} px")
    )
    colour = "gray" if scan.gray else "/".join(sorted(scan.modes)) or "?"
    summary = (
        f"{scan.total('train'):,} train / {scan.total(eval_split):,} {eval_split}, "
        f"{len(scan.classes)} classes, {look} {colour}"
    )
    return FolderPlan(
        pipeline=pipeline,
        image_size=int(image_size),
        channels=channels,
        in_memory=bool(in_memory),
        memory_bytes=memory if in_memory else 0,
        reason="; ".join(reasons),
        summary=summary,
    )
