"""Reading object-detection and segmentation sets in the COCO format (Lin et al., "Microsoft
COCO: Common Objects in Context", 2014; the ``instances_*.json`` files of cocodataset.org).

Layouts accepted for ``coco:PATH``:

* ``PATH/train/instances.json`` and ``PATH/val/instances.json``: one file per split; each
  image is found at its ``file_name`` relative to the split's folder, or in the split's
  ``images/`` subfolder (``PATH/train/images/000000.png``);
* ``PATH/instances.json``: one file, split into train and val by ``val_fraction`` (a seeded
  random choice of images); images relative to ``PATH`` or in ``PATH/images/``;
* ``PATH/train/instances.json`` alone, split the same way by ``val_fraction``.

A file holds ``images`` (``id``, ``file_name``, ``width``, ``height``), ``categories`` (``id``,
``name``) and ``annotations`` (``id``, ``image_id``, ``category_id``, ``bbox`` as
``[x, y, width, height]`` in pixels, ``iscrowd``, and ``segmentation``: a list of polygons
``[[x1, y1, x2, y2, ...], ...]``, or run-length encoding ``{"size": [h, w], "counts": ...}``
with ``counts`` compressed (a string) or not (a list); decoded with ``pycocotools.mask``).

What the reader makes of it:

* category ids, in ascending order, become the contiguous labels 1..K (0 is background
  everywhere); class names are the categories' names; train and val must list the same ones;
* crowd objects (``iscrowd: 1``, one region over many instances) are kept and flagged: the
  loaders leave them out of the detection targets and mark their pixels "ignore" (255) in
  semantic masks, as COCO's own evaluation ignores them;
* images without annotations are kept (negative examples);
* an object without ``segmentation`` gets its box as its mask, and an object whose box has no
  area (COCO has a few) is dropped; both are counted in :attr:`CocoDataset.notes`.

Anything malformed (a missing file, bad JSON, a box outside its image, an unknown category or
image id, a missing image file, an RLE of the wrong size) raises
:class:`~resnetlab.data.errors.DataError` naming the file, the image or annotation, and what to
do about it.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, MissingDependencyError
from ..io import JSONFileError, StorageError, read_json
from .errors import DataFormatError, MissingDataError
from .seeding import generator

__all__ = [
    "BOX_TOLERANCE",
    "CocoDataset",
    "CocoImage",
    "CocoObject",
    "CocoSplit",
    "IGNORE_INDEX",
    "decode_masks",
    "pycocotools_mask",
    "read_coco",
    "read_coco_split",
    "read_json_file",
    "semantic_target",
]

#: The label of pixels a semantic-segmentation loss ignores (crowd regions, overlaps, padding).
IGNORE_INDEX = 255
#: Pixels a box may reach past its image's border (rounding in the tools that wrote it); such
#: boxes are clipped to the image, boxes further out are an error.
BOX_TOLERANCE = 1.0
#: Larger annotation files are refused unread (COCO 2017's largest is under 0.5 GB).
MAX_JSON_BYTES = 4 * 2**30
#: The name of the annotation file in each split folder.
INSTANCES = "instances.json"

_LAYOUT_HELP = (
    "expected PATH/train/instances.json and PATH/val/instances.json (images beside each file "
    "or in its images/ subfolder), or a single PATH/instances.json split by val_fraction"
)


def pycocotools_mask() -> Any:
    """``pycocotools.mask``, or MissingDependencyError saying how to install it."""
    try:
        from pycocotools import mask
    except ImportError:  # pragma: no cover - an installation without the extra
        raise MissingDependencyError(
            "reading COCO masks needs pycocotools: pip install 'resnetlab[dense]' "
            "(or pip install pycocotools)"
        ) from None
    return mask


@dataclass(frozen=True)
class CocoObject:
    """One annotation: ``label`` in 1..K, ``box`` as (x1, y1, x2, y2) pixels inside the image.

    ``segmentation`` is a list of polygons, a compressed RLE dict (``counts`` a string), or
    None (no mask given: the box is the mask).
    """

    id: int
    label: int
    box: tuple[float, float, float, float]
    iscrowd: bool = False
    segmentation: Any = field(default=None, repr=False)


@dataclass(frozen=True)
class CocoImage:
    """One image: its file, size and objects (crowd ones included)."""

    id: int
    path: Path
    width: int
    height: int
    objects: tuple[CocoObject, ...] = ()

    def masks(self) -> np.ndarray:
        """uint8 (N, height, width) masks of all objects, in order; see :func:`decode_masks`."""
        return decode_masks(self)


@dataclass(frozen=True)
class CocoSplit:
    """The images of one split and the annotation file they were read from."""

    name: str
    source: Path
    images: tuple[CocoImage, ...]

    @property
    def num_objects(self) -> int:
        return sum(len(im.objects) for im in self.images)

    @property
    def num_crowd(self) -> int:
        return sum(o.iscrowd for im in self.images for o in im.objects)

    @property
    def num_empty(self) -> int:
        """Images without any object (negatives)."""
        return sum(not im.objects for im in self.images)

    def summary(self) -> str:
        """``"train 2000 images / 6012 objects"`` plus crowd and empty counts when there are any."""
        extra = [f"{n} {what}" for n, what in ((self.num_crowd, "crowd"),) if n]
        empty = f", {self.num_empty} without objects" if self.num_empty else ""
        crowd = f" ({', '.join(extra)})" if extra else ""
        return f"{self.name} {len(self.images)} images{empty} / {self.num_objects} objects{crowd}"


@dataclass(frozen=True)
class CocoDataset:
    """A COCO-format set read by :func:`read_coco`.

    ``layout`` is "folders" (train/ and val/ files) or "split" (one file split by
    ``val_fraction``). ``category_ids[k - 1]`` is the COCO id of label k. ``notes`` says what
    was dropped or filled in (degenerate boxes, objects without masks).
    """

    root: Path
    layout: str
    class_names: tuple[str, ...]
    category_ids: tuple[int, ...]
    train: CocoSplit
    val: CocoSplit
    notes: tuple[str, ...] = ()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


# --------------------------------------------------------------------------- reading


def read_json_file(path: Path, what: str) -> Any:
    """The JSON value in the regular file ``path`` (:func:`~resnetlab.io.read_json`):
    MissingDataError when it cannot be read, DataFormatError when it holds no JSON."""
    try:
        return read_json(path, what, max_bytes=MAX_JSON_BYTES)
    except StorageError as exc:
        # no errno: a FIFO, a device or a folder where the file should be
        raise (MissingDataError if exc.errno is not None else DataFormatError)(str(exc)) from None
    except JSONFileError as exc:
        raise DataFormatError(f"{exc}; fix the file or write it again") from None


def _load(path: Path) -> dict:
    if not path.is_file():
        raise MissingDataError(f"COCO annotation file not found: {path}; {_LAYOUT_HELP}")
    doc = read_json_file(path, "COCO annotation file")
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        raise DataFormatError(
            f"{path}: not a COCO annotation file (expected a JSON object with 'images', "
            "'annotations' and 'categories' lists)"
        )
    for key in ("annotations", "categories"):
        if not isinstance(doc.get(key, []), list):
            raise DataFormatError(f"{path}: '{key}' must be a list, got {type(doc[key]).__name__}")
    return doc


def _int(value: Any, path: Path, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise DataFormatError(f"{path}: {what} must be an integer, got {value!r}")
    return int(value)


def _numbers(value: Any, path: Path, what: str) -> list[float]:
    if not isinstance(value, list) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value
    ):
        raise DataFormatError(f"{path}: {what} must be a list of finite numbers, got {value!r}")
    return [float(v) for v in value]


def _categories(doc: dict, path: Path) -> list[tuple[int, str]]:
    """(id, name) of the file's categories, in ascending id order."""
    cats: dict[int, str] = {}
    for cat in doc.get("categories", []):
        if not isinstance(cat, dict) or "id" not in cat:
            raise DataFormatError(f"{path}: each category needs an 'id' and a 'name', got {cat!r}")
        cid = _int(cat["id"], path, "a category's id")
        if cid in cats:
            raise DataFormatError(f"{path}: category id {cid} is listed twice")
        name = cat.get("name")
        if not isinstance(name, str) or not name.strip():
            raise DataFormatError(f"{path}: category {cid} has no name (give it a 'name' string)")
        cats[cid] = name
    if not cats:
        raise DataFormatError(
            f"{path}: no categories; list the object classes in 'categories' as "
            '[{"id": 1, "name": "cat"}, ...]'
        )
    return sorted(cats.items())


