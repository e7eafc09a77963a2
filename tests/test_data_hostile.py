"""Image folders and inputs as they come in the wild: link loops, links out of the folder,
the same file twice, GIFs, broken files decoded in worker processes, huge images, missing
inputs, a val/ folder that must be called val, and training sets small against the batch."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, JpegImagePlugin

from resnetlab.config import DataConfig
from resnetlab.data import DataError, ImageDecodeError, NoImagesError, build_loaders, load_image
from resnetlab.data import images as images_mod
from resnetlab.data.build import default_eval_split
from resnetlab.data.files import IMAGE_EXTENSIONS, is_image_file, walk_files
from resnetlab.data.folder import folder_splits
from resnetlab.data.loader import train_batches
from resnetlab.errors import ResnetlabError
from resnetlab.inference.predict import find_images, run_predict


def picture(seed: int, size=(12, 10), mode="RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(data, "RGB").convert(mode)


def save(path: Path, image: Image.Image, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return path


def flat_folder(root: Path, classes=("cat", "dog"), n=9, ext="png") -> Path:
    for k, cls in enumerate(classes):
        for i in range(n):
            save(root / cls / f"{i}.{ext}", picture(10 * k + i))
    return root


def real(samples) -> list[str]:
    return [os.path.realpath(p) for p, _ in samples]


def loaders(root: Path, *, seed: int = 0, **fields):
    fields.setdefault("batch_size", 4)
    fields.setdefault("image_size", 16)
    fields.setdefault("num_workers", 0)
    fields.setdefault("pipeline", "imagenet")
    return build_loaders(DataConfig(f"imagefolder:{root}", **fields), seed=seed)


# ----------------------------------------------------------------------------- links


def test_link_loops_neither_multiply_images_nor_leak_them_into_val(tmp_path):
    root = flat_folder(tmp_path / "pets")  # 18 files
    os.symlink("..", root / "cat" / "loop")  # back to the folder itself
    os.symlink("../..", root / "dog" / "up")  # above the folder
    os.symlink("0.png", root / "dog" / "again.png")  # the same file under a second name
    splits = folder_splits(root)
    everything = real(splits.train) + real(splits.val)
    assert len(everything) == 18 and len(set(everything)) == 18
    assert not set(real(splits.val)) & set(real(splits.train))
    assert len(splits.val) == 2  # 10% of each class of 9
    notes = " ".join(splits.notes)
    assert "2 link(s) to folders not followed" in notes and "cat/loop" in notes
    assert "dog/again.png" in notes and "left out as another path" in notes
    _, _, info = loaders(root)
    assert any("link(s) to folders not followed" in w for w in info.scan["warnings"])


def test_split_folders_never_share_a_file(tmp_path):
    root = tmp_path / "pets"
    for split, n in (("train", 6), ("val", 2)):
        flat_folder(root / split, n=n, ext="png")
    for i in range(2):  # different pictures in val
        save(root / "val" / "cat" / f"{i}.png", picture(100 + i))
        save(root / "val" / "dog" / f"{i}.png", picture(200 + i))
    os.symlink("../..", root / "train" / "cat" / "up")  # would bring val/ into training
    os.symlink("../../train/cat/0.png", root / "val" / "cat" / "leak.png")
    os.link(root / "train" / "dog" / "1.png", root / "val" / "dog" / "hard.png")
    splits = folder_splits(root)
    assert len(splits.train) == 12 and len(splits.val) == 4
    assert not set(real(splits.val)) & set(real(splits.train))
    assert sorted(Path(p).name for p, _ in splits.val) == ["0.png", "0.png", "1.png", "1.png"]
    notes = " ".join(splits.notes)
    assert "train/cat/up" in notes and "2 file(s) in" in notes
    # a val folder made only of links to training images is no evaluation set
    for path in (root / "val" / "dog").iterdir():
        path.unlink()
    os.symlink("../../train/dog/2.png", root / "val" / "dog" / "x.png")
    with pytest.raises(DataError, match=r"class\(es\) dog \(its 1 image\(s\) are links to files"):
        folder_splits(root)


def test_links_to_files_anywhere_are_read_links_to_folders_out_of_the_tree_are_not(tmp_path):
    pool = flat_folder(tmp_path / "pool", classes=("all",), n=6)
    outside = flat_folder(tmp_path / "outside", classes=("more", "birds"), n=3)
    root = tmp_path / "subset"
    for i in range(6):  # a split made of links into a pool of images, a common layout
        cls = "cat" if i < 3 else "dog"
        (root / cls).mkdir(parents=True, exist_ok=True)
        os.symlink(pool / "all" / f"{i}.png", root / cls / f"{i}.png")
    os.symlink(outside / "more", root / "cat" / "extra")  # out of the class folder: not read
    os.symlink(outside / "birds", root / "bird")  # a class folder may itself be a link
    walk = walk_files(root / "cat")
    assert [Path(f).name for f in walk.files] == ["0.png", "1.png", "2.png"]
    assert walk.skipped_links == [str(root / "cat" / "extra")]
    splits = folder_splits(root, val_fraction=0.34)
    assert splits.classes == ["bird", "cat", "dog"]
    labels = [label for _, label in splits.train + splits.val]
    assert [labels.count(k) for k in range(3)] == [3, 3, 3]
    assert not any("more" in p for p in real(splits.train + splits.val))


def test_walk_lists_like_torchvision_and_skips_hidden_folders(tmp_path):
    root = tmp_path / "c"
    for rel in ("b.png", "a/x.png", "a-b/y.png", "a/z/w.png", ".cache/h.png", "a/.k.png"):
        save(root / rel, picture(0))
    (root / "a" / "notes.txt").write_text("x")
    walk = walk_files(root)
    rels = [os.path.relpath(f, root) for f in walk.files]
    # torchvision's make_dataset order: sorted by folder path, then by name
    assert rels == ["b.png", "a/notes.txt", "a/x.png", "a-b/y.png", "a/z/w.png"]
    assert walk.others == [str(root / "a" / "notes.txt")]
    assert walk.describe_others() == "1 other file(s): 1 .txt"


# ---------------------------------------------------------------------- image formats


def test_one_list_of_image_extensions_gifs_included(tmp_path):
    assert ".gif" in IMAGE_EXTENSIONS and {".webp", ".tif", ".tiff", ".bmp"} <= set(
        IMAGE_EXTENSIONS
    )
    for name in ("a.GIF", "b.Webp", "c.TIF", "d.tiff", "e.bmp", "f.JPEG"):
        assert is_image_file(name), name
    assert not is_image_file(".hidden.gif") and not is_image_file("notes.txt")
    from resnetlab.inference import predict

    assert predict._is_image_file is is_image_file  # predict reads the same list


def test_gif_webp_tif_bmp_are_read_by_folders_and_predict(tmp_path):
    root = tmp_path / "kinds"
    palette = Image.new("P", (12, 10), 1)
    palette.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    frames = [Image.new("RGB", (12, 10), c) for c in ((250, 0, 0), (0, 250, 0))]
    for cls in ("a", "b"):
        save(root / cls / "still.gif", palette, transparency=0)
        frames[0].save(root / cls / "anim.GIF", save_all=True, append_images=frames[1:])
        save(root / cls / "photo.webp", picture(1), lossless=True)
        save(root / cls / "scan.tif", picture(2))
        save(root / cls / "old.bmp", picture(3))
    train, val, info = loaders(root, val_fraction=0.2, batch_size=2)
    assert train.dataset_size + val.dataset_size == 10 and info.scan["non_images"] == 0
    assert load_image(root / "a" / "anim.GIF").getpixel((0, 0)) == (250, 0, 0)  # frame 1
    assert load_image(root / "a" / "still.gif").getpixel((0, 0)) == (200, 10, 10)
    found, missing = find_images([root / "a", f"{root}/b/*"])
    assert len(found) == 10 and not missing
    assert {p.suffix for p in found} == {".gif", ".GIF", ".webp", ".tif", ".bmp"}


# ----------------------------------------------------------- decode errors in workers


def test_a_broken_file_decoded_in_a_worker_is_one_clean_line(tmp_path):
    root = tmp_path / "pets"
    for split, n in (("train", 4), ("val", 2)):
        flat_folder(root / split, n=n)
    bad = root / "val" / "dog" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg" * 4)
    (root / "train" / "cat" / "empty.png").write_bytes(b"")
    for workers in (1, 2):
        train, val, _ = loaders(root, num_workers=workers, batch_size=2)
        for loader, path, reason in (
            (val, bad, "corrupt or truncated image"),
            (train, root / "train" / "cat" / "empty.png", "empty file (0 bytes)"),
        ):
            with pytest.raises(ImageDecodeError) as err:
                for _ in loader:
                    pass
            message = str(err.value)
            assert message.startswith(f"cannot decode image {path}: {reason}"), message
            assert message.endswith("pass --skip-bad-images (data.skip_bad_images=true) to "
                                    "leave unreadable files out")  # fmt: skip
            assert "\n" not in message and "Traceback" not in message and "worker" not in message
            assert err.value.path == str(path) and err.value.reason.startswith(reason)
            assert isinstance(err.value, ResnetlabError)
    _, val, _ = loaders(root, num_workers=1, batch_size=2, skip_bad_images=True)
    assert sum(len(y) for _, y in val) == 4


# ---------------------------------------------------------------------- huge images


def spy_on_decoding(monkeypatch) -> list[tuple[int, int]]:
    """The sizes images have when conversion starts (after any reduction)."""
    sizes: list[tuple[int, int]] = []
    convert = images_mod._convert

    def spy(image, mode):
        sizes.append(image.size)
        return convert(image, mode)

    monkeypatch.setattr(images_mod, "_convert", spy)
    return sizes


def test_load_image_min_side_decodes_reduced_and_keeps_what_matters(tmp_path, monkeypatch):
    sizes = spy_on_decoding(monkeypatch)
    loaded = []
    load = JpegImagePlugin.JpegImageFile.load

    def spy_load(self):
        loaded.append(self.size)  # after draft(): the size the DCT decodes at
        return load(self)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "load", spy_load)
    jpeg = save(tmp_path / "big.jpg", Image.new("RGB", (3200, 2400), (30, 120, 200)), quality=95)
    image = load_image(jpeg, min_side=100)
    assert loaded[0] == (400, 300)  # decoded at 1/8: 0.36 MB, not 23 MB
    assert sizes == [(134, 100)]  # and reduced by 3 before any conversion
    assert image.size == (134, 100)
    assert np.abs(np.asarray(image).astype(int) - [30, 120, 200]).max() <= 3
    sizes.clear()
    png = save(tmp_path / "big.png", Image.new("RGB", (2000, 1500), (9, 99, 199)))
    image = load_image(png, min_side=100)
    assert sizes == [(134, 100)] and image.size == (134, 100)  # box-reduced by 15 at once
    assert np.asarray(image)[50, 50].tolist() == [9, 99, 199]
    sizes.clear()
    palette = Image.new("P", (1200, 800), 1)
    palette.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    image = load_image(save(tmp_path / "pal.png", palette), min_side=100)
    assert image.size == (150, 100) and image.getpixel((3, 3)) == (200, 10, 10)  # not indices
    g16 = save(tmp_path / "g16.png", Image.fromarray(np.full((900, 600), 32896, np.uint16)))
    assert np.asarray(load_image(g16, channels=1, min_side=100)).tolist()[0][:2] == [128, 128]
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    rotated = save(tmp_path / "rot.jpg", Image.new("RGB", (1600, 800), 5), exif=exif)
    assert load_image(rotated, min_side=100).size == (100, 200)  # oriented, then reduced
    small = save(tmp_path / "small.png", picture(0, (150, 120)))
    assert load_image(small, min_side=100).size == (150, 120)  # never below min_side
    with pytest.raises(ValueError, match="give one of them"):
        load_image(small, min_side=10, max_side=10)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageDecodeError, match="decompression bomb"):
        load_image(png, min_side=10)  # the guard still looks at the declared size


def test_folder_datasets_decode_huge_images_reduced(tmp_path, monkeypatch):
    root = tmp_path / "photos"
    for split in ("train", "val"):
        for k, cls in enumerate(("a", "b")):
            save(root / split / cls / "0.jpg", Image.new("RGB", (2400, 1600), (200 * k, 50, 50)))
            save(root / split / cls / "1.png", Image.new("RGB", (1200, 900), (50, 200 * k, 50)))
    sizes = spy_on_decoding(monkeypatch)
    train, val, info = loaders(root, batch_size=2, augment="none")
    list(val)
    # eval resizes the shorter side to 18: JPEG at 1/8 (300x200) and reduced by 11
    assert max(min(s) for s in sizes) < 2 * info.resize, sizes
    sizes.clear()
    train, _, _ = loaders(root, batch_size=2)  # RandomResizedCrop: 4x the crop kept
    x, _ = next(iter(train))
    assert x.shape == (2, 3, 16, 16)
    assert all(64 <= min(s) < 128 for s in sizes), sizes
    sizes.clear()
    loaders(root, batch_size=2, pipeline="small", in_memory=True)  # the in-memory decode
    assert all(min(s) < 32 for s in sizes) and len(sizes) == 8, sizes


# ------------------------------------------------------------------- predict's inputs


def test_predict_says_what_each_input_is_instead_of_images(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    for name in ("a.txt", "b.txt", "c.csv"):
        (docs / name).write_text("x")
    with pytest.raises(NoImagesError) as err:
        run_predict(["run", str(tmp_path / "cat.png")])
    assert str(err.value) == f"no images found: {tmp_path / 'cat.png'}: no such file or folder"
    assert isinstance(err.value, ResnetlabError) and isinstance(err.value, ValueError)
    with pytest.raises(NoImagesError, match=r"docs: no image file in this folder \(3 other "
                       r"file\(s\): 2 \.txt, 1 \.csv\); image extensions: \.jpg"):  # fmt: skip
        run_predict(["run", str(docs)])
    with pytest.raises(NoImagesError, match=r"\*\.txt: matches 2 file\(s\), none an image"):
        run_predict(["run", f"{docs}/*.txt"])
    os.symlink(tmp_path / "gone.png", tmp_path / "dangling.png")
    with pytest.raises(NoImagesError, match="dangling.png: a broken link"):
        run_predict(["run", str(tmp_path / "dangling.png"), f"{docs}/*.jpg"])
    assert find_images([docs]) == ([], [str(docs)])


def test_predict_globs_and_folders_survive_link_loops(tmp_path, caplog):
    root = flat_folder(tmp_path / "pics")
    os.symlink("..", root / "cat" / "loop")
    os.symlink("..", root / "dog" / "loop")  # two loops: glob's own ** explodes
    os.symlink(root / "cat" / "0.png", root / "dog" / "same.png")
    for spec in (root, f"{root}/**/*.png", f"{root}/**", f"{root}/*/*.png"):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            found, missing = find_images([spec])
        assert len(found) == 18 and not missing, spec
        if "*" not in str(spec) or "**" in str(spec):  # the folder walked: its links counted
            assert "2 link(s) to folders not followed" in caplog.text, spec
    found, _ = find_images([f"{root}/**/cat", root / "cat" / "1.png", f"{root}/*/loop/cat/*.png"])
    assert [p.name for p in found] == [f"{i}.png" for i in range(9)]  # cat/ once, 1.png once


# ------------------------------------------------------------------ the eval split name


def test_the_evaluated_split_is_named_as_it_is(tmp_path):
    root = tmp_path / "pets"
    for split, n in (("train", 4), ("val", 2)):
        flat_folder(root / split, n=n)
    _, val, info = loaders(root)
    assert info.eval_split == "val" == default_eval_split(f"imagefolder:{root}")
    assert "8 train / 4 val" in info.plan and val.split == "val"
    _, _, info = loaders(root, pipeline="small")  # the in-memory path
    assert info.eval_split == "val"
    flat_folder(root / "test", n=1)
    _, test, info = loaders(root)
    assert info.eval_split == "test" == default_eval_split(f"imagefolder:{root}")
    assert test.dataset_size == 2 and "/ 2 test" in info.plan
    _, _, info = loaders(root, eval_split="val")
    assert info.eval_split == "val"
    assert build_loaders(DataConfig("synthetic:n=64,size=8", batch_size=8))[2].eval_split == "test"
    flat = flat_folder(tmp_path / "flat", n=10)
    assert loaders(flat)[2].eval_split == "val" == default_eval_split(f"imagefolder:{flat}")


# ------------------------------------------------------------ the last partial batch


def test_the_last_partial_batch_is_kept_when_dropping_it_would_waste_the_epoch(tmp_path):
    assert train_batches(240, 128) == 2  # not 1 step with 112 images left out
    assert train_batches(50_000, 128) == 390  # 80 left out (0.2%): kept steady batches
    assert train_batches(1000, 128) == 8  # 104 = 10.4%: kept
    assert train_batches(1100, 128) == 8  # 76 = 6.9%: dropped
    assert train_batches(9, 8) == 1  # a batch of one sample: never (BatchNorm)
    assert train_batches(10, 8) == 2
    assert train_batches(5, 8) == 1  # fewer than one batch: the whole set
    train, _, _ = build_loaders(DataConfig("synthetic:n=240,size=8,classes=4", batch_size=128))
    train.set_epoch(1)
    labels = [y for _, y in train]
    assert [len(y) for y in labels] == [128, 112] and train.num_samples == 240 == len(train) * 120
    seen = []
    for rank in range(2):  # each rank: 1 batch of 100 and its last 20 (17% of 120)
        data = DataConfig("synthetic:n=240,size=8,classes=4", batch_size=100)
        shard, _, _ = build_loaders(data, rank=rank, world_size=2)
        assert [len(y) for _, y in shard] == [100, 20] and shard.num_samples == 120
        seen += shard.indices().tolist()
    assert sorted(seen) == list(range(240))
    root = flat_folder(tmp_path / "pets", n=12)  # 24 images, batch 5: 4 full + 4 kept
    train, _, _ = loaders(root, val_fraction=0.25, batch_size=5, seed=3)  # 18 training
    train.set_epoch(0)
    assert [len(y) for _, y in train] == [5, 5, 5, 3] and train.num_samples == 18
    tail = list(train.iter_from(3))
    assert len(tail) == 1 and len(tail[0][1]) == 3
