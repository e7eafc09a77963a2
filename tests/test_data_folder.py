"""Image decoding and ImageFolder datasets, on real image files of many kinds."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import random_pixels
from resnetlab.config import DataConfig
from resnetlab.data import (
    IMAGENET_MEAN,
    DataError,
    FolderLoader,
    ImageDecodeError,
    build_loaders,
    load_image,
)


def save(path: Path, image: Image.Image, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return path


def rgb_noise(seed: int, size=(24, 20)) -> Image.Image:
    data = random_pixels(seed, (size[1], size[0], 3))
    return Image.fromarray(data, "RGB")


def write_good_images(folder: Path) -> dict[str, Path]:
    """One file per kind of image Pillow can hand us."""
    palette = Image.new("P", (20, 20), 1)
    palette.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    rotated = Image.new("RGB", (40, 20), (0, 128, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees on display
    g16 = np.full((20, 20), 65535, np.uint16)
    g16[:, :10] = 32896  # 128 * 257
    return {
        "rgb": save(folder / "rgb.png", rgb_noise(0)),
        "gray": save(folder / "gray.png", Image.new("L", (20, 20), 100)),
        "rgba": save(folder / "rgba.png", Image.new("RGBA", (20, 20), (10, 20, 30, 0))),
        "palette": save(folder / "palette.png", palette, transparency=0),
        "cmyk": save(folder / "cmyk.jpg", Image.new("CMYK", (20, 20), (0, 0, 0, 0))),
        "gray16": save(folder / "gray16.png", Image.fromarray(g16)),
        "webp": save(folder / "photo.webp", rgb_noise(1)),
        "rotated": save(folder / "rotated.jpg", rotated, exif=exif),
        "jpeg": save(folder / "photo.jpg", rgb_noise(2)),
    }


def write_bad_images(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "corrupt.jpg").write_bytes(b"this is not a jpeg at all" * 10)
    (folder / "empty.png").write_bytes(b"")
    whole = save(folder / "whole.png", rgb_noise(3, (64, 64)))
    (folder / "truncated.png").write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    whole.unlink()
    return {
        "corrupt": folder / "corrupt.jpg",
        "empty": folder / "empty.png",
        "truncated": folder / "truncated.png",
    }


# ------------------------------------------------------------------------ load_image


def test_load_image_converts_every_mode(tmp_path):
    files = write_good_images(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. Pillow's palette-transparency warning
        for name, path in files.items():
            rgb, gray = load_image(path), load_image(path, channels=1)
            assert (rgb.mode, gray.mode) == ("RGB", "L"), name
            assert rgb.size == gray.size
    assert np.asarray(load_image(files["gray"]))[0, 0].tolist() == [100, 100, 100]
    assert np.asarray(load_image(files["cmyk"]))[0, 0].tolist() == [255, 255, 255]
    assert np.asarray(load_image(files["palette"]))[0, 0].tolist() == [200, 10, 10]
    g16 = np.asarray(load_image(files["gray16"], channels=1))
    assert g16[0, 0] == 128 and g16[0, -1] == 255  # rescaled, not clipped
    assert load_image(files["rotated"]).size == (20, 40)  # EXIF orientation applied


def test_load_image_errors_name_the_file(tmp_path, monkeypatch):
    bad = write_bad_images(tmp_path)
    cases = {
        "empty": "empty file",
        "corrupt": "not an image in a format Pillow can read",
        "truncated": "corrupt or truncated image",
    }
    for name, reason in cases.items():
        with pytest.raises(ImageDecodeError) as err:
            load_image(bad[name])
        assert str(bad[name]) in str(err.value) and reason in str(err.value)
        assert err.value.path == str(bad[name]) and isinstance(err.value, DataError)
    with pytest.raises(ImageDecodeError, match=r"missing\.png: cannot read the file"):
        load_image(tmp_path / "missing.png")
    big = save(tmp_path / "big.png", rgb_noise(4, (32, 32)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(
        ImageDecodeError, match=r"big\.png: refused as a possible decompression bomb"
    ):
        load_image(big)
    with pytest.raises(ValueError, match="channels=2: must be 1"):
        load_image(big, channels=2)


# ------------------------------------------------------------------------ ImageFolder


@pytest.fixture
def split_tree(tmp_path) -> Path:
    """root/train/{cat,dog} with 6 images each; root/val with 2 good each + 3 bad in dog."""
    root = tmp_path / "pets"
    for k, cls in enumerate(("cat", "dog")):
        for i in range(6):
            save(root / "train" / cls / f"{i}.png", rgb_noise(10 * k + i))
        for i in range(2):
            save(root / "val" / cls / f"{i}.jpg", rgb_noise(100 + 10 * k + i))
    write_bad_images(root / "val" / "dog")
    save(root / "train" / ".ipynb_checkpoints" / "x.png", rgb_noise(5))  # hidden: ignored
    (root / "train" / "cat" / "._0.png").write_bytes(b"\x00\x05resource fork")  # hidden
    return root


def folder_loaders(
    root: Path,
    *,
    in_chans: int | None = None,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    **fields,
):
    fields.setdefault("batch_size", 4)
    fields.setdefault("image_size", 16)
    fields.setdefault("num_workers", 0)
    fields.setdefault("pipeline", "imagenet")  # the streamed path; auto is tested apart
    data = DataConfig(f"imagefolder:{root}", **fields)
    return build_loaders(data, in_chans=in_chans, seed=seed, rank=rank, world_size=world_size)


def test_folder_layout_info_and_batches(split_tree):
    train, val, info = folder_loaders(split_tree, batch_size=5)
    assert isinstance(train, FolderLoader)
    assert info.class_names == ("cat", "dog") and info.num_classes == 2
    assert (info.image_size, info.resize, info.channels, info.mean) == (16, 18, 3, IMAGENET_MEAN)
    assert info.preprocessing()["resize"] == 18
    # 12 at batch 5: dropping the last 2 would leave out 17% of every epoch, so it is kept
    assert train.dataset_size == 12 and len(train) == 3 and train.num_samples == 12
    assert val.dataset_size == 7 and len(val) == 2
    state = torch.get_rng_state()
    train.set_epoch(0)
    batches = list(train)
    assert torch.equal(torch.get_rng_state(), state)  # augmentation uses its own generators
    x, y = batches[0]
    assert x.shape == (5, 3, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert -3 < float(x.mean()) < 3
    assert torch.cat([b[1] for b in batches]).unique().tolist() == [0, 1]
    _, _, gray = folder_loaders(split_tree, in_chans=1)
    assert gray.channels == 1 and len(gray.mean) == 1


def test_folder_bad_images_fail_with_the_file_name(split_tree):
    _, val, _ = folder_loaders(split_tree, batch_size=4)
    with pytest.raises(ImageDecodeError) as err:
        list(val)
    msg = str(err.value)
    assert str(split_tree / "val" / "dog") in msg and "--skip-bad-images" in msg


def test_folder_bad_images_skipped_with_a_warning(split_tree, caplog):
    _, val, _ = folder_loaders(split_tree, batch_size=4, eval_batch_size=3, skip_bad_images=True)
    with caplog.at_level(logging.WARNING, logger="resnetlab.data"):
        labels = torch.cat([y for _, y in val])
    assert labels.tolist() == [0, 0, 1, 1]  # the 4 good images, each once
    assert "skipped 3 unreadable image(s)" in caplog.text


def test_folder_resume_is_exact_and_eval_shards_cover_once(split_tree):
    train, _, _ = folder_loaders(split_tree, batch_size=3, seed=4)
    train.set_epoch(2)
    full = list(train)
    resumed = list(train.iter_from(2))
    assert len(full) == 4 and len(resumed) == 2
    for (x, y), (xr, yr) in zip(full[2:], resumed, strict=True):
        assert torch.equal(x, xr) and torch.equal(y, yr)
    train.set_epoch(3)
    assert not torch.equal(full[0][0], next(iter(train))[0])
    whole = torch.cat([x for x, _ in folder_loaders(split_tree, skip_bad_images=True)[1]])
    shards = [
        x
        for r in range(3)
        for x, _ in folder_loaders(split_tree, skip_bad_images=True, rank=r, world_size=3)[1]
    ]
    assert torch.equal(torch.cat(shards), whole)  # rank order = dataset order, each once


def test_folder_workers_match_in_process_and_propagate_errors(split_tree):
    kwargs = dict(batch_size=4, seed=1, augment="standard", random_erasing=0.5)
    inline, _, _ = folder_loaders(split_tree, **kwargs)
    workers, bad_val, _ = folder_loaders(split_tree, num_workers=1, **kwargs)
    inline.set_epoch(1)
    workers.set_epoch(1)
    for (x, y), (xw, yw) in zip(inline, workers, strict=True):
        assert torch.equal(x, xw) and torch.equal(y, yw)
    with pytest.raises(ImageDecodeError, match=r"(?s)val/dog/.*--skip-bad-images"):
        list(bad_val)


def test_folder_epoch_without_augmentation_uses_the_eval_transform(split_tree):
    aug, _, _ = folder_loaders(split_tree, batch_size=4, seed=2, random_erasing=0.5)
    plain, _, _ = folder_loaders(split_tree, batch_size=4, seed=2, augment="none")
    aug.set_epoch(1, augment=False)
    plain.set_epoch(1)
    for (xa, ya), (xp, yp) in zip(aug, plain, strict=True):
        assert torch.equal(ya, yp) and torch.equal(xa, xp)  # resize + center crop, no flips
    aug.set_epoch(1)
    assert not torch.equal(next(iter(aug))[0], next(iter(plain))[0])


def test_single_folder_split_and_layout_errors(tmp_path):
    root = tmp_path / "flat"
    for cls in ("a", "b", "c"):
        for i in range(10):
            save(root / cls / f"{i}.png", rgb_noise(i))
    train, val, info = folder_loaders(root, batch_size=4)  # default val_fraction 0.1
    assert info.num_classes == 3 and val.dataset_size == 3 and train.dataset_size == 27
    train, val, _ = folder_loaders(root, batch_size=4, val_fraction=0.4, seed=2)
    assert val.dataset_size == 12
    with pytest.raises(ValueError, match="eval_split='test': .* has no test/ folder"):
        folder_loaders(root, eval_split="test")
    with pytest.raises(ValueError, match=r"batch_size=64 is larger than the training set"):
        folder_loaders(root, batch_size=64)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(
        DataError, match=rf"{empty} has no class folders; expected .*<class>/<image>"
    ):
        folder_loaders(empty)
    with pytest.raises(DataError, match=r"nowhere is not a folder"):
        folder_loaders(tmp_path / "nowhere")
    (root / "d").mkdir()
    (root / "d" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match=r"no image file for class\(es\) d \(d/ holds 1 other"):
        folder_loaders(root)


def test_split_folders_errors(split_tree):
    with pytest.raises(ValueError, match=r"val_fraction=0.2: .* already has train/ and val/"):
        folder_loaders(split_tree, val_fraction=0.2)
    save(split_tree / "val" / "bird" / "0.png", rgb_noise(0))
    with pytest.raises(DataError, match="class folders that the training split lacks: bird"):
        folder_loaders(split_tree)
