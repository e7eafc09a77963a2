"""Loaders for the dense tasks, detection and semantic segmentation: :func:`build_dense_loaders`.

Dataset specs (:func:`parse_dense_spec`):

* ``coco:PATH``: a set in the COCO format (:mod:`~resnetlab.data.coco` lists the layouts);
* ``fashion-mnist-scenes`` or ``fashion-mnist-scenes:train=2000,val=500,size=128,items=5,seed=0``:
  the scene set made of Fashion-MNIST items (:mod:`~resnetlab.data.scenes`), built once under
  the data dir and reused.

Batches are ``(images, targets)``, on the CPU:

* detection (torchvision's detection API): ``images`` a list of float32 (3, H, W) tensors in
  0..1 (grayscale repeated to 3 channels), ``targets`` a list of dicts with ``boxes`` (float32
  (N, 4), x1 y1 x2 y2 pixels), ``labels`` (int64 (N,), 1..K), ``masks`` (uint8 (N, H, W)) and
  ``image_id`` (int). Crowd objects are left out. Images keep their size unless
  ``image_size`` is given (then the longer side is scaled to it);
* segmentation: ``images`` float32 (B, 3, S, S) in 0..1 and ``targets`` int64 (B, S, S) with 0
  background, 1..K the classes and 255 ignored (crowd regions, overlaps of two classes,
  padding). Each image is scaled so that its longer side is S, aspect kept, and padded at
  the right and bottom.

The models normalize their inputs themselves, so the images are not normalized here.

The loaders follow :class:`~resnetlab.data.loader.Loader`: the training order of epoch ``e`` is
a seeded permutation, a pure function of ``(seed, e)``, taken in strides by the ranks; the
random horizontal flip of image ``i`` in epoch ``e`` (image, boxes and masks together, with
``torchvision.transforms.v2`` on ``tv_tensors``) a pure function of ``(seed, e, i)``. So
``iter_from(b)`` gives exactly the batches ``b, ...`` of an uninterrupted epoch, on any number
of workers. Evaluation keeps the order and gives rank r the r-th contiguous chunk.
"""

from __future__ import annotations

import difflib
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from ..errors import ConfigError
from .build import check_batch_fits, split_spec
from .coco import IGNORE_INDEX, CocoDataset, CocoImage, decode_masks, read_coco, semantic_target
from .errors import DataFormatError
from .images import load_image
from .loader import EpochOrder, check_positive_int, check_ranks, check_start_batch
from .scenes import SCENES_NAME, SceneConfig, ensure_scene_set
from .seeding import derive_seed

__all__ = [
    "DEFAULT_DENSE_BATCH_SIZE",
    "DEFAULT_SEGMENTATION_SIZE",
    "DENSE_AUGMENTS",
    "DENSE_TASKS",
    "VALID_DENSE_SPECS",
    "DenseDataset",
    "DenseInfo",
    "DenseLoader",
    "DenseSource",
    "build_dense_loaders",
    "parse_dense_spec",
]

DENSE_TASKS: tuple[str, ...] = ("detection", "segmentation")
#: "flip": random horizontal flips of image, boxes and masks; "none": the images as they are.
DENSE_AUGMENTS: tuple[str, ...] = ("none", "flip")
VALID_DENSE_SPECS: tuple[str, ...] = (
    "coco:PATH",
    f"{SCENES_NAME}[:train=2000,val=500,size=128,items=5,seed=0]",
)
#: Batch sizes when none is given (fewer when the training set is smaller).
DEFAULT_DENSE_BATCH_SIZE: dict[str, int] = {"detection": 8, "segmentation": 16}
#: The side segmentation resizes COCO sets to when no ``image_size`` is given.
DEFAULT_SEGMENTATION_SIZE = 256

_SCENE_KEYS = {
    "train": "n_train",
    "val": "n_val",
    "size": "size",
    "items": "max_items",
    "seed": "seed",
}
_ALIASES = {"fashionmnist-scenes": SCENES_NAME, "scenes": SCENES_NAME}
# A flip of every tv_tensor it is given: whether to flip is decided beforehand, seeded.
_FLIP = v2.RandomHorizontalFlip(p=1.0)


@dataclass(frozen=True)
class DenseSource:
    """A parsed dense dataset spec: ``kind`` "coco" (with ``path``) or "scenes" (``scenes``)."""

    kind: str
    path: Path | None = None
    scenes: SceneConfig | None = None


