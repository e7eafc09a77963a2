"""The COCO-format reader and the dense loaders, on small sets written here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_api

from resnetlab.data import (
    IGNORE_INDEX,
    DataError,
    DenseLoader,
    Loader,
    build_dense_loaders,
    decode_masks,
    parse_dense_spec,
    read_coco,
)
from resnetlab.errors import ConfigError

W, H = 40, 30  # image width and height

# Category ids out of order and not contiguous: labels follow the sorted ids.
CATEGORIES = [{"id": 7, "name": "zebra"}, {"id": 3, "name": "ant"}]


def rect(y0: int, y1: int, x0: int, x1: int, h: int = H, w: int = W) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def compressed_rle(mask: np.ndarray) -> dict:
    rle = mask_api.encode(np.asfortranarray(mask))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode()}


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's crowd encoding: run lengths of the column-major pixels, starting with zeros."""
    flat = mask.flatten(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0]:
        counts = [0, *counts]
    return {"size": [mask.shape[0], mask.shape[1]], "counts": counts}


def write_image(path: Path, seed: int, mode: str = "RGB", size: tuple[int, int] = (W, H)) -> None:
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)


def train_doc() -> dict:
    """3 images: a polygon and an RLE object; a crowd region and a polygon; no object."""
    images = [{"id": 10 + i, "file_name": f"im{i}.png", "width": W, "height": H} for i in range(3)]
    annotations = [
        {
            "id": 1,
            "image_id": 10,
            "category_id": 7,
            "bbox": [5, 4, 10, 8],
            "iscrowd": 0,
            "segmentation": [[5, 4, 15, 4, 15, 12, 5, 12]],
        },
        {
            "id": 2,
            "image_id": 10,
            "category_id": 3,
            "bbox": [25, 20, 10, 5],
            "iscrowd": 0,
            "segmentation": compressed_rle(rect(20, 25, 25, 35)),
        },
        {
            "id": 3,
            "image_id": 11,
            "category_id": 3,
            "bbox": [30, 0, 10, 5],
            "iscrowd": 1,
            "segmentation": uncompressed_rle(rect(0, 5, 30, 40)),
        },
        {
            "id": 4,
            "image_id": 11,
            "category_id": 7,
            "bbox": [0, 10, 20, 20],
            "iscrowd": 0,
            "segmentation": [[0, 10, 20, 10, 20, 30, 0, 30]],
        },
    ]
    return {"images": images, "annotations": annotations, "categories": CATEGORIES}


def val_doc() -> dict:
    """2 images, the second grayscale and without objects."""
    return {
        "images": [
            {"id": 1, "file_name": "a.png", "width": W, "height": H},
            {"id": 2, "file_name": "b.png", "width": W, "height": H},
        ],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 3,
                "bbox": [2, 3, 8, 6],
                "segmentation": compressed_rle(rect(3, 9, 2, 10)),
            }
        ],
        "categories": list(reversed(CATEGORIES)),
    }


def write_set(root: Path) -> Path:
    """root/train (images in images/) and root/val (images beside the file)."""
    for i in range(3):
        write_image(root / "train" / "images" / f"im{i}.png", i)
    write_image(root / "val" / "a.png", 10)
    write_image(root / "val" / "b.png", 11, mode="L")
    (root / "train" / "instances.json").write_text(json.dumps(train_doc()))
    (root / "val" / "instances.json").write_text(json.dumps(val_doc()))
    return root


@pytest.fixture
def coco(tmp_path) -> Path:
    return write_set(tmp_path / "set")


# --------------------------------------------------------------------------- reader


def test_read_coco_labels_masks_crowd_and_negatives(coco):
    data = read_coco(coco)
    assert data.layout == "folders" and data.class_names == ("ant", "zebra")
    assert data.category_ids == (3, 7)
    assert [len(im.objects) for im in data.train.images] == [2, 2, 0]  # negative kept
    assert data.train.num_crowd == 1 and data.train.num_empty == 1 and len(data.val.images) == 2
    first, second = data.train.images[:2]
    assert first.path == coco / "train" / "images" / "im0.png"
    assert data.val.images[0].path == coco / "val" / "a.png"
    assert [o.label for o in first.objects] == [2, 1]  # id 7 -> 2, id 3 -> 1
    assert first.objects[0].box == (5.0, 4.0, 15.0, 12.0)
    masks = decode_masks(first)
    assert masks.shape == (2, H, W) and masks.dtype == np.uint8
    assert np.array_equal(masks[1], rect(20, 25, 25, 35))  # RLE exact
    polygon = masks[0].astype(bool)
    assert (
        abs(int(polygon.sum()) - 80) <= 20 and not polygon[~rect(4, 13, 5, 16).astype(bool)].any()
    )
    crowd = decode_masks(second)[0]
    assert second.objects[0].iscrowd and np.array_equal(crowd, rect(0, 5, 30, 40))


