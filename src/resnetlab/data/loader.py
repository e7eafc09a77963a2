"""The loader protocol and the fast loader for datasets held in memory.

Every loader of this package (in memory or :mod:`~resnetlab.data.folder`) follows
:class:`Loader`:

* ``for images, labels in loader`` yields float32 normalized images (B, C, H, W) and int64
  labels on the loader's device; ``len(loader)`` is the number of batches per epoch
  (for training the last partial batch is dropped unless that would leave out a large part
  of the epoch, see :func:`train_batches`; for evaluation it is kept).
* ``loader.set_epoch(epoch)`` selects the epoch; call it before each epoch, as with
  ``DistributedSampler`` (the loader does not advance the epoch by itself).
  ``set_epoch(epoch, augment=False)`` makes a training epoch plain: no crop, flip or erasing
  (image folders: the evaluation transform), for a run's last epochs (``data.plain_final_epochs``).
* ``loader.iter_from(start_batch)`` yields batches ``start_batch, ...`` of the current epoch.

:class:`InMemoryLoader` keeps the whole split as one uint8 tensor on the target device and
augments whole batches (:mod:`~resnetlab.data.augment`). The order of epoch ``e`` is a pure
function of ``(seed, e)`` and the augmentation of batch ``b`` of a pure function of
``(seed, e, b, rank)``: each uses a fresh ``torch.Generator``, never the global RNG. So
``iter_from(b)`` reproduces the tail of an uninterrupted epoch bit for bit, which is what exact
resumption after a crash relies on.

Sharding with ``world_size > 1``: for training every rank takes a disjoint stride of the same
epoch permutation (``N // world_size`` samples each, the remainder is left out that epoch); for
evaluation rank r takes the r-th contiguous chunk, chunk sizes differ by at most one, so the
ranks together see every sample exactly once (ranks may then have different batch counts).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, runtime_checkable

import torch
from torchvision.transforms.v2 import functional as TF

from ..errors import ConfigError
from .augment import random_crop, random_erasing, random_hflip
from .info import DataInfo
from .seeding import generator

__all__ = [
    "AUGMENTS",
    "InMemoryLoader",
    "Loader",
    "check_positive_int",
    "check_ranks",
    "eval_shard",
    "train_batches",
]

#: Accepted values of ``augment``: none, flip only, random crop only, or crop + flip (flips
#: only where they are valid).
AUGMENTS: tuple[str, ...] = ("none", "flip", "crop", "standard")


@runtime_checkable
class Loader(Protocol):
    """What training and evaluation code may rely on; see the module docstring."""

    info: DataInfo
    batch_size: int
    dataset_size: int
    num_samples: int
    epoch: int

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    def __len__(self) -> int: ...

    def set_epoch(self, epoch: int, *, augment: bool = True) -> None: ...

    def iter_from(self, start_batch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


def check_positive_int(name: str, value: object) -> None:
    """ConfigError unless ``value`` is an integer >= 1 (a bool is not)."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name}={value!r}: must be a positive integer")


def check_ranks(rank: object, world_size: object) -> None:
    """ConfigError unless ``world_size`` is a positive integer and ``rank`` one of its ranks."""
    check_positive_int("world_size", world_size)
    assert isinstance(world_size, int)
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ConfigError(
            f"rank={rank!r}: must be in 0..{world_size - 1} (world_size={world_size})"
        )