def _image_path(file_name: str, dirs: tuple[Path, ...]) -> Path | None:
    for folder in dirs:
        candidate = folder / file_name
        if candidate.is_file():
            return candidate
    return None


def _segmentation(seg: Any, path: Path, where: str, height: int, width: int) -> Any:
    """The annotation's segmentation as polygons or a compressed RLE dict, or None."""
    if seg is None or (isinstance(seg, list) and not seg):
        return None
    if isinstance(seg, dict):
        size = seg.get("size")
        counts = seg.get("counts")
        if not (isinstance(size, list) and len(size) == 2) or not isinstance(counts, (str, list)):
            raise DataFormatError(
                f"{path}: {where}: an RLE segmentation needs 'size': [height, width] and "
                f"'counts' (a string or a list), got keys {sorted(seg)}"
            )
        if [int(s) for s in _numbers(size, path, f"{where}: RLE size")] != [height, width]:
            raise DataFormatError(
                f"{path}: {where}: RLE size {size} differs from the image's [height, width] = "
                f"[{height}, {width}]; the mask was made for another image size"
            )
        if isinstance(counts, list):
            # Uncompressed RLE (COCO writes crowd regions so): compress once, here.
            counts = [int(c) for c in _numbers(counts, path, f"{where}: RLE counts")]
            if sum(counts) != height * width:
                raise DataFormatError(
                    f"{path}: {where}: RLE counts add up to {sum(counts)} pixels, the image has "
                    f"{height} x {width} = {height * width}"
                )
            rle = pycocotools_mask().frPyObjects(
                {"size": [height, width], "counts": counts}, height, width
            )
            return {"size": [height, width], "counts": rle["counts"].decode("ascii")}
        return {"size": [height, width], "counts": counts}
    if isinstance(seg, list):
        polygons = []
        for poly in seg:
            coords = _numbers(poly, path, f"{where}: a polygon")
            if len(coords) % 2:
                raise DataFormatError(
                    f"{path}: {where}: a polygon has an odd number of coordinates "
                    f"({len(coords)}); give x1, y1, x2, y2, ..."
                )
            if len(coords) >= 6:  # fewer than 3 points enclose nothing
                polygons.append(coords)
        return polygons or None
    raise DataFormatError(
        f"{path}: {where}: 'segmentation' must be a list of polygons or an RLE dict, got "
        f"{type(seg).__name__}"
    )