def test_single_file_is_split_by_val_fraction(tmp_path):
    root = tmp_path / "one"
    doc = train_doc()
    doc["images"] += [
        {"id": 20 + i, "file_name": f"x{i}.png", "width": W, "height": H} for i in range(7)
    ]
    for i in range(3):
        write_image(root / f"im{i}.png", i)
    for i in range(7):
        write_image(root / "images" / f"x{i}.png", i)
    (root / "instances.json").write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="val_fraction > 0"):
        read_coco(root)
    a, b = read_coco(root, val_fraction=0.3, seed=1), read_coco(root, val_fraction=0.3, seed=1)
    ids = [[im.id for im in s.images] for s in (a.train, a.val)]
    assert ids == [[im.id for im in s.images] for s in (b.train, b.val)]
    assert len(ids[1]) == 3 and sorted(ids[0] + ids[1]) == sorted(im["id"] for im in doc["images"])
    assert a.layout == "split"
    with pytest.raises(ConfigError, match="own validation split"):
        read_coco(write_set(tmp_path / "two"), val_fraction=0.2)


def _edit(path: Path, change) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def _box(doc):
    doc["annotations"][1]["bbox"] = [25, 20, 20, 5]  # reaches x = 45 > 40


def _category(doc):
    doc["annotations"][0]["category_id"] = 99


def _image_id(doc):
    doc["annotations"][0]["image_id"] = 1234


def _rle_size(doc):
    doc["annotations"][1]["segmentation"]["size"] = [H + 1, W]


def _file(doc):
    doc["images"][2]["file_name"] = "nowhere.png"


def _categories(doc):
    doc["categories"] = [{"id": 3, "name": "ant"}]


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        ("folder", r"no such folder.*train/instances\.json"),
        ("nofile", r"no instances\.json found"),
        ("json", r"train/instances\.json is not valid JSON"),
        (_box, r"train/instances\.json: annotation 2 \(image 10\).*outside the 40x30 image"),
        (_category, r"annotation 1 \(image 10\) has category 99.*ids 3, 7"),
        (_image_id, r"annotation 1 refers to image 1234"),
        (_rle_size, r"annotation 2 \(image 10\): RLE size \[31, 40\] differs"),
        (_file, r"image 12's file 'nowhere\.png' not found"),
        (_categories, r"val/instances\.json: lists categories"),
    ],
    ids=lambda v: v if isinstance(v, str) else getattr(v, "__name__", "?"),
)
def test_bad_input_is_a_data_error_naming_the_file(tmp_path, damage, match):
    root = write_set(tmp_path / "set")
    target = root / "train" / "instances.json"
    if damage == "folder":
        root = tmp_path / "missing"
    elif damage == "nofile":
        (root / "train" / "instances.json").unlink()
    elif damage == "json":
        target.write_text("{not json")
    elif damage is _categories:
        _edit(root / "val" / "instances.json", damage)  # val lists one category, train two
    else:
        _edit(target, damage)
    with pytest.raises(DataError, match=match):
        read_coco(root)


def test_image_of_another_size_is_refused_when_loaded(coco):
    write_image(coco / "val" / "a.png", 0, size=(W + 2, H))
    _, evaluation, _ = build_dense_loaders(f"coco:{coco}", task="detection", batch_size=2)
    with pytest.raises(
        DataError, match=r"a\.png: the image is 42x30, its annotation file says 40x30"
    ):
        next(iter(evaluation))


# --------------------------------------------------------------------------- loaders


def test_detection_batches(coco):
    train, evaluation, info = build_dense_loaders(f"coco:{coco}", task="detection")
    assert isinstance(train, Loader) and isinstance(evaluation, DenseLoader)
    assert (info.num_classes, info.class_names, info.task) == (2, ("ant", "zebra"), "detection")
    assert (info.train_size, info.eval_size, info.eval_split, info.image_size) == (3, 2, "val", W)
    assert "train 3 images, 1 without objects / 4 objects (1 crowd)" in info.plan
    assert train.batch_size == 3 and len(train) == 1 and len(evaluation) == 1  # default 8, fitted
    images, targets = next(iter(evaluation))
    assert [t["image_id"] for t in targets] == [1, 2]
    assert all(x.shape == (3, H, W) and x.dtype == torch.float32 for x in images)
    assert float(images[0].min()) >= 0 and float(images[0].max()) <= 1
    gray = np.asarray(Image.open(coco / "val" / "b.png"), dtype=np.float32) / 255
    assert all(torch.allclose(images[1][c], torch.from_numpy(gray)) for c in range(3))
    assert targets[0]["boxes"].tolist() == [[2.0, 3.0, 10.0, 9.0]]
    assert targets[0]["labels"].tolist() == [1] and targets[0]["masks"].shape == (1, H, W)
    assert targets[1]["boxes"].shape == (0, 4) and targets[1]["masks"].shape == (0, H, W)
    assert targets[1]["labels"].dtype == torch.int64 and targets[0]["masks"].dtype == torch.uint8