def parse_dense_spec(spec: str) -> DenseSource:
    """Parse a dense dataset spec (see the module docstring); ConfigError if it is not valid."""
    valid = ", ".join(VALID_DENSE_SPECS)
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"dataset spec {spec!r} is empty; valid dense datasets: {valid}")
    key, sep, rest = split_spec(spec, _ALIASES)
    if key == "coco":
        if not rest.strip():
            raise ConfigError(f"dataset spec {spec!r}: give the folder, as coco:PATH")
        return DenseSource("coco", path=Path(rest.strip()).expanduser())
    if key == SCENES_NAME:
        return DenseSource("scenes", scenes=_scene_options(spec, rest) if sep else SceneConfig())
    if key in ("fashion-mnist", "mnist", "cifar10", "cifar100", "imagefolder", "synthetic"):
        raise ConfigError(
            f"dataset spec {spec!r} is a classification dataset, without boxes or masks; for "
            f"detection and segmentation use {valid}"
        )
    close = difflib.get_close_matches(key, ["coco", SCENES_NAME], n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"unknown dense dataset {spec!r}; valid dense datasets: {valid}.{hint}")


def _scene_options(spec: str, rest: str) -> SceneConfig:
    values: dict[str, int] = {}
    for item in filter(None, (i.strip() for i in rest.split(","))):
        name, _, value = (p.strip() for p in item.partition("="))
        if name not in _SCENE_KEYS or not value.isdigit():
            raise ConfigError(
                f"dataset spec {spec!r}: {SCENES_NAME} takes train=N, val=N, size=N (the canvas "
                f"side), items=N (most items per canvas) and seed=N, e.g. "
                f"{SCENES_NAME}:train=2000,val=500; got {item!r}"
            )
        values[_SCENE_KEYS[name]] = int(value)
    try:
        return SceneConfig(**values)
    except ConfigError as exc:
        raise ConfigError(f"dataset spec {spec!r}: {exc}") from None