def read_coco_split(
    path: str | Path,
    *,
    name: str = "train",
    image_dirs: tuple[Path, ...] | None = None,
    categories: list[tuple[int, str]] | None = None,
) -> tuple[CocoSplit, list[tuple[int, str]], list[str]]:
    """Read one COCO annotation file: the split, its categories (id, name) and notes.

    ``image_dirs``: where to look for each image's ``file_name`` (default: the file's folder
    and its ``images/`` subfolder). ``categories``: those another split listed, which this
    file must list too (labels must mean the same in every split).
    """
    path = Path(path)
    doc = _load(path)
    cats = _categories(doc, path)
    if categories is not None and cats != categories:
        raise DataFormatError(
            f"{path}: lists categories {cats}, the other split lists {categories}; both splits "
            "must list the same categories (the same ids and names)"
        )
    label_of = {cid: k + 1 for k, (cid, _) in enumerate(cats)}
    entries = _image_entries(doc, path, image_dirs or (path.parent, path.parent / "images"))
    objects: dict[int, list[CocoObject]] = {iid: [] for iid in entries}
    degenerate = boxless = 0
    for ann in doc.get("annotations", []):
        iid, obj = _annotation(ann, path, entries, label_of, cats)
        if obj is None:
            degenerate += 1  # torchvision's detectors refuse boxes without area
            continue
        boxless += obj.segmentation is None
        objects[iid].append(obj)
    images = tuple(
        CocoImage(iid, file, width, height, tuple(objects[iid]))
        for iid, (file, height, width) in entries.items()
    )
    notes = []
    if degenerate:
        notes.append(f"{name}: {degenerate} boxes without area dropped")
    if boxless:
        notes.append(f"{name}: {boxless} objects without segmentation use their box as mask")
    return CocoSplit(name, path, images), cats, notes


