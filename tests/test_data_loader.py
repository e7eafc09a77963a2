"""The in-memory loader: batches, determinism, exact resumption, sharding, augmentation."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch

from resnetlab.config import DataConfig
from resnetlab.data import DataInfo, InMemoryLoader, Loader, build_loaders, load_split
from resnetlab.data.augment import random_crop, random_erasing, random_hflip


def make_loader(n=103, *, channels=3, size=8, labels=None, **kwargs) -> InMemoryLoader:
    g = torch.Generator().manual_seed(123)
    images = torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=g)
    labels = torch.arange(n) if labels is None else labels  # labels double as sample ids
    info = DataInfo("toy", n, tuple(map(str, range(n))), channels, size, (0.5,) * channels,
                    (0.25,) * channels)  # fmt: skip
    kwargs.setdefault("batch_size", 10)
    kwargs.setdefault("train", True)
    return InMemoryLoader(images, labels, info, **kwargs)


def epoch(loader, e=0, start=0):
    loader.set_epoch(e)
    return list(loader.iter_from(start))


def test_batches_shapes_and_normalization():
    loader = make_loader(train=False, batch_size=16)
    assert isinstance(loader, Loader)
    assert len(loader) == 7 and loader.num_samples == 103 and loader.dataset_size == 103
    batches = list(loader)
    assert [len(y) for _, y in batches] == [16] * 6 + [7]
    x, y = batches[0]
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape == (16, 3, 8, 8)
    expected = (loader.images[:16].float() / 255 - 0.5) / 0.25
    torch.testing.assert_close(x, expected)
    assert torch.equal(torch.cat([y for _, y in batches]), torch.arange(103))  # ordered


def test_train_len_drops_last_and_shuffles():
    loader = make_loader(batch_size=10)
    assert len(loader) == 10 and loader.num_samples == 100
    ids = torch.cat([y for _, y in epoch(loader)])
    assert len(ids) == 100 and len(set(ids.tolist())) == 100
    assert not torch.equal(ids, torch.arange(100))


def test_deterministic_pure_function_of_seed_and_epoch():
    kw = dict(augment="standard", random_erasing=0.5)
    a, b = make_loader(seed=7, **kw), make_loader(seed=7, **kw)
    state = torch.get_rng_state()
    ea, eb = epoch(a, 3), epoch(b, 3)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is never touched
    for (xa, ya), (xb, yb) in zip(ea, eb, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    # epoch 3 again after another epoch: the same
    epoch(a, 4)
    assert all(torch.equal(x, x2) for (x, _), (x2, _) in zip(ea, epoch(a, 3), strict=True))
    # different epoch or seed: different order
    assert not torch.equal(ea[0][1], epoch(a, 4)[0][1])
    assert not torch.equal(ea[0][1], epoch(make_loader(seed=8, **kw), 3)[0][1])


def test_iter_from_is_the_tail_of_a_full_epoch():
    loader = make_loader(augment="standard", random_erasing=0.3, seed=1)
    full = epoch(loader, 2)
    for start in (0, 4, 9, 10):
        resumed = epoch(make_loader(augment="standard", random_erasing=0.3, seed=1), 2, start)
        assert len(resumed) == len(full) - start
        for (x, y), (xr, yr) in zip(full[start:], resumed, strict=True):
            assert torch.equal(x, xr) and torch.equal(y, yr)


@pytest.mark.parametrize("bad", [-1, 11, 2.5])
def test_iter_from_rejects_out_of_range(bad):
    with pytest.raises(ValueError, match=rf"start_batch={bad!r}: must be an integer in 0\.\.10"):
        make_loader().iter_from(bad)


def test_train_rank_shards_are_disjoint_parts_of_one_permutation():
    world = 3
    loaders = [make_loader(batch_size=4, rank=r, world_size=world, seed=5) for r in range(world)]
    assert {len(ld) for ld in loaders} == {8}  # 103 // 3 = 34 per rank -> 8 full batches
    shards = [torch.cat([y for _, y in epoch(ld, 1)]) for ld in loaders]
    ids = torch.cat(shards)
    assert len(ids) == world * 32 and len(set(ids.tolist())) == world * 32
    # interleaving the shards restores the single epoch permutation
    perm = torch.stack([ld.indices() for ld in loaders], 1).flatten()
    single = make_loader(seed=5)
    single.set_epoch(1)
    assert torch.equal(perm, single.indices()[: len(perm)])


@pytest.mark.parametrize("world", [2, 3])
def test_eval_shards_cover_every_sample_once(world):
    n = 101
    loaders = [
        make_loader(n, train=False, batch_size=8, rank=r, world_size=world) for r in range(world)
    ]
    assert sum(ld.num_samples for ld in loaders) == n
    seen = torch.cat([y for ld in loaders for _, y in ld])
    assert torch.equal(seen, torch.arange(n))  # each exactly once, no padding


def test_channel_repeat_channels_last_and_resize():
    loader = make_loader(channels=1, in_chans=3, channels_last=True, train=False)
    x, _ = next(iter(loader))
    assert x.shape == (10, 3, 8, 8)
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])
    assert x.is_contiguous(memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (20, 1, 8, 8), dtype=torch.uint8, generator=g)
    info = DataInfo("toy", 20, tuple(map(str, range(20))), 1, 16, (0.5,), (0.25,))
    x, _ = next(iter(InMemoryLoader(images, torch.arange(20), info, batch_size=5, train=False)))
    assert x.shape == (5, 1, 16, 16)
    with pytest.raises(ValueError, match=r"in_chans=1: the data has 3 channel\(s\); use 3"):
        make_loader(channels=3, in_chans=1)


def test_random_crop_is_a_shifted_zero_padded_window():
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).reshape(2, 1, 6, 6) + 1
    out = random_crop(x, 2, torch.Generator().manual_seed(3))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(2):
        windows = [padded[i, :, dy : dy + 6, dx : dx + 6] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], w) for w in windows)
    assert random_crop(x, 0, torch.Generator()) is x


def test_hflip_per_sample_and_erasing_rectangles():
    x = torch.arange(64 * 4 * 5, dtype=torch.float32).reshape(64, 1, 4, 5)
    out = random_hflip(x, torch.Generator().manual_seed(0))
    flipped = torch.tensor([torch.equal(o, s.flip(-1)) for o, s in zip(out, x, strict=True)])
    kept = torch.tensor([torch.equal(o, s) for o, s in zip(out, x, strict=True)])
    assert bool((flipped | kept).all()) and 10 < int(flipped.sum()) < 54
    ones = torch.ones(200, 3, 32, 32)
    erased = random_erasing(ones, 1.0, torch.Generator().manual_seed(0))
    zero = erased[:, 0] == 0
    assert torch.equal(zero, (erased == 0).all(1))  # the same rectangle on every channel
    frac = zero.float().mean((1, 2))
    assert bool((frac > 0).all()) and float(frac.max()) <= 0.4  # 0.33 up to rounding
    rows, cols = zero.any(2), zero.any(1)  # a rectangle: its area is rows * cols
    assert torch.equal(zero.sum((1, 2)), rows.sum(1) * cols.sum(1))
    assert torch.equal(random_erasing(ones, 0.0, torch.Generator()), ones)


# ------------------------------------------------------------------ via build_loaders


def test_synthetic_defaults_and_learnable_signal():
    train, test, info = build_loaders(DataConfig("synthetic", batch_size=32, augment="none"))
    assert (info.num_classes, info.channels, info.image_size) == (10, 3, 32)
    assert train.dataset_size == 512 and test.dataset_size == 256 and len(train) == 16
    x, y, _ = load_split("synthetic", "train")
    x2, y2, _ = load_split("synthetic", "train", seed=99)  # the data does not follow the seed
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert torch.bincount(y).tolist() == [52] * 2 + [51] * 8
    # nearest class mean on raw pixels separates the classes far above chance
    xt, yt, _ = load_split("synthetic", "test")
    means = torch.stack([x[y == c].float().flatten(1).mean(0) for c in range(10)])
    pred = torch.cdist(xt.float().flatten(1), means).argmin(1)
    assert (pred == yt).float().mean() > 0.9
    x, _, info = load_split("synthetic:classes=3,size=16,channels=1,n=30,test=9", "test")
    assert x.shape == (9, 1, 16, 16) and info.num_classes == 3
    assert load_split("synthetic:64", "train")[0].shape[0] == 64


def test_val_split_is_stratified_and_disjoint():
    x, y, _ = load_split("synthetic:n=200", "train")
    xt, yt, _ = load_split("synthetic:n=200", "train", val_fraction=0.1, seed=3)
    xv, yv, _ = load_split("synthetic:n=200", "val", val_fraction=0.1, seed=3)
    assert len(yv) == 20 and len(yt) == 180
    assert torch.bincount(yv, minlength=10).tolist() == [2] * 10
    rows = {bytes(r.numpy()) for r in x.flatten(1)}
    parts = [bytes(r.numpy()) for r in torch.cat([xt, xv]).flatten(1)]
    assert len(set(parts)) == 200 and set(parts) == rows
    data = DataConfig("synthetic:n=200", batch_size=20, eval_split="val", val_fraction=0.1)
    train, val, _ = build_loaders(data, seed=3)
    assert val.dataset_size == 20 and train.dataset_size == 180
    assert torch.equal(torch.cat([y for _, y in val]), yv)


def write_mnist_like(folder, images, labels):
    folder.mkdir(parents=True, exist_ok=True)
    for prefix in ("train", "t10k"):
        for kind, arr in (("images-idx3", images), ("labels-idx1", labels)):
            head = struct.pack(">BBBB", 0, 0, 8, arr.ndim) + struct.pack(
                f">{arr.ndim}I", *arr.shape
            )
            data = gzip.compress(head + arr.astype(np.uint8).tobytes())
            (folder / f"{prefix}-{kind}-ubyte.gz").write_bytes(data)


@pytest.mark.parametrize(("name", "flips"), [("mnist", False), ("fashion-mnist", True)])
def test_flip_only_where_orientation_does_not_matter(tmp_path, name, flips):
    # one bright pixel in column 0: a crop (pad 2) keeps it in the left columns,
    # only a mirror puts it on the right
    images = np.zeros((64, 28, 28), np.uint8)
    images[:, 14, 0] = 255
    write_mnist_like(tmp_path / name, images, np.arange(64) % 10)
    data = DataConfig(name, data_dir=str(tmp_path), batch_size=64)
    train, _, info = build_loaders(data, download=False)
    x, _ = next(iter(train))
    bright = x[:, 0] > 0
    right = bright[:, :, 14:].flatten(1).any(1)
    assert bool(right.any()) is flips
    data = DataConfig(name, data_dir=str(tmp_path), batch_size=8, augment="none")
    train, _, info = build_loaders(data, download=False, in_chans=3)
    x, _ = next(iter(train))
    assert x.shape == (8, 3, 28, 28) and info.in_chans == 3 and info.channels == 1
    assert info.preprocessing()["in_chans"] == 3


@pytest.mark.parametrize(
    ("fields", "arguments", "message"),
    [
        # the DataConfig's own checks, at construction
        (dict(batch_size=0), {}, r"data\.batch_size=0: expected an integer >= 1"),
        (dict(batch_size=-3), {}, r"data\.batch_size=-3: expected an integer >= 1"),
        (dict(batch_size=8, eval_batch_size=0), {}, "data.eval_batch_size=0: expected an integer"),
        (dict(batch_size=8, val_fraction=1.0), {}, r"data\.val_fraction=1.0: .*in \[0, 1\)"),
        (dict(batch_size=8, random_erasing=1.5), {}, r"data\.random_erasing=1.5: .*probability"),
        (dict(batch_size=8, num_workers=-1), {}, r"data\.num_workers=-1: expected an integer >= 0"),
        (dict(batch_size=8, image_size=0), {}, r"data\.image_size=0: expected an integer >= 1"),
        # what only build_loaders can check
        (
            dict(batch_size=600),
            {},
            r"batch_size=600 is larger than the training set .* 512 samples",
        ),
        (
            dict(batch_size=300),
            dict(world_size=2, rank=1),
            r"batch_size=300 is larger .* 256 samples per rank \(512 in all, world_size=2\)",
        ),
        (
            dict(batch_size=8, eval_split="dev"),
            {},
            "eval_split='dev': must be one of train, val, test",
        ),
        (dict(batch_size=8, eval_split="val"), {}, r"eval_split='val' needs val_fraction > 0"),
        (
            dict(batch_size=8, augment="heavy"),
            {},
            "augment='heavy': must be one of none, flip, crop, standard",
        ),
        (dict(batch_size=8), dict(in_chans=2), "in_chans=2: must be None, 1 or 3"),
        (dict(batch_size=8), dict(in_chans=1), r"in_chans=1: synthetic has 3 channel\(s\); use 3"),
        (dict(batch_size=8), dict(rank=2, world_size=2), r"rank=2: must be in 0\.\.1"),
        (dict(batch_size=8), dict(world_size=0), "world_size=0: must be a positive integer"),
        (dict(batch_size=8), dict(device="toaster"), "device='toaster': not a torch device"),
    ],
)
def test_build_loaders_rejects_bad_arguments(fields, arguments, message):
    with pytest.raises(ValueError, match=message):
        build_loaders(DataConfig("synthetic", **fields), **arguments)


def test_build_loaders_takes_a_data_config():
    with pytest.raises(TypeError, match=r"takes a DataConfig \(e\.g\. DataConfig\('synthetic'\)\)"):
        build_loaders("synthetic")


def test_load_split_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="split='dev': must be one of train, val, test"):
        load_split("synthetic", "dev")
    with pytest.raises(ValueError, match=r"split='val' needs val_fraction > 0"):
        load_split("synthetic", "val")
    with pytest.raises(ValueError, match="in-memory datasets only.*use build_loaders"):
        load_split(f"imagefolder:{tmp_path}", "train")


def test_flip_augment_mirrors_without_cropping():
    loader = make_loader(augment="flip", batch_size=103, n=103)
    plain = make_loader(augment="none", batch_size=103, n=103)
    (x, y), (x0, y0) = epoch(loader)[0], epoch(plain)[0]
    assert torch.equal(y, y0)  # same order: augmentation draws from its own generator
    same = (x == x0).flatten(1).all(1)
    mirrored = (x == x0.flip(-1)).flatten(1).all(1)
    assert bool((same | mirrored).all())  # every sample is itself or its mirror, uncropped
    assert 20 < int((mirrored & ~same).sum()) < 83  # about half are flipped
    with pytest.raises(ValueError, match="augment='rotate'.*flip"):
        make_loader(augment="rotate")


def test_an_epoch_without_augmentation_is_the_plain_images():
    kw = dict(seed=3, batch_size=10)
    aug = make_loader(augment="standard", random_erasing=0.5, **kw)
    plain = make_loader(augment="none", **kw)
    aug.set_epoch(2, augment=False)
    plain.set_epoch(2)
    for (xa, ya), (xp, yp) in zip(aug, plain, strict=True):
        assert torch.equal(ya, yp) and torch.equal(xa, xp)  # the same order, not augmented
    resumed = list(aug.iter_from(4))  # a resumed plain epoch is plain too
    assert torch.equal(resumed[0][0], list(plain.iter_from(4))[0][0])
    aug.set_epoch(2)  # augmenting again: the same order, other pixels
    (xa, ya), (xp, yp) = next(iter(aug)), next(iter(plain))
    assert torch.equal(ya, yp) and not torch.equal(xa, xp)
