"""Image-file datasets in torchvision's ImageFolder layout: ``PATH/<class>/<image>``.

If ``PATH/train`` and ``PATH/val`` exist they are the splits (and ``PATH/test`` if present);
otherwise the images of ``PATH`` are split into train/val with a seeded stratified split.
Hidden files and folders (``.ipynb_checkpoints``, macOS ``._*`` files) are ignored. Files are
listed by :func:`~resnetlab.data.files.walk_files`: links to folders inside a class folder are
not followed (no loops, nothing from outside), and each real file is read once: a file that a
link makes appear twice is left out the second time, and an evaluation image that is the same
file as a training image is left out of the evaluation split (each with a warning).

Training transforms (torchvision.transforms.v2): RandomResizedCrop(image_size), horizontal
flip, scale to [0, 1], normalize (ImageNet statistics), optional RandomErasing; for small
images (:mod:`~resnetlab.data.scan`) the CIFAR-style resize, pad + random crop and flip
instead. Evaluation: Resize(image_size * 256 / 224) and CenterCrop(image_size). Small
images that fit in memory skip these transforms: :func:`decode_into_memory` decodes them
once for the in-memory loader.

Determinism: the order of each epoch is a pure function of (seed, epoch), and every sample's
augmentation is drawn from a generator seeded with (seed, epoch, sample index), inside a
forked RNG state so neither the main process's nor the workers' global RNG leaks in. Hence
``iter_from(k)`` resumes an epoch exactly, whatever ``num_workers`` is.

Unreadable files (corrupt, truncated, empty, not an image) raise
:class:`~resnetlab.data.errors.ImageDecodeError` naming the file; with
``skip_bad_images=True`` they are dropped from their batch instead (batches can then be a
little smaller, and a batch with no readable image is left out) and a warning with the count
is logged at the end of each pass. The dataset never raises for an unreadable file: it hands
back a marker that the loader turns into the error in the main process, so the message is
the one line ``cannot decode image PATH: REASON`` whether or not worker processes decode
(PyTorch re-raises a worker's exception with the worker's whole traceback in its message).

Large images are decoded reduced (:func:`~resnetlab.data.images.load_image`'s ``min_side``)
to the resolution the transforms need (:func:`decode_side`), so a 12000 x 12000 photo does
not cost its full-size memory at every read.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from torch.utils.data import default_collate as _default_collate
from torchvision.transforms import v2

from ..errors import ConfigError
from .catalog import IMAGENET_MEAN, IMAGENET_STD
from .errors import DataError, ImageDecodeError
from .files import IMAGE_EXTENSIONS, FileKey, FileWalk, walk_files
from .images import load_image
from .info import DataInfo
from .loader import check_start_batch, eval_shard, train_batches
from .seeding import derive_seed, generator
from .splits import stratified_split

__all__ = [
    "DEFAULT_IMAGE_SIZE",
    "DEFAULT_VAL_FRACTION",
    "FolderLoader",
    "FolderSplits",
    "ImageFileDataset",
    "SplitFiles",
    "decode_into_memory",
    "decode_side",
    "default_folder_eval_split",
    "find_classes",
    "folder_info",
    "folder_splits",
    "folder_transforms",
    "scan_folder",
    "split_folders",
]

logger = logging.getLogger(__name__)

DEFAULT_IMAGE_SIZE = 224
DEFAULT_VAL_FRACTION = 0.1
# RandomResizedCrop keeps as little as 8% of an image's area, about 0.28 of its side: decoded
# with the shorter side at this many times the crop size, even the smallest crop keeps full
# resolution.
TRAIN_DECODE_FACTOR = 4
# For 1-channel models: the mean of ImageNet's channel statistics.
GRAY_MEAN = (round(sum(IMAGENET_MEAN) / 3, 4),)
GRAY_STD = (round(sum(IMAGENET_STD) / 3, 4),)

Sample = tuple[str, int]


def _layout_hint(root: Path) -> str:
    return (
        f"expected {root}/<class>/<image> (e.g. {root}/cat/001.jpg), or "
        f"{root}/train/<class>/<image> and {root}/val/<class>/<image>; image extensions: "
        + ", ".join(IMAGE_EXTENSIONS)
    )


def find_classes(root: str | Path) -> tuple[list[str], dict[str, int]]:
    """Sorted class folder names of ``root`` and their indices, ignoring hidden folders.

    Written here rather than taken from torchvision because torchvision's version counts
    hidden folders such as ``.ipynb_checkpoints`` as classes.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"imagefolder: {root} is not a folder; {_layout_hint(root)}")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise DataError(f"imagefolder: {root} has no class folders; {_layout_hint(root)}")
    return classes, {name: i for i, name in enumerate(classes)}


