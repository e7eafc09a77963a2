"""Image folders that choose their own pipeline: the scan, the plan, the in-memory path,
and folders with the kinds of trouble real ones have."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnetlab.config import DataConfig
from resnetlab.data import (
    IMAGENET_MEAN,
    DataError,
    FolderLoader,
    ImageDecodeError,
    InMemoryLoader,
    build_loaders,
)
from test_data_folder import save


def pattern(cls: int, seed: int, size: int = 32, mode: str = "L") -> Image.Image:
    """A class-dependent picture: a bright band whose position is the class, plus noise."""
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 60, (size, size), dtype=np.uint8)
    band = size // 4
    data[:, cls * band : (cls + 1) * band] += 180
    image = Image.fromarray(data, "L")
    return image if mode == "L" else image.convert(mode)


def make_folder(root: Path, *, classes=3, train=12, val=4, size=32, mode="L") -> Path:
    for c in range(classes):
        for i in range(train):
            save(root / "train" / f"c{c}" / f"{i}.png", pattern(c, 100 * c + i, size, mode))
        for i in range(val):
            save(root / "val" / f"c{c}" / f"{i}.png", pattern(c, 1000 + 100 * c + i, size, mode))
    return root


def loaders(root: Path, *, in_chans: int | None = None, **fields):
    fields.setdefault("batch_size", 4)
    fields.setdefault("num_workers", 0)
    return build_loaders(DataConfig(f"imagefolder:{root}", **fields), in_chans=in_chans)


def test_small_gray_images_go_to_memory_at_their_own_size(tmp_path):
    root = make_folder(tmp_path / "small")
    train, val, info = loaders(root)
    assert isinstance(train, InMemoryLoader) and isinstance(val, InMemoryLoader)
    assert (info.image_size, info.channels, info.in_chans) == (32, 1, 1)
    assert info.plan.startswith("image folder: 36 train / 12 val, 3 classes, 32x32 gray -> ")
    assert "small-image pipeline at 32 px, in memory (48 KB)" in info.plan
    # the folder's own statistics, not ImageNet's
    assert info.mean != IMAGENET_MEAN[:1] and 0.2 < info.mean[0] < 0.6
    x, y = next(iter(train))
    assert x.shape == (4, 1, 32, 32) and abs(float(x.mean())) < 1.0
    assert info.preprocessing()["resize"] == 32  # predict sees what training saw
    assert info.scan["counts"]["train"] == {"c0": 12, "c1": 12, "c2": 12}
    assert info.scan["size_histogram"] == {"<=32": 48} and info.scan["modes"] == {"L": 48}
    # the decoded evaluation images are the files' pixels, normalized
    raw = np.asarray(Image.open(root / "val" / "c0" / "0.png"), dtype=np.float32) / 255
    xv, _ = next(iter(val))
    expected = (torch.from_numpy(raw) - info.mean[0]) / info.std[0]
    assert torch.allclose(xv[0, 0], expected, atol=1e-5)


def test_large_images_keep_the_imagenet_pipeline_streamed(tmp_path):
    root = make_folder(tmp_path / "large", classes=2, train=4, val=2, size=96, mode="RGB")
    train, _, info = loaders(root)
    assert isinstance(train, FolderLoader)
    assert (info.image_size, info.channels) == (224, 3) and info.mean == IMAGENET_MEAN
    assert "ImageNet pipeline at 224 px, streamed (typical side 96 px > 64)" in info.plan
    x, _ = next(iter(train))
    assert x.shape == (4, 3, 224, 224)


def test_every_choice_can_be_overridden(tmp_path):
    root = make_folder(tmp_path / "small")
    _, _, info = loaders(root, pipeline="imagenet")
    assert info.image_size == 224 and "ImageNet pipeline" in info.plan
    assert "pipeline=imagenet asked for" in info.plan
    train, _, info = loaders(root, image_size=24, in_chans=3)
    assert next(iter(train))[0].shape == (4, 3, 24, 24) and "image_size=24 asked for" in info.plan
    train, _, info = loaders(root, in_memory=False)
    assert isinstance(train, FolderLoader) and next(iter(train))[0].shape == (4, 1, 32, 32)
    train, _, info = loaders(root, memory_budget_mb=0.01)
    assert isinstance(train, FolderLoader) and "over the 0.01 MB memory budget" in info.plan
    with pytest.raises(ValueError, match="pipeline='tiny': must be one of auto, small"):
        loaders(root, pipeline="tiny")


def test_a_test_folder_is_the_default_evaluation_split(tmp_path):
    root = make_folder(tmp_path / "three")
    for c in range(3):
        save(root / "test" / f"c{c}" / "0.png", pattern(c, 7))
    _, evaluation, info = loaders(root)
    assert evaluation.dataset_size == 3 and "/ 3 test," in info.plan
    _, evaluation, _ = loaders(root, eval_split="val")
    assert evaluation.dataset_size == 12


def test_one_class_is_a_clear_error(tmp_path):
    root = tmp_path / "one"
    for i in range(4):
        save(root / "only" / f"{i}.png", pattern(0, i))
    with pytest.raises(
        DataError, match=r"has 1 class folder \(only\): a classifier needs at least 2"
    ):
        loaders(root)


def test_mixed_sizes_modes_and_stray_files(tmp_path):
    root = make_folder(tmp_path / "mixed", classes=2, train=6, val=2)
    cls = root / "train" / "c0"
    save(cls / "huge.png", Image.new("RGB", (2000, 1500), (200, 10, 10)))
    save(cls / "rgba.png", Image.new("RGBA", (32, 32), (10, 20, 30, 0)))
    save(cls / "cmyk.jpg", Image.new("CMYK", (32, 32), (0, 0, 0, 0)))
    palette = Image.new("P", (32, 32), 1)
    palette.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    save(cls / "palette.png", palette)
    save(cls / "gray16.png", Image.fromarray(np.full((32, 32), 40000, np.uint16)))
    (cls / "notes.txt").write_text("not an image")
    (root / "train" / "c1" / "labels.csv").write_text("a,b\n")
    train, _, info = loaders(root)
    assert info.channels == 3  # colour images among the gray ones: RGB for all
    assert info.image_size == 32 and isinstance(train, InMemoryLoader)
    assert train.images.shape == (17, 3, 32, 32)
    huge = train.images[train.labels == 0]
    assert any(bool((img[0] > 150).all() and (img[1] < 50).all()) for img in huge)  # resized
    scan = info.scan
    assert scan["non_images"] == 2 and scan["max_side"] == 2000
    assert any("sizes vary from 32 to 2000 px" in w for w in scan["warnings"])
    assert any("2 file(s) without an image extension left out" in w for w in scan["warnings"])
    assert set(scan["modes"]) >= {"L", "RGB", "RGBA", "CMYK", "P", "I;16"}


def test_corrupt_files_fail_naming_them_or_are_counted(tmp_path, caplog):
    root = make_folder(tmp_path / "bad", classes=2, train=6, val=2)
    (root / "train" / "c1" / "broken.png").write_bytes(b"\x89PNG not really")
    (root / "train" / "c1" / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageDecodeError) as err:
        loaders(root)
    message = str(err.value)
    assert "broken.png" in message or "empty.jpg" in message
    assert "2 unreadable file(s) in all" in message and "--skip-bad-images" in message
    with caplog.at_level(logging.WARNING, logger="resnetlab.data"):
        train, _, info = loaders(root, skip_bad_images=True)
    assert train.dataset_size == 12 and "skipped 2 unreadable image(s)" in caplog.text
    assert len(info.scan["unreadable"]) == 2


def test_imbalance_and_tiny_classes_are_warned_about(tmp_path):
    root = make_folder(tmp_path / "imb", classes=2, train=20, val=2)
    for i in range(2):
        save(root / "train" / "rare" / f"{i}.png", pattern(2, i))
    save(root / "val" / "rare" / "0.png", pattern(2, 9))
    train, _, info = loaders(root, batch_size=8)
    warnings = " ".join(info.scan["warnings"])
    assert "imbalanced: 'c0' has 20 training images, 'rare' 2 (10.0x)" in warnings
    assert "fewer than 5 training images: 'rare' (2)" in warnings
    assert len(train) == 42 // 8  # a class smaller than the batch still trains


def test_training_run_records_the_scan_and_prints_the_plan(tmp_path):
    root = make_folder(tmp_path / "run-data", classes=2, train=8, val=2)
    (root / "train" / "c0" / "readme.md").write_text("x")
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "resnetlab", "train", "--model", "resnet8_pool",
         "--data", f"imagefolder:{root}", "--batch-size", "4", "--max-iters", "3",
         "--output", str(out), "--quiet", "precision=fp32"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    plan = "image folder: 16 train / 4 val, 2 classes, 32x32 gray -> small-image pipeline"
    assert plan in proc.stderr
    assert "warning: 1 file(s) without an image extension left out" in proc.stderr
    scan = json.loads((out / "data_scan.json").read_text())
    assert scan["plan"].startswith(plan) and scan["counts"]["train"] == {"c0": 8, "c1": 8}
    report = (out / "report.md").read_text()
    assert "## Data" in report and "| c0 | 8 | 2 |" in report and "readme.md" in report


def test_batch_size_fits_a_small_training_set(tmp_path):
    from resnetlab.data.build import fit_batch_size

    assert fit_batch_size(None, 60000, 1, "x") == 128
    assert fit_batch_size(None, 240, 1, "x") == 16  # 15 steps, not 1 step of 128
    assert fit_batch_size(None, 240, 2, "x") == 8
    assert fit_batch_size(None, 5, 1, "x") == 5  # all of them: never a batch of 1
    assert fit_batch_size(None, 12, 1, "x") == 8  # at least 8 where there are 8
    assert fit_batch_size(64, 240, 1, "x") == 64
    with pytest.raises(ValueError, match="batch_size=300 is larger .* or leave it out"):
        fit_batch_size(300, 240, 1, "x")
    root = make_folder(tmp_path / "few", classes=3, train=20, val=2)
    train, evaluation, _ = loaders(root, batch_size=None)
    # 60 images: batches of 8 (not 4), 7 steps (the last 4, under 10% of the epoch, dropped)
    assert train.batch_size == 8 and len(train) == 7 and evaluation.batch_size == 8