def test_detection_resize_and_crowd_left_out(coco):
    train, _, _ = build_dense_loaders(
        f"coco:{coco}", task="detection", augment="none", image_size=20
    )
    x, target = train.dataset[(1, 0)]  # the image with the crowd region
    assert x.shape == (3, 15, 20)
    assert target["labels"].tolist() == [2]  # the crowd object is not a box to learn
    assert torch.allclose(target["boxes"], torch.tensor([[0.0, 5.0, 10.0, 15.0]]))
    assert target["masks"].shape == (1, 15, 20)
    _, _, info = build_dense_loaders(f"coco:{coco}", task="detection", image_size=20)
    assert info.image_size == 20 and "longer side scaled to 20 px" in info.plan


def test_segmentation_targets_ignore_crowd_and_padding(coco):
    train, evaluation, info = build_dense_loaders(
        f"coco:{coco}", task="segmentation", augment="none", image_size=48
    )
    assert info.image_size == 48 and train.batch_size == 3
    x, y = train.dataset[(1, 0)]
    assert x.shape == (3, 48, 48) and y.shape == (48, 48) and y.dtype == torch.int64
    # 40x30 scaled by 1.2 to 48x36, rows 36.. are padding
    assert (y[36:] == IGNORE_INDEX).all() and (x[:, 36:] == 0).all()
    assert (y[:6, 36:] == IGNORE_INDEX).all()  # the crowd region, rows 0..5, cols 30.. scaled
    assert (y[13:36, :24] == 2).all() and set(y.unique().tolist()) == {0, 2, IGNORE_INDEX}
    images, targets = next(iter(evaluation))
    assert images.shape == (2, 3, 48, 48) and targets.shape == (2, 48, 48)
    _, _, info = build_dense_loaders(f"coco:{coco}", task="segmentation")
    assert info.image_size == 256  # the default for COCO sets


def _flipped_boxes(boxes: torch.Tensor, width: int) -> torch.Tensor:
    return torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], 1)


def test_flip_moves_image_boxes_and_masks_together(coco):
    flip, _, _ = build_dense_loaders(f"coco:{coco}", task="detection", augment="flip", seed=3)
    plain, _, _ = build_dense_loaders(f"coco:{coco}", task="detection", augment="none")
    seen = set()
    for epoch in range(8):
        x, t = flip.dataset[(0, epoch)]
        x0, t0 = plain.dataset[(0, epoch)]
        flipped = not torch.equal(x, x0)
        seen.add(flipped)
        if flipped:
            assert torch.equal(x, x0.flip(-1))
            assert torch.equal(t["boxes"], _flipped_boxes(t0["boxes"], W))
            assert torch.equal(t["masks"], t0["masks"].flip(-1))
            # each mask still lies inside its box
            for box, m in zip(t["boxes"], t["masks"], strict=True):
                cols = m.any(0).nonzero().flatten()
                assert box[0] <= cols.min() and cols.max() < box[2]
        else:
            assert torch.equal(t["boxes"], t0["boxes"])
        assert torch.equal(x, flip.dataset[(0, epoch)][0])  # a pure function of (seed, epoch, i)
    assert seen == {True, False}
    seg, _, _ = build_dense_loaders(f"coco:{coco}", task="segmentation", image_size=W, seed=3)
    seg0, _, _ = build_dense_loaders(
        f"coco:{coco}", task="segmentation", image_size=W, augment="none"
    )
    for epoch in range(8):
        (x, y), (x0, y0) = seg.dataset[(1, epoch)], seg0.dataset[(1, epoch)]
        if not torch.equal(x, x0):
            # the image is flipped, then padded at the bottom: the padding stays put
            assert torch.equal(x[:, :H], x0[:, :H].flip(-1)) and torch.equal(y, y0.flip(-1))


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def test_epoch_without_augmentation_never_flips(coco):
    flip, _, _ = build_dense_loaders(f"coco:{coco}", task="detection", augment="flip", seed=3)
    plain, _, _ = build_dense_loaders(f"coco:{coco}", task="detection", augment="none", seed=3)
    flip.set_epoch(1, augment=False)
    plain.set_epoch(1)
    assert _same(list(flip), list(plain))
    flipped = []
    for epoch in range(8):  # augmenting: some epoch flips the first batch
        flip.set_epoch(epoch)
        plain.set_epoch(epoch)
        flipped.append(not _same(next(iter(flip)), next(iter(plain))))
    assert any(flipped)