class SplitFiles(NamedTuple):
    """The samples of one split folder, its class names, and warning lines about its files."""

    samples: list[Sample]
    classes: list[str]
    notes: list[str]


def _empty_class_error(root: Path, empty: list[str], walks: dict[str, FileWalk]) -> DataError:
    first = empty[0]
    walk = walks.get(first)
    if walk is None:
        what = f"there is no {first}/ folder"
    elif walk.repeated and not walk.images:
        what = (
            f"its {len(walk.repeated)} image(s) are links to files already read "
            f"(e.g. {walk.repeated[0]})"
        )
    else:
        what = f"{first}/ holds {walk.describe_others()}"
        if walk.skipped_links:
            what += f" and {len(walk.skipped_links)} folder link(s), which are not followed"
    return DataError(
        f"imagefolder: {root} has no image file for class(es) {', '.join(empty)} ({what}); put "
        f"images there or remove the folder; image extensions: {', '.join(IMAGE_EXTENSIONS)}"
    )


def scan_folder(
    root: str | Path,
    class_to_idx: dict[str, int] | None = None,
    *,
    seen: set[FileKey] | None = None,
) -> SplitFiles:
    """``(path, class index)`` of every image under ``root``'s class folders, the class names,
    and warnings about links not followed and files met twice.

    ``seen``: identities of files already taken (another split's); they are left out here,
    and the files found are added to it.
    """
    root = Path(root)
    if class_to_idx is None:
        classes, class_to_idx = find_classes(root)
    else:
        classes = sorted(class_to_idx, key=class_to_idx.__getitem__)
        found, _ = find_classes(root)
        unknown = sorted(set(found) - set(classes))
        if unknown:
            raise DataError(
                f"imagefolder: {root} has class folders that the training split lacks: "
                + ", ".join(unknown)
            )
    seen = set() if seen is None else seen
    samples: list[Sample] = []
    walks: dict[str, FileWalk] = {}
    whole = FileWalk(root=str(root))  # what the class folders' walks left out, together
    for name in sorted(class_to_idx):
        if not (root / name).is_dir():
            continue
        walk = walks[name] = walk_files(root / name, seen=seen)
        samples += [(path, class_to_idx[name]) for path in walk.images]
        whole.skipped_links += walk.skipped_links
        whole.repeated += walk.repeated
    empty = [c for c in sorted(class_to_idx) if c not in walks or not walks[c].images]
    if empty:
        raise _empty_class_error(root, empty, walks)
    return SplitFiles(samples, classes, whole.notes())


@dataclass(frozen=True)
class FolderSplits:
    """The samples of each split of an image folder."""

    classes: list[str]
    train: list[Sample]
    val: list[Sample]
    test: list[Sample] | None
    #: "folders" (train/ and val/ given) or "split" (val carved out of one folder)
    layout: str
    #: warning lines: links not followed, files met twice
    notes: tuple[str, ...] = ()


def _check_classes(root: Path, classes: list[str]) -> None:
    if len(classes) < 2:
        raise DataError(
            f"imagefolder: {root} has {len(classes)} class folder ({', '.join(classes)}): a "
            "classifier needs at least 2; put each class's images in a folder of its own"
        )


def split_folders(root: str | Path) -> tuple[str, ...]:
    """The split folders :func:`folder_splits` reads in ``root``: ``("train", "val")`` or
    ``("train", "val", "test")``; ``()`` when ``root`` is one folder of classes to split."""
    root = Path(root).expanduser()
    if not ((root / "train").is_dir() and (root / "val").is_dir()):
        return ()
    return ("train", "val", "test") if (root / "test").is_dir() else ("train", "val")


def default_folder_eval_split(root: str | Path) -> str:
    """The split an image folder is evaluated on by default: "test" when ``root`` has
    train/, val/ and test/ folders, else "val" (its val/ folder, or the held-out part)."""
    return "test" if "test" in split_folders(root) else "val"