@dataclass(frozen=True)
class DenseInfo:
    """What a dense model needs to know about its data, and what was read.

    ``num_classes`` counts the object classes without the background (label 0);
    ``class_names[k - 1]`` names label k. ``image_size``: the side segmentation batches are
    resized to; for detection the canvas size of the scene set, the ``image_size`` images were
    resized to, or else the largest image side of the training split (the model's input
    size). ``plan`` is the one line saying what was read; ``train_size`` and ``eval_size``
    count images.
    """

    name: str
    task: str
    num_classes: int
    class_names: tuple[str, ...]
    image_size: int
    eval_split: str = "val"
    plan: str = ""
    train_size: int = 0
    eval_size: int = 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able copy, to record in a run."""
        out = asdict(self)
        out["class_names"] = list(self.class_names)
        return out


def _flips(seed: int, epoch: int, index: int) -> bool:
    return bool(derive_seed(seed, epoch, index, "flip") & 1)


class DenseDataset(Dataset):
    """The samples of one split for ``task``, keyed by ``(index, epoch)``.

    ``image_size``: segmentation's output side S (required), or for detection the longer
    side to scale images to (None: their own size). ``augment="flip"`` flips sample ``index``
    of epoch ``epoch`` when a hash of ``(seed, epoch, index)`` says so (half of them); an
    epoch of None: no flip (an epoch without augmentation).
    """

    def __init__(
        self,
        images: Sequence[CocoImage],
        *,
        task: str,
        image_size: int | None = None,
        augment: str = "none",
        seed: int = 0,
    ) -> None:
        _check_task(task)
        if augment not in DENSE_AUGMENTS:
            raise ConfigError(f"augment={augment!r}: must be one of {', '.join(DENSE_AUGMENTS)}")
        if task == "segmentation" and image_size is None:
            raise ConfigError("segmentation needs an image_size to resize the images to")
        self.images = tuple(images)
        self.task = task
        self.image_size = image_size
        self.augment = augment
        self.seed = seed

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: int | tuple[int, int | None]) -> tuple[torch.Tensor, Any]:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        image = self.images[index]
        pixels = _decode(image)
        masks = decode_masks(image)
        flip = self.augment == "flip" and epoch is not None and _flips(self.seed, epoch, index)
        if self.task == "detection":
            return self._detection(image, pixels, masks, flip)
        return self._segmentation(image, pixels, masks, flip)

    def _detection(
        self, image: CocoImage, pixels: torch.Tensor, masks: np.ndarray, flip: bool
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        keep = [k for k, obj in enumerate(image.objects) if not obj.iscrowd]
        boxes = torch.tensor([image.objects[k].box for k in keep], dtype=torch.float32)
        sample = (
            tv_tensors.Image(pixels),
            tv_tensors.BoundingBoxes(
                boxes.reshape(-1, 4), format="XYXY", canvas_size=(image.height, image.width)
            ),
            tv_tensors.Mask(torch.from_numpy(masks[keep])),
        )
        if flip:
            sample = _FLIP(*sample)
        if self.image_size is not None and max(image.height, image.width) != self.image_size:
            sample = tuple(
                TF.resize(t, size=None, max_size=self.image_size, antialias=True) for t in sample
            )
        x, b, m = (t.as_subclass(torch.Tensor) for t in sample)
        target = {
            "boxes": b.to(torch.float32),
            "labels": torch.tensor([image.objects[k].label for k in keep], dtype=torch.int64),
            "masks": m.to(torch.uint8),
            "image_id": image.id,
        }
        return x.to(torch.float32).div_(255.0), target

    def _segmentation(
        self, image: CocoImage, pixels: torch.Tensor, masks: np.ndarray, flip: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        size = self.image_size
        assert size is not None
        target = torch.from_numpy(semantic_target(image, masks))[None]
        x, y = tv_tensors.Image(pixels), tv_tensors.Mask(target)
        if flip:
            x, y = _FLIP(x, y)
        h, w = image.height, image.width
        scale = size / max(h, w)
        shape = [max(1, min(size, round(h * scale))), max(1, min(size, round(w * scale)))]
        if shape != [h, w]:
            x = TF.resize(x, shape, antialias=True)
            y = TF.resize(y, shape)  # nearest for masks: labels are not blended
        pad = [0, 0, size - shape[1], size - shape[0]]  # left, top, right, bottom
        if any(pad):
            x = TF.pad(x, pad, fill=0)
            y = TF.pad(y, pad, fill=IGNORE_INDEX)
        x, y = x.as_subclass(torch.Tensor), y.as_subclass(torch.Tensor)
        return x.to(torch.float32).div_(255.0), y[0].to(torch.int64)


def _decode(image: CocoImage) -> torch.Tensor:
    """uint8 (3, H, W) pixels of ``image``, checked against the size its annotations assume."""
    decoded = load_image(image.path, 3)
    if decoded.size != (image.width, image.height):
        raise DataFormatError(
            f"{image.path}: the image is {decoded.size[0]}x{decoded.size[1]}, its annotation "
            f"file says {image.width}x{image.height} (image {image.id}); fix the width and "
            "height there, or use the image the annotations were made on"
        )
    return torch.from_numpy(np.array(decoded)).permute(2, 0, 1).contiguous()


def collate_detection(batch: list[tuple[torch.Tensor, dict]]) -> tuple[list, list]:
    """Detection batches stay lists: images differ in size and targets in length."""
    return [x for x, _ in batch], [t for _, t in batch]


def collate_segmentation(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple:
    return torch.stack([x for x, _ in batch]), torch.stack([y for _, y in batch])


class DenseLoader(EpochOrder):
    """Batches of a :class:`DenseDataset`, in the order of the module docstring.

    ``train=True`` shuffles per epoch, shards by ``rank`` / ``world_size`` and drops the last
    partial batch when it is small (:func:`~resnetlab.data.loader.train_batches`);
    ``train=False`` keeps the order and every sample. ``num_workers > 0`` decodes in that
    many worker threads, a few batches ahead; the batches are
    the same.
    """

    def __init__(
        self,
        dataset: DenseDataset,
        info: DenseInfo,
        *,
        batch_size: int,
        train: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        split: str = "train",
    ) -> None:
        check_positive_int("batch_size", batch_size)
        check_ranks(rank, world_size)
        self.dataset = dataset
        self.info = info
        self.batch_size = int(batch_size)
        self.train = train
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.num_workers = num_workers
        self.split = split
        self.epoch = 0
        self.dataset_size = len(dataset)
        self._collate = collate_detection if dataset.task == "detection" else collate_segmentation
        self._plan()
        if train and self._num_batches > 1 and self.num_samples % self.batch_size == 1:
            # a last batch of one image: BatchNorm on a 1 x 1 map (DeepLabV3's image
            # pooling) cannot train on it
            self._num_batches -= 1
            self.num_samples -= 1

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        return self.iter_from(0)

    def iter_from(self, start_batch: int) -> Iterator[tuple[Any, Any]]:
        """Yield batches ``start_batch, ..., len(self) - 1`` of the current epoch."""
        check_start_batch(start_batch, self._num_batches)
        order = self.indices().tolist()
        # resolved now: the iterator belongs to the current epoch (None: without augmentation)
        epoch = self.epoch if self.augmenting else None
        keys = [
            [(i, epoch) for i in order[b * self.batch_size : (b + 1) * self.batch_size]]
            for b in range(start_batch, self._num_batches)
        ]
        return self._batches(keys)

    def _load(self, batch: list[tuple[int, int | None]]) -> tuple[Any, Any]:
        return self._collate([self.dataset[k] for k in batch])

    def _batches(self, keys: list[list[tuple[int, int | None]]]) -> Iterator[tuple[Any, Any]]:
        if self.num_workers == 0 or not keys:
            for batch in keys:
                yield self._load(batch)
            return
        # Worker threads, not processes: decoding (Pillow) and the transforms release the
        # GIL, and a process pool (torch's DataLoader) installs a SIGCHLD handler that, in a
        # process which also runs inductor/OpenVINO, crashed it with SIGSEGV when a later
        # subprocess of its own exited. ``2 x num_workers`` batches are decoded ahead.
        with ThreadPoolExecutor(self.num_workers, thread_name_prefix="dense-data") as pool:
            todo = iter(keys)
            ahead = deque(pool.submit(self._load, b) for b in islice(todo, 2 * self.num_workers))
            while ahead:
                batch = ahead.popleft().result()
                nxt = next(todo, None)
                if nxt is not None:
                    ahead.append(pool.submit(self._load, nxt))
                yield batch


def _check_task(task: str) -> None:
    if task not in DENSE_TASKS:
        raise ConfigError(f"task={task!r}: must be one of {', '.join(DENSE_TASKS)}")


def _validate(
    task: str,
    augment: str,
    batch_size: int | None,
    eval_batch_size: int | None,
    image_size: int | None,
    rank: int,
    world_size: int,
    num_workers: int,
    val_fraction: float,
) -> None:
    _check_task(task)
    if augment not in DENSE_AUGMENTS:
        raise ConfigError(f"augment={augment!r}: the dense tasks take {', '.join(DENSE_AUGMENTS)}")
    for name, value in (
        ("batch_size", batch_size),
        ("eval_batch_size", eval_batch_size),
        ("image_size", image_size),
    ):
        if value is not None:
            check_positive_int(name, value)
    check_ranks(rank, world_size)
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ConfigError(f"num_workers={num_workers!r}: must be an integer >= 0")
    if not isinstance(val_fraction, (int, float)) or not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction={val_fraction!r}: must be in [0, 1)")


def _batch_size(batch_size: int | None, task: str, n: int, world_size: int, spec: str) -> int:
    per_rank = n // world_size
    if per_rank == 0:
        raise ConfigError(
            f"{spec!r} has {n} training images, fewer than world_size={world_size}: every "
            "rank needs at least one"
        )
    if batch_size is None:
        return min(DEFAULT_DENSE_BATCH_SIZE[task], per_rank)
    return check_batch_fits(batch_size, n, world_size, spec, unit="images")


def _read(
    source: DenseSource,
    *,
    data_dir: str | Path | None,
    download: bool,
    val_fraction: float,
    seed: int,
) -> tuple[CocoDataset, str]:
    """The set a spec names, and what was done to get it (for the plan line)."""
    if source.kind == "coco":
        return read_coco(source.path, val_fraction=val_fraction, seed=seed), ""  # type: ignore[arg-type]
    assert source.scenes is not None
    if val_fraction:
        raise ConfigError(
            f"val_fraction={val_fraction!r}: {SCENES_NAME} has its own val split (canvases of "
            "Fashion-MNIST's test items); leave val_fraction at 0 and set its size with val=N"
        )
    start = time.perf_counter()
    path, built = ensure_scene_set(source.scenes, data_dir=data_dir, download=download)
    how = f"built in {time.perf_counter() - start:.1f} s" if built else "reused"
    return read_coco(path), f" ({how}: {path})"


def build_dense_loaders(
    spec: str,
    *,
    task: str,
    data_dir: str | Path | None = None,
    batch_size: int | None = None,
    eval_batch_size: int | None = None,
    augment: str = "flip",
    image_size: int | None = None,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    val_fraction: float = 0.0,
    num_workers: int = 0,
    download: bool = True,
) -> tuple[DenseLoader, DenseLoader, DenseInfo]:
    """The training loader, the evaluation loader (the val split) and the :class:`DenseInfo`.

    ``task`` is "detection" or "segmentation" (batches in the module docstring). ``batch_size``
    None: 8 for detection, 16 for segmentation (fewer on a smaller training set);
    ``eval_batch_size`` None: the training batch size. ``augment`` "flip" or "none" (the
    evaluation loader never augments). ``image_size``: segmentation's side (default: the scene
    set's canvas, else 256); for detection the longer side images are scaled to (default:
    their own size). ``val_fraction`` holds out that fraction of a COCO set that has no val
    split of its own (seeded by ``seed``). ``data_dir``: where the scene set is built and
    Fashion-MNIST looked for (default :func:`~resnetlab.data.sources.default_data_dir`).
    """
    _validate(task, augment, batch_size, eval_batch_size, image_size, rank, world_size,
              num_workers, val_fraction)  # fmt: skip
    source = parse_dense_spec(spec)
    data, how = _read(
        source, data_dir=data_dir, download=download, val_fraction=val_fraction, seed=seed
    )
    if task == "segmentation" and data.num_classes >= IGNORE_INDEX:
        raise ConfigError(
            f"{spec!r} has {data.num_classes} classes; segmentation targets hold labels "
            f"1..{IGNORE_INDEX - 1} ({IGNORE_INDEX} means ignore)"
        )
    canvas = source.scenes.size if source.scenes is not None else None
    size, resize, geometry = _geometry(task, image_size, canvas, data)
    name = spec.strip()
    bs = _batch_size(batch_size, task, len(data.train.images), world_size, name)
    info = _dense_info(name, how, task, data, size, f"{geometry}, batch {bs}, augment {augment}")
    common = {"seed": seed, "rank": rank, "world_size": world_size, "num_workers": num_workers}
    train = DenseLoader(
        DenseDataset(data.train.images, task=task, image_size=resize, augment=augment, seed=seed),
        info, batch_size=bs, train=True, split="train", **common,
    )  # fmt: skip
    evaluation = DenseLoader(
        DenseDataset(data.val.images, task=task, image_size=resize, augment="none", seed=seed),
        info, batch_size=eval_batch_size or bs, train=False, split="val", **common,
    )  # fmt: skip
    return train, evaluation, info


def _geometry(
    task: str, image_size: int | None, canvas: int | None, data: CocoDataset
) -> tuple[int, int | None, str]:
    """The info's image size, the size the datasets resize to, and the plan's words for it.

    ``canvas``: the scene set's canvas side (None for a COCO set).
    """
    if task == "segmentation":
        size = image_size or canvas or DEFAULT_SEGMENTATION_SIZE
        return size, size, f"segmentation at {size} x {size} px (longer side scaled, padded)"
    largest = max(max(im.width, im.height) for im in data.train.images)
    size = image_size or canvas or largest
    geometry = (
        f"detection, longer side scaled to {size} px"
        if image_size
        else f"detection at the images' own size ({size} px)"
        if canvas
        else f"detection at the images' own size (up to {size} px)"
    )
    return size, image_size, geometry


def _dense_info(
    name: str, how: str, task: str, data: CocoDataset, size: int, settings: str
) -> DenseInfo:
    """The :class:`DenseInfo` of ``data`` and its plan line; ``how``: how the set was had,
    ``settings``: how the loaders read it (geometry, batch size, augmentation)."""
    notes = "".join(f"; {note}" for note in data.notes)
    plan = (
        f"{name}{how}: {data.train.summary()}, {data.val.summary()}, {data.num_classes} "
        f"classes -> {settings}{notes}"
    )
    return DenseInfo(
        name=name,
        task=task,
        num_classes=data.num_classes,
        class_names=data.class_names,
        image_size=int(size),
        eval_split="val",
        plan=plan,
        train_size=len(data.train.images),
        eval_size=len(data.val.images),
    )