def test_iter_from_is_the_tail_of_a_full_pass_and_ranks_split_the_data(tmp_path):
    root = tmp_path / "many"
    doc = val_doc()
    doc["images"] = [
        {"id": i, "file_name": f"{i}.png", "width": W, "height": H} for i in range(1, 14)
    ]
    for i in range(1, 14):
        write_image(root / "images" / f"{i}.png", i)
    (root / "instances.json").write_text(json.dumps(doc))
    spec = f"coco:{root}"
    train, _, _ = build_dense_loaders(
        spec, task="detection", batch_size=2, val_fraction=0.2, seed=5
    )
    assert train.dataset_size == 10 and len(train) == 5
    train.set_epoch(3)
    full = list(train)
    assert _same(list(train.iter_from(2)), full[2:]) and list(train.iter_from(5)) == []
    train.set_epoch(4)
    assert not _same(list(train), full)  # a new order and new flips
    with pytest.raises(ConfigError, match="start_batch=6"):
        train.iter_from(6)
    workers, _, _ = build_dense_loaders(
        spec, task="detection", batch_size=2, val_fraction=0.2, seed=5, num_workers=1
    )
    workers.set_epoch(3)
    assert _same(list(workers.iter_from(3)), full[3:])
    shards = [
        build_dense_loaders(
            spec,
            task="segmentation",
            image_size=32,
            batch_size=2,
            val_fraction=0.2,
            seed=5,
            rank=r,
            world_size=2,
        )  # fmt: skip
        for r in (0, 1)
    ]
    seen = [set(s[0].indices().tolist()) for s in shards]
    # 5 images per rank in batches of 2: the last batch of one is dropped
    assert len(seen[0]) == len(seen[1]) == 4 and not seen[0] & seen[1]
    evals = [s[1].indices().tolist() for s in shards]
    assert evals == [[0, 1], [2]]  # contiguous chunks covering the 3 val images once


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("fashion-mnist", "classification dataset"),
        ("coco", r"coco:PATH"),
        ("cocoa:x", "Did you mean 'coco'"),
        ("fashion-mnist-scenes:train=x", "train=N, val=N"),
        ("fashion-mnist-scenes:size=8", "size=8: must be an integer 32..1024"),
    ],
)
def test_bad_specs(spec, match):
    with pytest.raises(ConfigError, match=match):
        parse_dense_spec(spec)


def test_bad_arguments(coco):
    for kwargs, match in [
        ({"task": "keypoints"}, "task='keypoints'"),
        ({"task": "detection", "augment": "standard"}, "augment='standard'"),
        ({"task": "detection", "batch_size": 4}, "batch_size=4 is larger than the training set"),
        ({"task": "detection", "rank": 2, "world_size": 2}, r"rank=2: must be in 0\.\.1"),
    ]:
        with pytest.raises(ConfigError, match=match):
            build_dense_loaders(f"coco:{coco}", **kwargs)
    assert parse_dense_spec("Fashion_MNIST_Scenes:train=10,val=5").scenes.n_train == 10


def test_segmentation_training_never_ends_on_a_batch_of_one(tmp_path):
    """9 images in batches of 4: 4, 4 and not a last batch of 1 (BatchNorm cannot train on it)."""
    root = tmp_path / "set"
    for split, n in (("train", 9), ("val", 2)):
        folder = root / split
        folder.mkdir(parents=True)
        images = []
        for i in range(n):
            Image.new("RGB", (16, 16)).save(folder / f"{i}.png")
            images.append({"id": i, "file_name": f"{i}.png", "width": 16, "height": 16})
        data = {"images": images, "annotations": [], "categories": [{"id": 1, "name": "a"}]}
        (folder / "instances.json").write_text(json.dumps(data))
    train, _, _ = build_dense_loaders(f"coco:{root}", task="segmentation", batch_size=4,
                                      image_size=16)  # fmt: skip
    assert [len(x) for x, _ in train] == [4, 4] and train.num_samples == 8