def _image_entries(
    doc: dict, path: Path, dirs: tuple[Path, ...]
) -> dict[int, tuple[Path, int, int]]:
    """The file's images in its order: id -> (image file, height, width)."""
    entries: dict[int, tuple[Path, int, int]] = {}
    for entry in doc["images"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("file_name"), str):
            raise DataFormatError(
                f"{path}: each image needs 'id', 'file_name', 'width' and 'height', got {entry!r}"
            )
        iid = _int(entry.get("id"), path, "an image's id")
        if iid in entries:
            raise DataFormatError(f"{path}: image id {iid} is listed twice")
        width = _int(entry.get("width"), path, f"image {iid}'s width")
        height = _int(entry.get("height"), path, f"image {iid}'s height")
        if width <= 0 or height <= 0:
            raise DataFormatError(f"{path}: image {iid} has size {width}x{height}")
        found = _image_path(entry["file_name"], dirs)
        if found is None:
            raise MissingDataError(
                f"{path}: image {iid}'s file {entry['file_name']!r} not found (looked in "
                f"{', '.join(str(d) for d in dirs)}); put the image there or remove it from "
                "the file"
            )
        entries[iid] = (found, height, width)
    return entries


def _annotation(
    ann: Any,
    path: Path,
    entries: dict[int, tuple[Path, int, int]],
    label_of: dict[int, int],
    cats: list[tuple[int, str]],
) -> tuple[int, CocoObject | None]:
    """The image id of one annotation and its object; None for a box without area."""
    if not isinstance(ann, dict):
        raise DataFormatError(f"{path}: each annotation must be an object, got {ann!r}")
    aid = _int(ann.get("id", -1), path, "an annotation's id")
    where = f"annotation {aid}"
    iid = _int(ann.get("image_id"), path, f"{where}: image_id")
    if iid not in entries:
        raise DataFormatError(
            f"{path}: {where} refers to image {iid}, which 'images' does not list; add "
            "the image or remove the annotation"
        )
    where = f"annotation {aid} (image {iid})"
    cid = _int(ann.get("category_id"), path, f"{where}: category_id")
    if cid not in label_of:
        raise DataFormatError(
            f"{path}: {where} has category {cid}, which 'categories' does not list (ids "
            f"{', '.join(str(c) for c, _ in cats)}); add the category or fix the id"
        )
    _, height, width = entries[iid]
    box = _box(ann.get("bbox"), path, where, height, width)
    crowd = ann.get("iscrowd", 0)
    if crowd not in (0, 1, False, True):
        raise DataFormatError(f"{path}: {where}: iscrowd must be 0 or 1, got {crowd!r}")
    seg = _segmentation(ann.get("segmentation"), path, where, height, width)
    if box[2] <= box[0] or box[3] <= box[1]:
        return iid, None
    return iid, CocoObject(aid, label_of[cid], box, bool(crowd), seg)


def _box(
    bbox: Any, path: Path, where: str, height: int, width: int
) -> tuple[float, float, float, float]:
    """A COCO ``[x, y, width, height]`` box as (x1, y1, x2, y2), clipped to the image."""
    numbers = _numbers(bbox, path, f"{where}: bbox")
    if len(numbers) != 4 or numbers[2] < 0 or numbers[3] < 0:
        raise DataFormatError(
            f"{path}: {where}: bbox must be [x, y, width, height] with width, height >= 0, "
            f"got {bbox}"
        )
    x, y, w, h = numbers
    t = BOX_TOLERANCE
    if x < -t or y < -t or x + w > width + t or y + h > height + t:
        raise DataFormatError(
            f"{path}: {where}: bbox {bbox} ([x, y, width, height]) reaches outside "
            f"the {width}x{height} image; fix the box or the image's width and height"
        )
    return max(0.0, x), max(0.0, y), min(float(width), x + w), min(float(height), y + h)


def _subset(split: CocoSplit, indices: torch.Tensor, name: str) -> CocoSplit:
    return CocoSplit(name, split.source, tuple(split.images[i] for i in indices.tolist()))


def _split_by_fraction(
    split: CocoSplit, val_fraction: float, seed: int
) -> tuple[CocoSplit, CocoSplit]:
    n = len(split.images)
    k = round(val_fraction * n)
    if not 0 < k < n:
        raise ConfigError(
            f"val_fraction={val_fraction!r} of the {n} images in {split.source} leaves "
            f"{'no validation' if k == 0 else 'no training'} image; use a val_fraction "
            "that holds out at least one image and keeps at least one"
        )
    perm = torch.randperm(n, generator=generator(seed, "coco-val-split"))
    val, train = perm[:k].sort().values, perm[k:].sort().values
    return _subset(split, train, "train"), _subset(split, val, "val")