def eval_shard(n: int, rank: int, world_size: int) -> range:
    """Rank ``rank``'s contiguous chunk of ``range(n)``; the chunks partition it exactly."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


#: A training epoch keeps its last partial batch when dropping it would leave out more than
#: this fraction of the epoch's samples.
KEEP_LAST_FRACTION = 0.1


def train_batches(n: int, batch_size: int) -> int:
    """The number of batches of a training epoch of ``n`` samples (per rank).

    The last partial batch is dropped, so that every step sees ``batch_size`` samples and
    BatchNorm's batch statistics stay steady, as long as that leaves out at most
    :data:`KEEP_LAST_FRACTION` of the epoch (a large set: 50,000 at 128 leaves out 80).
    When it would leave out more (240 images at 128: 112 of them, every epoch) it is kept. A
    last batch of one sample is always dropped: BatchNorm cannot take batch statistics of
    one value per channel (a 1x1 feature map), and one sample is a noisy step anyway.
    """
    full, rest = divmod(n, batch_size)
    return full + int(rest >= 2 and rest > KEEP_LAST_FRACTION * n)


def check_start_batch(start_batch: int, num_batches: int) -> None:
    """Raise ValueError unless ``0 <= start_batch <= num_batches``."""
    if not isinstance(start_batch, int) or not 0 <= start_batch <= num_batches:
        raise ConfigError(
            f"start_batch={start_batch!r}: must be an integer in 0..{num_batches} "
            f"(this loader has {num_batches} batches per epoch)"
        )


class EpochOrder:
    """Which samples a rank visits in an epoch, in what order and in how many batches: the
    part every loader of the project shares (set up by :meth:`_plan`).

    Training: a seeded permutation per (``seed``, epoch), dealt out to the ranks, the last
    partial batch dropped when small (:func:`train_batches`). Evaluation: every sample once,
    in order, in contiguous shards (:func:`eval_shard`).
    """

    dataset_size: int
    batch_size: int
    train: bool
    seed: int
    rank: int
    world_size: int
    epoch: int
    augmenting: bool = True  # False: the current epoch trains without augmentation

    def _plan(self) -> None:
        if self.train:
            per_rank = self.dataset_size // self.world_size
            self._num_batches = train_batches(per_rank, self.batch_size)
            self.num_samples = min(per_rank, self._num_batches * self.batch_size)
        else:
            self._shard = eval_shard(self.dataset_size, self.rank, self.world_size)
            self._num_batches = -(-len(self._shard) // self.batch_size)
            self.num_samples = len(self._shard)

    def __len__(self) -> int:
        return self._num_batches

    def set_epoch(self, epoch: int, *, augment: bool = True) -> None:
        """Select the epoch whose order and augmentation the next iteration uses;
        ``augment=False``: that epoch without augmentation."""
        self.epoch = int(epoch)
        self.augmenting = bool(augment)

    def indices(self) -> torch.Tensor:
        """The dataset indices this rank visits in the current epoch, in order (CPU int64)."""
        if not self.train:
            return torch.arange(self._shard.start, self._shard.stop)
        perm = torch.randperm(
            self.dataset_size, generator=generator(self.seed, self.epoch, "order")
        )
        used = (self.dataset_size // self.world_size) * self.world_size
        return perm[self.rank : used : self.world_size][: self.num_samples]


class InMemoryLoader(EpochOrder):
    """Batches of an in-memory uint8 dataset, augmented and normalized on ``device``.

    ``images`` is uint8 (N, C, H, W) and ``labels`` int64 (N,). ``train=True`` shuffles per
    epoch, drops the last partial batch when it is small (:func:`train_batches`) and applies ``augment`` ("none"; "flip": a horizontal
    flip when ``hflip``, the lightest, for runs of a few epochs; "crop": random crop with
    ``crop_padding`` zero padding; "standard": crop plus the flip)
    and ``random_erasing`` (probability per sample). ``train=False`` keeps the order and does
    not augment. ``in_chans=3`` on 1-channel data repeats the channel; ``image_size`` other than
    the stored size resizes (bilinear, antialiased) before normalization.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        info: DataInfo,
        *,
        batch_size: int,
        train: bool,
        augment: str = "standard",
        random_erasing: float = 0.0,
        hflip: bool = True,
        crop_padding: int = 4,
        in_chans: int | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        device: str | torch.device = "cpu",
        channels_last: bool = False,
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ConfigError(
                f"images must be uint8 (N, C, H, W), got {images.dtype} {images.shape}"
            )
        if labels.shape != (images.shape[0],):
            raise ConfigError(f"labels must have shape ({images.shape[0]},), got {labels.shape}")
        if augment not in AUGMENTS:
            raise ConfigError(f"augment={augment!r}: must be one of {', '.join(AUGMENTS)}")
        check_positive_int("batch_size", batch_size)
        check_ranks(rank, world_size)
        channels = images.shape[1]
        if in_chans not in (None, channels) and not (channels == 1 and in_chans == 3):
            raise ConfigError(
                f"in_chans={in_chans!r}: the data has {channels} channel(s); use {channels}"
                + (" or 3 (the gray channel repeated)" if channels == 1 else "")
            )
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.labels = labels.to(device=self.device, dtype=torch.int64)
        self.info = info
        self.batch_size = int(batch_size)
        self.train = train
        self.augment = augment if train else "none"
        self.random_erasing = float(random_erasing) if train else 0.0
        self.hflip = hflip
        self.crop_padding = crop_padding
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.channels_last = channels_last
        self.epoch = 0
        self.dataset_size = int(images.shape[0])
        self._repeat = (in_chans or channels) // channels
        self._resize = info.image_size if info.image_size != images.shape[-1] else None
        self._mean = list(info.mean)
        self._std = list(info.std)
        self._plan()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.iter_from(0)

    def iter_from(self, start_batch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield batches ``start_batch, ..., len(self) - 1`` of the current epoch."""
        check_start_batch(start_batch, self._num_batches)
        # Resolved now, not at the first next(): the iterator belongs to the current epoch.
        order = self.indices().to(self.device)
        return self._batches(order, start_batch, self.epoch, self.augmenting)

    def _batches(
        self, order: torch.Tensor, start: int, epoch: int, augmenting: bool
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        augment = self.augment if augmenting else "none"
        erasing = self.random_erasing if augmenting else 0.0
        for b in range(start, self._num_batches):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            x = self._make_batch(self.images[idx], epoch, b, augment, erasing)
            yield x, self.labels[idx]

    def _make_batch(
        self, x: torch.Tensor, epoch: int, batch: int, augment: str, erasing: float
    ) -> torch.Tensor:
        g = None
        if augment != "none" or erasing > 0:
            g = generator(self.seed, epoch, batch, self.rank, "augment")
        if augment in ("crop", "standard"):
            x = random_crop(x, self.crop_padding, g)
        if augment in ("flip", "standard") and self.hflip:
            x = random_hflip(x, g)
        x = x.to(torch.float32).div_(255.0)
        if self._resize is not None:
            x = TF.resize(x, [self._resize, self._resize], antialias=True)
        x = TF.normalize(x, self._mean, self._std, inplace=True)
        if erasing > 0:
            x = random_erasing(x, erasing, g)
        if self._repeat > 1:
            x = x.repeat(1, self._repeat, 1, 1)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x
