"""The Fashion-MNIST scene set: determinism, geometry, provenance, atomic builds, the spec."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnetlab.data import (
    DataError,
    SceneConfig,
    build_dense_loaders,
    catalog,
    decode_masks,
    read_coco,
    scenes,
    sources,
    write_scene_set,
)
from resnetlab.errors import ConfigError

SYSTEM_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
TRAIN_LEVEL, TEST_LEVEL = 250, 120  # the fake items' brightness, telling the splits apart


def write_idx(path: Path, array: np.ndarray) -> None:
    head = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(head + array.astype(np.uint8).tobytes()))


def fake_items(n: int, level: int, seed: int) -> np.ndarray:
    """Filled ellipses of random extent: solid items with a zero background, like Fashion-MNIST."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:28, :28]
    cy, cx = rng.uniform(11, 17, (2, n, 1, 1))
    ry, rx = rng.uniform(4, 13, (2, n, 1, 1))
    inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    return (inside * level).astype(np.uint8)


@pytest.fixture
def fashion(tmp_path) -> Path:
    """A small fake Fashion-MNIST in the official file names."""
    folder = tmp_path / "fm"
    folder.mkdir()
    for prefix, n, level in (("train", 40, TRAIN_LEVEL), ("t10k", 20, TEST_LEVEL)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", fake_items(n, level, n))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return folder


SMALL = {"n_train": 12, "n_val": 6, "size": 64, "progress": False}


def tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_two_builds_are_byte_identical(tmp_path, fashion):
    a = write_scene_set(tmp_path / "a", source_dir=fashion, **SMALL)
    b = write_scene_set(tmp_path / "b", source_dir=fashion, **SMALL)
    files = tree(a)
    assert files == tree(b)
    assert "train/images/000000.png" in files and "val/images/000005.png" in files
    assert {"scenes.json", "train/instances.json", "val/instances.json"} <= set(files)
    other = write_scene_set(tmp_path / "c", source_dir=fashion, seed=1, **SMALL)
    assert tree(other)["train/instances.json"] != files["train/instances.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c", "fm"]  # no temp left


def test_masks_boxes_labels_and_sources(tmp_path, fashion):
    out = write_scene_set(tmp_path / "s", source_dir=fashion, max_items=4, **SMALL)
    data = read_coco(out)
    assert data.class_names == catalog.FASHION_MNIST.class_names
    assert (len(data.train.images), len(data.val.images)) == (12, 6)
    for split, level in ((data.train, TRAIN_LEVEL), (data.val, TEST_LEVEL)):
        brightest = 0
        for image in split.images:
            assert (image.width, image.height) == (64, 64) and 1 <= len(image.objects) <= 4
            masks = decode_masks(image).astype(bool)
            assert masks.sum(0).max() <= 1  # visible parts never overlap
            pixels = np.asarray(Image.open(image.path))
            assert pixels.shape == (64, 64)
            for obj, mask in zip(image.objects, masks, strict=True):
                assert 1 <= obj.label <= 10 and not obj.iscrowd
                rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
                x1, y1, x2, y2 = obj.box  # the box is the visible mask's extent
                assert (x1, y1, x2, y2) == (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
                assert pixels[mask].min() > scenes.MASK_THRESHOLD
            brightest = max(brightest, int(pixels.max()))
        # val canvases hold test-set items only (the dimmer ones), train canvases train items
        assert brightest <= level and brightest > level - 20
    anns = json.loads((out / "val" / "instances.json").read_text())["annotations"]
    assert {a["source"]["split"] for a in anns} == {"test"}
    assert min(a["visible"] for a in anns) >= scenes.MIN_VISIBLE
    assert all(0 <= a["source"]["index"] < 20 for a in anns)
    labels = np.arange(20) % 10  # the fake test labels
    assert all(a["category_id"] == labels[a["source"]["index"]] + 1 for a in anns)


def test_real_fashion_mnist(tmp_path):
    if not (SYSTEM_FASHION_MNIST / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip("Fashion-MNIST is not installed in /usr/share/datasets/fashion-mnist")
    out = write_scene_set(
        tmp_path / "real", n_train=6, n_val=4, size=96, source_dir=SYSTEM_FASHION_MNIST,
        progress=False,
    )  # fmt: skip
    data = read_coco(out)
    assert data.train.num_objects >= 6 and data.val.num_objects >= 4
    lo, hi = SceneConfig(size=96).item_sizes
    for image in data.train.images + data.val.images:
        for obj in image.objects:
            x1, y1, x2, y2 = obj.box
            assert max(x2 - x1, y2 - y1) <= hi and x2 <= 96 and y2 <= 96


def test_interrupted_build_leaves_nothing(tmp_path, fashion, monkeypatch):
    calls = []
    real = scenes._png

    def failing(canvas):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(canvas)

    monkeypatch.setattr(scenes, "_png", failing)
    with pytest.raises(KeyboardInterrupt):
        write_scene_set(tmp_path / "out" / "set", source_dir=fashion, **SMALL)
    assert list((tmp_path / "out").iterdir()) == []
    monkeypatch.setattr(scenes, "_png", real)
    write_scene_set(tmp_path / "out" / "set", source_dir=fashion, **SMALL)
    with pytest.raises(DataError, match="already exists"):
        write_scene_set(tmp_path / "out" / "set", source_dir=fashion, **SMALL)


def test_bad_parameters_and_sources(tmp_path):
    with pytest.raises(ConfigError, match=r"max_items=0: must be an integer 1\.\.20"):
        SceneConfig(max_items=0)
    with pytest.raises(ConfigError, match="size=16"):
        write_scene_set(tmp_path / "x", size=16)
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz .*not found in"):
        write_scene_set(tmp_path / "x", source_dir=tmp_path, progress=False)


def test_spec_builds_once_under_the_data_dir_and_reuses_it(tmp_path, fashion, monkeypatch):
    monkeypatch.setattr(sources, "SEARCH_DIRS", {"fashion-mnist": (tmp_path / "none",)})
    data_dir = tmp_path / "data"
    (data_dir / "fashion-mnist").mkdir(parents=True)
    for f in fashion.iterdir():
        (data_dir / "fashion-mnist" / f.name).write_bytes(f.read_bytes())
    spec = "fashion-mnist-scenes:train=12,val=6,size=64"
    kwargs = {"data_dir": data_dir, "download": False, "batch_size": 4}
    train, evaluation, info = build_dense_loaders(spec, task="segmentation", **kwargs)
    where = data_dir / "fashion-mnist-scenes" / "train12-val6-size64-items5-seed0"
    assert (where / "scenes.json").is_file() and "built in" in info.plan
    assert (info.num_classes, info.image_size, info.train_size, info.eval_size) == (10, 64, 12, 6)
    assert info.class_names == catalog.FASHION_MNIST.class_names
    x, y = next(iter(evaluation))
    assert x.shape == (4, 3, 64, 64) and y.shape == (4, 64, 64)
    assert int(y.max()) <= 10 and torch.equal(x[:, 0], x[:, 1])  # gray, repeated

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the scene set was built again")

    monkeypatch.setattr(scenes, "_render_split", no_rebuild)
    train2, _, info2 = build_dense_loaders(spec, task="detection", **kwargs)
    assert "reused" in info2.plan and info2.image_size == 64
    train2.set_epoch(1)
    full = list(train2)
    assert len(full) == 3 and all(len(images) == 4 for images, _ in full)
    tail = list(train2.iter_from(1))
    assert all(
        torch.equal(a, b) for (xs, _), (ys, _) in zip(full[1:], tail, strict=True)
        for a, b in zip(xs, ys, strict=True)
    )  # fmt: skip
    with pytest.raises(ConfigError, match="own val split"):
        build_dense_loaders(spec, task="detection", val_fraction=0.1, **kwargs)
    (where / "scenes.json").write_text(json.dumps({"format": scenes.FORMAT, "version": 99}))
    with pytest.raises(DataError, match="remove the folder to have it rebuilt"):
        build_dense_loaders(spec, task="detection", **kwargs)