def folder_splits(root: str | Path, *, val_fraction: float = 0.0, seed: int = 0) -> FolderSplits:
    """Find the train/val(/test) samples of ``root``.

    With ``root/train`` and ``root/val`` folders, those are used (``val_fraction`` must then be
    0). Otherwise a seeded stratified split of ``root`` holds out ``val_fraction`` (0 means
    :data:`DEFAULT_VAL_FRACTION`) of each class. No file is in two splits: an image of val/
    or test/ that is the same file as a training image is left out there, with a note.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"imagefolder: {root} is not a folder; {_layout_hint(root)}")
    folders = split_folders(root)
    if folders:
        if val_fraction:
            raise ConfigError(
                f"val_fraction={val_fraction!r}: {root} already has train/ and val/ folders; "
                "use val_fraction=0"
            )
        seen: set[FileKey] = set()
        train, classes, notes = scan_folder(root / "train", seen=seen)
        _check_classes(root / "train", classes)
        class_to_idx = {name: i for i, name in enumerate(classes)}
        val, _, val_notes = scan_folder(root / "val", class_to_idx, seen=set(seen))
        notes += val_notes
        test = None
        if "test" in folders:
            test, _, test_notes = scan_folder(root / "test", class_to_idx, seen=set(seen))
            notes += test_notes
        return FolderSplits(classes, train, val, test, "folders", tuple(notes))
    samples, classes, notes = scan_folder(root)
    _check_classes(root, classes)
    labels = torch.tensor([label for _, label in samples], dtype=torch.int64)
    train_idx, val_idx = stratified_split(labels, val_fraction or DEFAULT_VAL_FRACTION, seed)
    return FolderSplits(
        classes,
        [samples[i] for i in train_idx.tolist()],
        [samples[i] for i in val_idx.tolist()],
        None,
        "split",
        tuple(notes),
    )


def folder_info(
    root: str | Path, classes: Sequence[str], *, image_size: int, channels: int
) -> DataInfo:
    """The :class:`DataInfo` of an image folder read at ``image_size`` with ``channels``."""
    return DataInfo(
        name=f"imagefolder:{root}",
        num_classes=len(classes),
        class_names=tuple(classes),
        channels=channels,
        image_size=image_size,
        mean=IMAGENET_MEAN if channels == 3 else GRAY_MEAN,
        std=IMAGENET_STD if channels == 3 else GRAY_STD,
        resize=int(image_size * 256 / 224),
    )


def folder_transforms(
    info: DataInfo,
    *,
    train: bool,
    augment: str = "standard",
    random_erasing: float = 0.0,
    small: bool = False,
) -> v2.Compose:
    """The torchvision v2 pipeline from a PIL image to a normalized float tensor.

    ``small``: the CIFAR-style pipeline (resize to ``image_size``, pad + random crop, flip)
    instead of ImageNet's RandomResizedCrop.
    """
    prep = info.to_preprocessing()  # the resize, crops and statistics the card records
    size = prep.image_size
    fit = prep.resize_and_crop()
    steps: list[Any] = fit
    if train and augment in ("crop", "standard"):
        if small:
            steps = [*fit, v2.RandomCrop(size, padding=max(1, size // 8))]
        else:
            steps = [prep.train_crop()]
    if train and augment in ("flip", "standard"):
        steps = [*steps, v2.RandomHorizontalFlip()]
    steps += prep.to_normalized_tensor()
    if train and random_erasing > 0:
        steps.append(v2.RandomErasing(p=random_erasing))
    return v2.Compose(steps)


def decode_side(
    info: DataInfo, *, train: bool, augment: str = "standard", small: bool = False
) -> int:
    """The shorter side an image needs, decoded, for :func:`folder_transforms` with the same
    arguments: the resize for evaluation and the small pipeline, and
    :data:`TRAIN_DECODE_FACTOR` times the crop for RandomResizedCrop (which crops first)."""
    if train and not small and augment in ("crop", "standard"):
        return TRAIN_DECODE_FACTOR * info.image_size
    return info.resize or info.image_size


def decode_into_memory(
    samples: Sequence[Sample],
    *,
    image_size: int,
    channels: int,
    skip_bad_images: bool = False,
    num_workers: int = 0,
    desc: str = "decoding",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode ``samples`` once into uint8 ``(N, channels, image_size, image_size)`` and labels.

    Each image's shorter side is resized to ``image_size`` and the center cropped (a no-op for
    images of that size), as the evaluation transform does, so predict on a file sees what
    training saw. Unreadable files raise one :class:`DataError` naming how many and the
    first, or are left out (and counted in a warning) with ``skip_bad_images``.
    """
    from tqdm import tqdm

    transform = v2.Compose(
        [v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size), v2.PILToTensor()]
    )
    dataset = ImageFileDataset(
        samples, transform, channels=channels, skip_bad_images=True, min_side=image_size
    )
    loader = DataLoader(
        dataset,
        batch_size=256,
        num_workers=num_workers if len(samples) > 2000 else 0,
        collate_fn=collate_skipping,
    )
    images, labels, bad = [], [], []
    for x, y, unreadable in tqdm(loader, desc=desc, unit="batch", disable=None, leave=False):
        images.append(x)
        labels.append(y)
        bad += unreadable
    if bad and not skip_bad_images:
        raise ImageDecodeError(
            bad[0].path,
            f"{bad[0].reason} ({len(bad)} unreadable file(s) in all); remove them, or pass "
            "--skip-bad-images (data.skip_bad_images=true) to leave them out",
        )
    if bad:
        logger.warning(
            "skipped %d unreadable image(s), e.g. %s (%s)", len(bad), bad[0].path, bad[0].reason
        )
    kept = [x for x in images if x.numel()]
    if not kept:
        raise DataError(f"imagefolder: none of the {len(samples)} images could be read")
    return torch.cat(kept), torch.cat(labels).to(torch.int64)


