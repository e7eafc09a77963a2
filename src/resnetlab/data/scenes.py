"""Fashion-MNIST scenes: a small detection and segmentation set made of Fashion-MNIST items
(Xiao, Rasul and Vollgraf, "Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine
Learning Algorithms", 2017), written in the COCO format (:mod:`~resnetlab.data.coco`).

Each canvas (default 128 x 128, grayscale) holds 1..``max_items`` garments pasted on a dim
background (a random level, a gentle gradient and a little noise). Each item is cut to its
own extent, scaled so that its longer side is log-uniform in ``size * 20/128 .. size / 2``
px (20..64 at 128 px: small and large objects, as in a real detection set) and placed at a
uniform position inside the canvas. Items may overlap a little: a placement is refused, and
another tried, if it would leave an earlier item with less than :data:`MIN_VISIBLE` of its
pixels visible; an item that finds no place in :data:`PLACEMENT_TRIES` tries is left out.

* instance masks are an item's own pixels (above :data:`MASK_THRESHOLD`) that stay visible
  after the later items are pasted, stored as compressed RLE; boxes are those masks' extents;
* categories are Fashion-MNIST's 10 classes (ids 1..10, in its label order);
* train canvases use items of Fashion-MNIST's training set, val canvases items of its test
  set, so no garment of the validation split was seen in training; each annotation records
  its ``source`` (split and index) and ``visible`` fraction.

Files (``out_dir`` as given, or for the ``fashion-mnist-scenes`` spec
``DATA_DIR/fashion-mnist-scenes/train2000-val500-size128-items5-seed0/``)::

    scenes.json                  how the set was made (format, version, parameters, counts)
    train/instances.json         COCO annotations
    train/images/000000.png ...
    val/instances.json
    val/images/000000.png ...

A set is a pure function of its parameters: canvas ``i`` of a split is drawn from its own
generator seeded by ``(seed, split, i)``, and two builds give the same bytes. It is built in a
hidden temporary folder beside ``out_dir`` and renamed into place once complete, so an
interrupted build leaves no half-made set (at most the hidden folder, after a hard kill).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..errors import ConfigError
from ..io import fsync_dir
from . import catalog
from .coco import INSTANCES, pycocotools_mask, read_json_file
from .errors import DataError, DataFormatError, MissingDataError
from .formats import read_idx_images, read_idx_labels
from .sources import default_data_dir, load_official_split

__all__ = [
    "MASK_THRESHOLD",
    "MIN_VISIBLE",
    "PLACEMENT_TRIES",
    "SCENES_NAME",
    "SceneConfig",
    "ensure_scene_set",
    "read_scene_meta",
    "render_canvas",
    "scene_set_dir",
    "write_scene_set",
]

#: The dataset's name: the spec, and the folder under the data dir.
SCENES_NAME = "fashion-mnist-scenes"
#: ``scenes.json``'s format tag and version; a set of another version is not reused.
FORMAT = "resnetlab-fashion-mnist-scenes"
VERSION = 1
META = "scenes.json"
#: An item's pixels brighter than this (0..255) are its mask; Fashion-MNIST's background is 0.
MASK_THRESHOLD = 16
#: Every item keeps at least this fraction of its pixels visible.
MIN_VISIBLE = 0.75
#: Placements tried for an item before it is left out of its canvas.
PLACEMENT_TRIES = 10
#: Items of fewer pixels (a thin item scaled down) are left out: too small to find.
MIN_ITEM_PIXELS = 24
# Item sizes (longer side) as fractions of the canvas: 20..64 px at 128.
_SMALLEST, _LARGEST = 20 / 128, 1 / 2
_SPLITS = (("train", "train", 0), ("val", "test", 1))  # (split, Fashion-MNIST split, seed part)


def _check_int(name: str, value: object, lo: int, hi: int | None = None) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < lo
        or (hi is not None and value > hi)
    ):
        allowed = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise ConfigError(f"{name}={value!r}: must be an integer {allowed}")


@dataclass(frozen=True)
class SceneConfig:
    """The parameters of a scene set; the set is a pure function of them."""

    n_train: int = 2000
    n_val: int = 500
    size: int = 128
    max_items: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        _check_int("n_train", self.n_train, 1)
        _check_int("n_val", self.n_val, 1)
        _check_int("size", self.size, 32, 1024)
        _check_int("max_items", self.max_items, 1, 20)
        _check_int("seed", self.seed, 0)

    @property
    def item_sizes(self) -> tuple[int, int]:
        """The smallest and largest longer side of an item, in pixels."""
        lo = max(8, round(self.size * _SMALLEST))
        return lo, max(lo, round(self.size * _LARGEST))

    def folder_name(self) -> str:
        """``train2000-val500-size128-items5-seed0``: one folder per parameter set."""
        return (
            f"train{self.n_train}-val{self.n_val}-size{self.size}-items{self.max_items}"
            f"-seed{self.seed}"
        )

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def scene_set_dir(config: SceneConfig, data_dir: str | Path | None = None) -> Path:
    """Where the ``fashion-mnist-scenes`` spec keeps the set of ``config``."""
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    return root / SCENES_NAME / config.folder_name()


# --------------------------------------------------------------------------- rendering


def _background(rng: np.random.Generator, size: int, ramp: tuple[np.ndarray, np.ndarray]):
    """A dim, uneven backdrop: a level, a gradient in a random direction and sensor noise."""
    level = rng.uniform(0.0, 40.0)
    slope = rng.uniform(0.0, 30.0)
    angle = rng.uniform(0.0, 2 * np.pi)
    xx, yy = ramp
    noise = rng.standard_normal((size, size), dtype=np.float32) * 3.0
    bg = level + slope * (np.cos(angle) * xx + np.sin(angle) * yy) + noise
    return np.clip(np.rint(bg), 0, 255).astype(np.uint8)


def _item(image: np.ndarray, side: float) -> tuple[np.ndarray, np.ndarray]:
    """A 28 x 28 item cut to its extent and scaled to ``side`` px (longer side): pixels, mask."""
    solid = image > MASK_THRESHOLD
    rows, cols = np.flatnonzero(solid.any(1)), np.flatnonzero(solid.any(0))
    if not rows.size:
        return image[:0, :0], solid[:0, :0]
    crop = image[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    h, w = crop.shape
    scale = side / max(h, w)
    shape = (max(1, round(w * scale)), max(1, round(h * scale)))
    pixels = np.asarray(Image.fromarray(crop).resize(shape, Image.Resampling.BILINEAR))
    return pixels, pixels > MASK_THRESHOLD


def render_canvas(
    pool: np.ndarray,
    config: SceneConfig,
    rng: np.random.Generator,
    ramp: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """One canvas from the items ``pool`` (uint8 (N, 28, 28)): the uint8 (size, size) image
    and its items, bottom to top, each ``{"index", "mask" (bool), "visible"}`` (``index``
    into ``pool``; ``visible`` the fraction of the item's pixels left visible)."""
    size = config.size
    if ramp is None:
        ramp = _ramp(size)
    canvas = _background(rng, size, ramp)
    owner = np.full((size, size), -1, dtype=np.int16)  # which item each pixel shows
    area = np.zeros(config.max_items, dtype=np.int64)
    shown = np.zeros(config.max_items, dtype=np.int64)
    sources: list[int] = []
    log_lo, log_hi = np.log(config.item_sizes)
    for _ in range(int(rng.integers(1, config.max_items + 1))):
        index = int(rng.integers(len(pool)))
        pixels, mask = _item(pool[index], float(np.exp(rng.uniform(log_lo, log_hi))))
        pixel_count = int(mask.sum())
        if pixel_count < MIN_ITEM_PIXELS:
            continue
        h, w = mask.shape
        k = len(sources)
        for _ in range(PLACEMENT_TRIES):
            y, x = int(rng.integers(size - h + 1)), int(rng.integers(size - w + 1))
            region = owner[y : y + h, x : x + w]
            under = region[mask]
            lost = np.bincount(under[under >= 0], minlength=config.max_items)
            if np.any((shown - lost)[:k] < MIN_VISIBLE * area[:k]):
                continue  # it would hide too much of an earlier item
            shown -= lost
            region[mask] = k
            canvas[y : y + h, x : x + w][mask] = pixels[mask]
            area[k] = shown[k] = pixel_count
            sources.append(index)
            break
    items = [
        {"index": index, "mask": owner == k, "visible": float(shown[k] / area[k])}
        for k, index in enumerate(sources)
    ]
    return canvas, items


def _ramp(size: int) -> tuple[np.ndarray, np.ndarray]:
    axis = np.linspace(-0.5, 0.5, size, dtype=np.float32)
    return axis[None, :], axis[:, None]


def _png(canvas: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(canvas).save(buffer, format="PNG")
    return buffer.getvalue()


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _annotations(
    items: list[dict[str, Any]], labels: np.ndarray, image_id: int, first_id: int, source: str
) -> list[dict[str, Any]]:
    if not items:
        return []
    api = pycocotools_mask()
    masks = np.stack([item["mask"] for item in items], axis=-1).astype(np.uint8)
    rles = api.encode(np.asfortranarray(masks))
    boxes = api.toBbox(rles)
    out = []
    for k, (item, rle, box) in enumerate(zip(items, rles, boxes, strict=True)):
        out.append(
            {
                "id": first_id + k,
                "image_id": image_id,
                "category_id": int(labels[item["index"]]) + 1,
                "bbox": [int(v) for v in box],
                "area": int(item["mask"].sum()),
                "iscrowd": 0,
                "segmentation": {"size": list(rle["size"]), "counts": rle["counts"].decode()},
                "visible": round(item["visible"], 4),
                "source": {"split": source, "index": item["index"]},
            }
        )
    return out


def _render_split(
    folder: Path,
    split: str,
    source: str,
    part: int,
    n: int,
    pool: tuple[np.ndarray, np.ndarray],
    config: SceneConfig,
    bar: Any,
) -> dict[str, int]:
    images_dir = folder / "images"
    images_dir.mkdir(parents=True)
    pixels, labels = pool
    ramp = _ramp(config.size)
    entries, annotations = [], []
    for i in range(n):
        rng = np.random.default_rng([config.seed, part, i])
        canvas, items = render_canvas(pixels, config, rng, ramp)
        name = f"{i:06d}.png"
        _write(images_dir / name, _png(canvas))
        entries.append({"id": i, "file_name": name, "width": config.size, "height": config.size})
        annotations += _annotations(items, labels, i, len(annotations) + 1, source)
        bar.update(1)
    names = catalog.FASHION_MNIST.class_names
    doc = {
        "info": {
            "description": f"Fashion-MNIST scenes, {split} split: items of Fashion-MNIST's "
            f"{source} set on {config.size} px canvases",
            "version": str(VERSION),
            "parameters": config.to_dict(),
        },
        "images": entries,
        "annotations": annotations,
        "categories": [
            {"id": k + 1, "name": name, "supercategory": "fashion"} for k, name in enumerate(names)
        ],
    }
    _write(folder / INSTANCES, json.dumps(doc, separators=(",", ":")).encode())
    return {"images": n, "objects": len(annotations)}


# --------------------------------------------------------------------------- sources


def _fashion_split(
    split: str, source_dir: str | Path | None, data_dir: str | Path | None, download: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST's official ``split``: uint8 (N, 28, 28) images and int64 labels."""
    spec = catalog.FASHION_MNIST
    if source_dir is None:
        images, labels = load_official_split(spec.name, split, data_dir=data_dir, download=download)
        return images[:, 0].numpy(), labels.numpy()
    folder = Path(source_dir).expanduser()
    paths = []
    for member in spec.members(split):
        found = [folder / n for n in (member, member.removesuffix(".gz")) if (folder / n).is_file()]
        if not found:
            raise MissingDataError(
                f"Fashion-MNIST: {member} (gzipped or not) not found in {folder}; give "
                "source_dir=None to look for Fashion-MNIST where the built-in dataset is found"
            )
        paths.append(found[0])
    images, labels = read_idx_images(paths[0])[:, 0], read_idx_labels(paths[1])
    if len(images) != len(labels) or images.shape[1:] != (28, 28) or not len(labels):
        raise DataFormatError(
            f"Fashion-MNIST {split}: {paths[0]} holds {len(images)} images of "
            f"{images.shape[1:]}, {paths[1]} {len(labels)} labels; expected as many 28 x 28 "
            "images as labels"
        )
    if labels.min() < 0 or labels.max() >= spec.num_classes:
        raise DataFormatError(f"{paths[1]}: labels must be 0..{spec.num_classes - 1}")
    return images, labels


# --------------------------------------------------------------------------- writing


def write_scene_set(
    out_dir: str | Path,
    *,
    n_train: int = 2000,
    n_val: int = 500,
    size: int = 128,
    max_items: int = 5,
    seed: int = 0,
    source_dir: str | Path | None = None,
    data_dir: str | Path | None = None,
    download: bool = True,
    progress: bool = True,
) -> Path:
    """Write the Fashion-MNIST scene set of these parameters to ``out_dir`` (module docstring).

    ``source_dir``: a folder holding Fashion-MNIST's four IDX files; None finds them as the
    built-in ``fashion-mnist`` dataset is found (in ``data_dir``, the system folders, or
    downloaded when ``download``). ``out_dir`` must not exist yet (or be empty).
    """
    config = SceneConfig(n_train, n_val, size, max_items, seed)
    return _write_scene_set(
        Path(out_dir).expanduser(),
        config,
        source_dir=source_dir,
        data_dir=data_dir,
        download=download,
        progress=progress,
        exist_ok=False,
    )


def _occupied(path: Path) -> bool:
    return path.is_symlink() or path.is_file() or (path.is_dir() and any(path.iterdir()))


def _write_scene_set(
    out: Path,
    config: SceneConfig,
    *,
    source_dir: str | Path | None,
    data_dir: str | Path | None,
    download: bool,
    progress: bool,
    exist_ok: bool,
) -> Path:
    if _occupied(out):
        raise DataError(f"{out} already exists; remove it or write the scene set somewhere else")
    pools = {fm: _fashion_split(fm, source_dir, data_dir, download) for _, fm, _ in _SPLITS}
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create {out.parent}: {exc.strerror or exc}") from None
    tmp = out.with_name(f".{out.name}.{secrets.token_hex(4)}.tmp")
    counts = {"train": config.n_train, "val": config.n_val}
    try:
        tmp.mkdir()
        with tqdm(
            total=sum(counts.values()),
            desc=SCENES_NAME,
            disable=not (progress and sys.stderr.isatty()),  # off a terminal: only redraws
            leave=False,
        ) as bar:
            stats = {
                split: _render_split(
                    tmp / split, split, fm, part, counts[split], pools[fm], config, bar
                )
                for split, fm, part in _SPLITS
            }
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "parameters": config.to_dict(),
            "source": {split: f"fashion-mnist {fm}" for split, fm, _ in _SPLITS},
            "splits": stats,
        }
        _write(tmp / META, json.dumps(meta, indent=2).encode() + b"\n")
        for folder in (tmp / "train" / "images", tmp / "val" / "images", tmp / "train"):
            fsync_dir(folder)
        fsync_dir(tmp / "val")
        fsync_dir(tmp)
        try:
            os.replace(tmp, out)
        except OSError:
            if exist_ok and read_scene_meta(out) is not None:
                return out  # another process built the same set first
            raise
        fsync_dir(out.parent)
    except OSError as exc:
        raise DataError(
            f"could not write the scene set {out}: {exc.strerror or exc}; nothing was kept"
        ) from exc
    finally:
        with contextlib.suppress(OSError):
            if tmp.exists():
                shutil.rmtree(tmp)
    return out


def read_scene_meta(path: str | Path) -> dict[str, Any] | None:
    """The ``scenes.json`` of the scene set at ``path``, or None when ``path`` holds none."""
    meta_path = Path(path) / META
    if not meta_path.is_file():
        return None
    try:
        meta = read_json_file(meta_path, "scene set description")
    except DataError:
        return None
    return meta if isinstance(meta, dict) and meta.get("format") == FORMAT else None


def ensure_scene_set(
    config: SceneConfig,
    *,
    data_dir: str | Path | None = None,
    download: bool = True,
    progress: bool = True,
) -> tuple[Path, bool]:
    """The scene set of ``config`` under the data dir, built when missing: (path, built now).

    Processes that build the same set at once (the ranks of a distributed run) each build
    it; the first to finish publishes it and the others use that one (the sets are
    identical).
    """
    out = scene_set_dir(config, data_dir)
    meta = read_scene_meta(out)
    if meta is not None:
        if meta.get("version") != VERSION or meta.get("parameters") != config.to_dict():
            raise DataFormatError(
                f"{out} holds a scene set of version {meta.get('version')} with parameters "
                f"{meta.get('parameters')}, not version {VERSION} with {config.to_dict()}; "
                "remove the folder to have it rebuilt"
            )
        return out, False
    if _occupied(out):
        raise DataFormatError(
            f"{out} exists but holds no scene set ({META} is missing); remove the folder to "
            "have it rebuilt"
        )
    _write_scene_set(
        out,
        config,
        source_dir=None,
        data_dir=data_dir,
        download=download,
        progress=progress,
        exist_ok=True,
    )
    return out, True