def read_coco(path: str | Path, *, val_fraction: float = 0.0, seed: int = 0) -> CocoDataset:
    """Read the COCO-format set at ``path`` (layouts in the module docstring).

    ``val_fraction`` holds out that fraction of the images of a set that has no val split of
    its own (seeded by ``seed``); a set with ``val/instances.json`` must keep it at 0.
    """
    if not isinstance(val_fraction, (int, float)) or not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction={val_fraction!r}: must be in [0, 1)")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise MissingDataError(f"COCO set {root}: no such folder; {_LAYOUT_HELP}")
    train_json, val_json, single = (
        root / "train" / INSTANCES,
        root / "val" / INSTANCES,
        root / INSTANCES,
    )
    if train_json.is_file() and single.is_file():
        raise DataFormatError(
            f"COCO set {root} has both {single} and {train_json}; keep one layout ({_LAYOUT_HELP})"
        )
    if train_json.is_file() and val_json.is_file():
        if val_fraction:
            raise ConfigError(
                f"val_fraction={val_fraction!r}: {root} has its own validation split "
                f"({val_json}); leave val_fraction at 0"
            )
        train, cats, notes = read_coco_split(train_json, name="train")
        val, _, val_notes = read_coco_split(val_json, name="val", categories=cats)
        layout, notes = "folders", notes + val_notes
    elif train_json.is_file() or single.is_file():
        source = train_json if train_json.is_file() else single
        if not val_fraction:
            missing = f"no {val_json}" if source == train_json else "one file for all images"
            raise ConfigError(
                f"COCO set {root}: {missing}, so the validation split must be held out: give "
                f"val_fraction > 0 (e.g. 0.1), or add {val_json}"
            )
        whole, cats, notes = read_coco_split(source, name="all")
        train, val = _split_by_fraction(whole, val_fraction, seed)
        layout = "split"
    else:
        raise MissingDataError(f"COCO set {root}: no {INSTANCES} found; {_LAYOUT_HELP}")
    return CocoDataset(
        root=root,
        layout=layout,
        class_names=tuple(name for _, name in cats),
        category_ids=tuple(cid for cid, _ in cats),
        train=train,
        val=val,
        notes=tuple(notes),
    )


# --------------------------------------------------------------------------- masks


def decode_masks(image: CocoImage) -> np.ndarray:
    """uint8 (N, H, W) 0/1 masks of ``image``'s objects (crowd ones included), in order.

    Polygons are rasterized and RLEs decoded by ``pycocotools.mask``; an object without a
    segmentation is its box, filled.
    """
    h, w = image.height, image.width
    out = np.zeros((len(image.objects), h, w), dtype=np.uint8)
    rles, where = [], []
    for k, obj in enumerate(image.objects):
        seg = obj.segmentation
        if seg is None:
            x1, y1, x2, y2 = obj.box
            out[k, math.floor(y1) : math.ceil(y2), math.floor(x1) : math.ceil(x2)] = 1
            continue
        api = pycocotools_mask()
        rles.append(api.merge(api.frPyObjects(seg, h, w)) if isinstance(seg, list) else seg)
        where.append(k)
    if rles:
        with warnings.catch_warnings():
            # pycocotools' own call of np.array(copy=False) under NumPy 2; harmless
            warnings.filterwarnings("ignore", "__array__ implementation", DeprecationWarning)
            decoded = pycocotools_mask().decode(rles)  # (H, W, n), Fortran order
        out[where] = np.moveaxis(decoded, -1, 0)
    return out


def semantic_target(image: CocoImage, masks: np.ndarray | None = None) -> np.ndarray:
    """uint8 (H, W) class map of ``image``: 0 background, 1..K, and :data:`IGNORE_INDEX` on
    crowd regions and where objects of different classes overlap (torchvision's reference
    recipe for COCO segmentation ignores every overlap; one of the same class is kept)."""
    masks = decode_masks(image) if masks is None else masks
    target = np.zeros((image.height, image.width), dtype=np.uint8)
    if not len(image.objects):
        return target
    crowd = np.array([o.iscrowd for o in image.objects], dtype=bool)
    labels = np.array([o.label for o in image.objects], dtype=np.uint8)
    solid = masks[~crowd].astype(bool)
    if len(solid):
        labelled = solid * labels[~crowd][:, None, None]
        target = labelled.max(0).astype(np.uint8)
        # Pixels claimed by two classes are ignored, not given to either.
        mixed = labelled.max(0) != np.where(solid, labelled, 255).min(0)
        target[mixed & solid.any(0)] = IGNORE_INDEX
    if crowd.any():
        target[masks[crowd].any(0)] = IGNORE_INDEX
    return target