class _Unreadable(NamedTuple):
    path: str
    reason: str


class ImageFileDataset(Dataset):
    """Decodes and transforms ``(path, label)`` samples.

    Keys are ``(index, seed)`` pairs (see :class:`ResumableBatchSampler`): when ``seed`` is not
    None, the transform runs in a forked RNG state seeded with it; when it is None, the
    ``plain`` transform runs if there is one (a training set's evaluation transform, for
    its epochs without augmentation), else ``transform``. An unreadable file gives
    an ``_Unreadable(path, reason)`` marker in place of its sample, never an exception (one
    raised in a worker process would reach the user wrapped in the worker's traceback):
    :class:`FolderLoader` raises :class:`ImageDecodeError` for it in the main process, or
    skips it when ``skip_bad_images``. ``min_side``: decode large images reduced, keeping
    the shorter side at least this (:func:`decode_side`).
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        transform: v2.Compose,
        *,
        plain: v2.Compose | None = None,
        channels: int = 3,
        skip_bad_images: bool = False,
        min_side: int | None = None,
    ) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.plain = plain
        self.channels = channels
        self.skip_bad_images = skip_bad_images
        self.min_side = min_side

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int | None]) -> Any:
        index, seed = key if isinstance(key, tuple) else (key, None)
        path, label = self.samples[index]
        try:
            image = load_image(path, self.channels, min_side=self.min_side)
        except ImageDecodeError as exc:
            return _Unreadable(path, exc.reason)
        if seed is None:
            return (self.plain or self.transform)(image), label
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.transform(image), label


def collate_skipping(batch: list[Any]) -> tuple[torch.Tensor, torch.Tensor, list[_Unreadable]]:
    """Collate decoded samples, setting aside the :class:`_Unreadable` markers."""
    good = [item for item in batch if not isinstance(item, _Unreadable)]
    bad = [item for item in batch if isinstance(item, _Unreadable)]
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.int64), bad
    images, labels = _default_collate(good)
    return images, labels, bad


class ShardSampler(Sampler[int]):
    """Rank ``rank``'s contiguous chunk of ``range(n)``, in order.

    Hand-written because ``DistributedSampler`` pads the ranks to equal length with repeated
    samples, which would count those samples twice in an evaluation.
    """

    def __init__(self, n: int, rank: int, world_size: int) -> None:
        self.shard = eval_shard(n, rank, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.shard)

    def __len__(self) -> int:
        return len(self.shard)


class ResumableBatchSampler(Sampler[list[tuple[int, int | None]]]):
    """Batches of ``(index, per-sample seed)`` keys that can start at any batch of an epoch.

    ``drop_last``: drop the last partial batch when it is small (:func:`train_batches`).
    ``augment=False`` in :meth:`set_epoch`: the epoch's keys carry no seed (no augmentation).

    ``torch.utils.data.BatchSampler`` reads its sampler lazily, so a start position set before
    ``iter()`` could change under it; this one fixes the epoch's order and start at ``iter()``.
    """

    def __init__(
        self, sampler: Sampler[int], batch_size: int, *, drop_last: bool, seed: int | None
    ) -> None:
        self.sampler = sampler
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.seed = seed
        self.epoch = 0
        self.augment = True
        self.start_batch = 0

    def set_epoch(self, epoch: int, *, augment: bool = True) -> None:
        self.epoch, self.augment = epoch, augment
        if isinstance(self.sampler, DistributedSampler):
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        n = len(self.sampler)  # type: ignore[arg-type]
        return train_batches(n, self.batch_size) if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[list[tuple[int, int | None]]]:
        # Order, start and epoch are fixed here; the keys are made batch by batch.
        seed = self.seed if self.augment else None
        return self._batches(list(self.sampler), self.start_batch, self.epoch, seed)

    def _batches(
        self, order: list[int], start: int, epoch: int, seed: int | None
    ) -> Iterator[list[tuple[int, int | None]]]:
        bs = self.batch_size
        for b in range(start, len(self)):
            chunk = order[b * bs : (b + 1) * bs]
            yield [(i, None if seed is None else derive_seed(seed, epoch, i)) for i in chunk]


class FolderLoader:
    """A :class:`~resnetlab.data.loader.Loader` over an :class:`ImageFileDataset`.

    ``split`` names the split in messages (default: "train" or "eval").
    """

    def __init__(
        self,
        dataset: ImageFileDataset,
        info: DataInfo,
        *,
        batch_size: int,
        train: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 2,
        device: str | torch.device = "cpu",
        channels_last: bool = False,
        split: str | None = None,
    ) -> None:
        self.dataset = dataset
        self.info = info
        self.split = split or ("train" if train else "eval")
        self.batch_size = int(batch_size)
        self.train = train
        self.world_size = world_size
        self.device = torch.device(device)
        self.channels_last = channels_last
        self.epoch = 0
        self.dataset_size = len(dataset)
        sampler: Sampler[int]
        if train:
            sampler = DistributedSampler(
                dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True
            )
        else:
            sampler = ShardSampler(len(dataset), rank, world_size)
        self._batches = ResumableBatchSampler(
            sampler, self.batch_size, drop_last=train, seed=seed if train else None
        )
        self.num_samples = (
            min(len(sampler), len(self._batches) * self.batch_size) if train else len(sampler)
        )
        self._loader = DataLoader(
            dataset,
            batch_sampler=self._batches,
            num_workers=num_workers,
            collate_fn=collate_skipping,
            pin_memory=self.device.type == "cuda",
            persistent_workers=num_workers > 0,
            generator=generator(seed, rank, "workers"),
        )

    def __len__(self) -> int:
        return len(self._batches)

    def set_epoch(self, epoch: int, *, augment: bool = True) -> None:
        """Select the epoch whose order and augmentation the next iteration uses;
        ``augment=False``: that epoch without augmentation (the dataset's ``plain``
        transform)."""
        self.epoch = int(epoch)
        self._batches.set_epoch(self.epoch, augment=augment)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.iter_from(0)

    def iter_from(self, start_batch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield batches ``start_batch, ..., len(self) - 1`` of the current epoch."""
        check_start_batch(start_batch, len(self))
        self._batches.start_batch = start_batch
        try:
            batches = iter(self._loader)
        finally:
            self._batches.start_batch = 0
        return self._move(batches)

    def _move(self, batches: Iterator[Any]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        skipped: list[_Unreadable] = []
        non_blocking = self.device.type == "cuda"
        for images, labels, bad in batches:
            if bad and not self.dataset.skip_bad_images:
                raise ImageDecodeError(
                    bad[0].path,
                    f"{bad[0].reason}; remove it, or pass --skip-bad-images "
                    "(data.skip_bad_images=true) to leave unreadable files out",
                )
            skipped += bad
            if labels.numel() == 0:
                if self.train and self.world_size > 1:
                    # Skipping would leave this rank one step short of the others (a hang).
                    raise DataError(
                        f"imagefolder: every image of a training batch was unreadable "
                        f"({len(bad)} files, e.g. {bad[0].path}: {bad[0].reason}); "
                        "remove the unreadable files"
                    )
                continue
            images = images.to(self.device, non_blocking=non_blocking)
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            yield images, labels.to(self.device, non_blocking=non_blocking)
        if skipped:
            logger.warning(
                "skipped %d unreadable image(s) of %s (%s) in epoch %d, e.g. %s (%s)",
                len(skipped),
                self.info.name,
                self.split,
                self.epoch,
                skipped[0].path,
                skipped[0].reason,
            )
