"""Classifying images with a trained model: :class:`Predictor` and the ``predict`` command.

A :class:`Predictor` holds a model in eval mode together with the preprocessing and class
names its weights describe (see :mod:`resnetlab.inference.meta`), and turns image files,
PIL images or tensors into top-k predictions, in batches, under ``torch.inference_mode``.
"""

from __future__ import annotations

import fnmatch
import glob
import logging
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from ..data.errors import ImageDecodeError, NoImagesError
from ..data.files import IMAGE_EXTENSIONS, file_key, walk_files
from ..data.files import is_image_file as _is_image_file
from ..data.images import load_image
from ..device import keep_freed_host_memory
from ..errors import ArchitectureNotDescribedError, ConfigError
from ..models import (
    create_model,
    is_pretrained_name,
    load_model,
    load_weights,
    read_weights,
)
from .meta import Preprocessing, describe_model, resolve_device

__all__ = [
    "Predictor",
    "RandomWeightsWarning",
    "find_images",
    "run_predict",
]

DEFAULT_BATCH_SIZE = 32
ImageInput = str | os.PathLike | Image.Image | torch.Tensor


class RandomWeightsWarning(UserWarning):
    """The model was built without trained weights: its predictions are meaningless."""


def _stem_in_chans(state_dict: dict[str, torch.Tensor]) -> int | None:
    for key in ("conv1.weight", "stem.conv.weight"):
        weight = state_dict.get(key)
        if weight is not None and weight.ndim == 4:
            return int(weight.shape[1])
    return None


class Predictor:
    """Top-k classification of images with one model.

    Build it with :meth:`from_source` (a run directory or resnetlab ``.safetensors``),
    :meth:`from_name` (a zoo name, optionally with a torchvision/timm state dict) or
    :meth:`from_model` (a model in memory); then call :meth:`predict`.

    Thread safety: one Predictor may serve many threads at once (e.g. a web service's
    request handlers). After construction nothing in it changes: :meth:`predict` reads
    the model, the frozen :class:`~resnetlab.inference.meta.Preprocessing` and the class
    name tuple, keeps every tensor local to the call, and enters ``torch.inference_mode``,
    which is per thread. It never calls ``.eval()``, ``.to()`` or anything else that
    changes the model; do not change the model (train mode, new weights) while it serves.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        preprocessing: Preprocessing | dict[str, Any],
        class_names: Sequence[str],
        device: str | torch.device | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        random_weights: bool = False,
    ) -> None:
        if getattr(model, "features_only", False):
            raise ConfigError("a features_only model has no classifier to predict with")
        if getattr(model, "num_classes", 1) == 0:
            raise ConfigError("the model has no classifier (num_classes=0)")
        if batch_size < 1:
            raise ConfigError(f"batch_size={batch_size}: expected an integer >= 1")
        if device is not None:
            model = model.to(resolve_device(device))
        self.model = model.eval()
        # An int8 model keeps its weights in packed buffers and has no parameters: CPU.
        param = next(model.parameters(), None)
        self.device = param.device if param is not None else torch.device("cpu")
        if self.device.type == "cpu":
            keep_freed_host_memory()  # no page faults on every batch's activations (device.py)
        self.preprocessing = (
            preprocessing
            if isinstance(preprocessing, Preprocessing)
            else Preprocessing.from_dict(preprocessing)
        )
        self.class_names = tuple(class_names)
        self.batch_size = batch_size
        self.random_weights = random_weights

    @property
    def precision(self) -> str:
        """What the model computes in: fp32 as loaded, else what :meth:`optimized` chose."""
        return getattr(self.model, "precision", "fp32")

    @property
    def compiled(self) -> bool:
        """Whether the model runs compiled by torch.compile (:meth:`optimized`; int8 always)."""
        return bool(getattr(self.model, "compiled", False))

    def optimized(
        self,
        precision: str = "auto",
        *,
        calibration: Sequence[ImageInput] = (),
        compile: bool = False,
        batch_size: int | None = None,
    ) -> Predictor:
        """This predictor with its model made faster by
        :func:`~resnetlab.inference.optimize.optimize_for_inference` (BN folded,
        channels_last; ``auto``: bf16 where it is faster than fp32, else fp32). ``int8``
        quantizes on ``calibration``: images as :meth:`predict` takes them (a few hundred,
        preprocessed here as the model's card says). ``compile``: fp32/bf16 compiled by
        inductor with frozen weights (int8 always is), here, for ``batch_size`` images a
        call (default: this predictor's batch size) and for any other number."""
        from .optimize import optimize_for_inference

        batches = None
        if precision == "int8":
            if not calibration:
                raise ConfigError(
                    "precision int8 needs calibration images (a few hundred like the ones to "
                    "serve, e.g. --calibration FOLDER)"
                )
            tensors = [self.prepare(image) for image in calibration]
            batches = [torch.stack(tensors[i : i + 32]) for i in range(0, len(tensors), 32)]
        prep = self.preprocessing
        # A full batch: int8 and a compiled model are compiled for it first (the batch size
        # serve's warm-up and a busy server run; see optimize_for_inference's example_inputs).
        size = (batch_size or self.batch_size, prep.in_chans, prep.image_size, prep.image_size)
        model = optimize_for_inference(self.model, precision, calibration=batches,
                                       example_inputs=torch.zeros(size).to(self.device),
                                       compile=compile)  # fmt: skip
        return Predictor(model, preprocessing=prep, class_names=self.class_names,
                         batch_size=self.batch_size, random_weights=self.random_weights)  # fmt: skip

    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        preprocessing: Preprocessing | dict[str, Any] | None = None,
        class_names: Sequence[str] | None = None,
        *,
        device: str | torch.device | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> Predictor:
        """Wrap a model; missing preprocessing/class names come from its card or defaults.

        ``device=None`` leaves the model where it is; the model is put in eval mode.
        """
        prep, names = describe_model(model, preprocessing, class_names)
        return cls(model, preprocessing=prep, class_names=names, device=device,
                   batch_size=batch_size)  # fmt: skip

    @classmethod
    def from_source(
        cls,
        source: str | os.PathLike,
        *,
        device: str | torch.device = "auto",
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> Predictor:
        """A run directory, a resnetlab ``.safetensors`` file, or a graph written by
        ``resnetlab export`` (ONNX, OpenVINO IR: run by its runtime, see
        :mod:`.exported`): everything comes from it."""
        from .exported import is_exported_graph, read_exported

        if is_exported_graph(source):
            graph, meta = read_exported(source)
            return cls(graph, preprocessing=meta["preprocessing"], class_names=meta["class_names"],
                       batch_size=batch_size)  # fmt: skip
        try:
            model = load_model(source)
        except ArchitectureNotDescribedError:
            raise ArchitectureNotDescribedError(
                f"{source} does not name its architecture (no resnetlab sidecar): give the "
                "model name too, Predictor.from_name(NAME, weights=PATH) in Python or "
                "--model NAME --weights PATH on the command line"
            ) from None
        return cls.from_model(model, device=device, batch_size=batch_size)

    @classmethod
    def from_name(
        cls,
        name: str,
        weights: str | os.PathLike | None = None,
        *,
        device: str | torch.device = "auto",
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> Predictor:
        """A zoo model with a state dict that does not name its architecture (torchvision,
        timm, resnetlab). The class count and input channels follow the weights. Without
        ``weights`` the model is randomly initialised: a :class:`RandomWeightsWarning` says so.
        """
        if weights is None:
            warnings.warn(
                f"{name} has random weights: predictions are meaningless (give trained "
                "weights, a run directory or a .safetensors file)",
                RandomWeightsWarning,
                stacklevel=2,
            )
            model = create_model(name)
        elif is_pretrained_name(weights):
            # named weights: checked against the model, and their card says how to prepare
            model = create_model(name, weights=weights)
        else:
            wf = read_weights(weights)
            model = create_model(
                name, num_classes=wf.num_classes, in_chans=_stem_in_chans(wf.state_dict) or 3
            )
            model.load_report = load_weights(model, wf)  # the card is now the weights'
        prep, names = describe_model(model)
        return cls(model, preprocessing=prep, class_names=names, device=device,
                   batch_size=batch_size, random_weights=weights is None)  # fmt: skip

    def prepare(self, image: ImageInput) -> torch.Tensor:
        """One input (path, PIL image or tensor) -> the normalized model input tensor.

        Raises :class:`~resnetlab.data.errors.ImageDecodeError` for an unreadable file.
        """
        if isinstance(image, (str, os.PathLike)):
            # decoded reduced where the format allows (a 12000 px JPEG never at full size)
            prep = self.preprocessing
            image = load_image(image, channels=prep.channels, min_side=prep.resize)
        return self.preprocessing(image)

    def predict(
        self,
        images: ImageInput | Iterable[ImageInput],
        topk: int = 5,
        *,
        batch_size: int | None = None,
        on_error: str = "raise",
    ) -> list[dict[str, Any]]:
        """Top-k predictions, one dict per image, in input order.

        ``images``: paths, PIL images, CxHxW tensors (uint8, or float in [0, 1]), a BxCxHxW
        tensor, or a single one of these. Each result is ``{"path": str | None, "topk":
        [{"class": name, "index": i, "prob": p}, ...]}``, most probable first. With
        ``on_error="record"`` an unreadable file gives ``{"path": ..., "error": message}``
        instead of raising :class:`~resnetlab.data.errors.ImageDecodeError`.
        """
        return list(self.predict_iter(images, topk, batch_size=batch_size, on_error=on_error))

    def predict_iter(
        self,
        images: ImageInput | Iterable[ImageInput],
        topk: int = 5,
        *,
        batch_size: int | None = None,
        on_error: str = "raise",
    ) -> Iterator[dict[str, Any]]:
        """As :meth:`predict`, yielding results batch by batch (for long lists of files)."""
        if on_error not in ("raise", "record"):
            raise ConfigError(f"on_error={on_error!r}: expected 'raise' or 'record'")
        if topk < 1:
            raise ConfigError(f"topk={topk}: expected an integer >= 1")
        topk = min(topk, len(self.class_names))
        size = batch_size or self.batch_size
        batch: list[ImageInput] = []
        for item in _as_items(images):
            batch.append(item)
            if len(batch) == size:
                yield from self._predict_batch(batch, topk, on_error)
                batch = []
        if batch:
            yield from self._predict_batch(batch, topk, on_error)

    def _predict_batch(
        self, items: list[ImageInput], topk: int, on_error: str
    ) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = []
        tensors, slots = [], []
        for item in items:
            path = str(item) if isinstance(item, (str, os.PathLike)) else None
            try:
                tensors.append(self.prepare(item))
            except ImageDecodeError as e:
                if on_error == "raise":
                    raise
                results.append({"path": path, "error": str(e)})
                continue
            slots.append(len(results))
            results.append({"path": path})
        if not tensors:
            return results
        with torch.inference_mode():
            x = torch.stack(tensors).to(self.device)
            logits = self.model(x)
            if logits.ndim != 2 or logits.shape[1] != len(self.class_names):
                raise ConfigError(
                    f"the model returned {tuple(logits.shape)} for {len(tensors)} images; "
                    f"expected ({len(tensors)}, {len(self.class_names)}) logits"
                )
            probs, indices = logits.float().softmax(dim=1).topk(topk, dim=1)
        for slot, p_row, i_row in zip(slots, probs.tolist(), indices.tolist(), strict=True):
            results[slot]["topk"] = [
                {"class": self.class_names[i], "index": i, "prob": p}
                for p, i in zip(p_row, i_row, strict=True)
            ]
        return results


def _as_items(images: ImageInput | Iterable[ImageInput]) -> Iterator[ImageInput]:
    if isinstance(images, torch.Tensor):
        if images.ndim == 4:
            yield from images.unbind(0)
        else:
            yield images
    elif isinstance(images, (str, os.PathLike, Image.Image)):
        yield images
    else:
        yield from images


logger = logging.getLogger(__name__)


def _walk_images(folder: Path, skipped: list[str]) -> list[Path]:
    walk = walk_files(folder)
    skipped += walk.skipped_links
    return [Path(f) for f in walk.images]


def _match_parts(parts: Sequence[str], patterns: Sequence[str]) -> bool:
    """Glob matching of path components, ``**`` standing for any number of them."""
    if not patterns:
        return not parts
    if patterns[0] == "**":
        return any(_match_parts(parts[k:], patterns[1:]) for k in range(len(parts) + 1))
    return (
        bool(parts)
        and fnmatch.fnmatchcase(parts[0], patterns[0])
        and _match_parts(parts[1:], patterns[1:])
    )


def _glob(pattern: str, skipped: list[str]) -> list[Path]:
    """The files and folders ``pattern`` matches, sorted.

    ``**`` is matched against a :func:`~resnetlab.data.files.walk_files` listing of the
    pattern's fixed leading folder, since ``glob``'s own ``**`` follows links to folders and
    so runs through link loops (``a/loop -> ..``) until the path is too long."""
    if "**" not in pattern:
        return [Path(m) for m in sorted(glob.glob(pattern))]
    parts = Path(pattern).parts
    fixed = next(i for i, part in enumerate(parts) if glob.has_magic(part))
    base = Path(*parts[:fixed]) if fixed else Path()
    walk = walk_files(base)
    skipped += walk.skipped_links
    matches: dict[Path, None] = {}
    for name in walk.files:
        rel = Path(name).relative_to(base).parts
        for k in range(len(rel) + 1):  # the file, or a folder holding it
            if _match_parts(rel[:k], parts[fixed:]):
                matches[base.joinpath(*rel[:k])] = None
    return sorted(matches)


def _why_no_images(spec: str) -> str:
    """What ``spec`` names instead of images, for the error line."""
    path = Path(spec)
    if path.is_dir():
        walk = walk_files(path)
        links = f", {len(walk.skipped_links)} link(s) to folders" if walk.skipped_links else ""
        return (
            f"{spec}: no image file in this folder ({walk.describe_others()}{links}); image "
            f"extensions: {', '.join(IMAGE_EXTENSIONS)}"
        )
    if glob.has_magic(spec):
        files = [m for m in _glob(spec, []) if m.is_file()]
        if not files:
            return f"{spec}: no file matches"
        return f"{spec}: matches {len(files)} file(s), none an image (e.g. {files[0]})"
    if path.is_symlink():
        return f"{spec}: a broken link (what it points to does not exist)"
    return f"{spec}: no such file or folder"


def find_images(inputs: Sequence[str | os.PathLike]) -> tuple[list[Path], list[str]]:
    """The image files that ``inputs`` name, and the inputs that named nothing.

    A file is taken as given (whatever its extension); a folder gives every image file
    under it, recursively, sorted (hidden files and folders skipped, links to folders not
    followed); a glob pattern (``*``, ``?``, ``[...]``, ``**``) gives the image files and
    folders it matches. A file reached twice (two patterns, a link) is kept once, first.
    """
    found: list[Path] = []
    missing: list[str] = []
    skipped: list[str] = []  # links to folders not followed
    for spec in inputs:
        path = Path(spec)
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            files = _walk_images(path, skipped)
            if files:
                found += files
            else:
                missing.append(str(spec))
        elif glob.has_magic(str(spec)):
            matches = _glob(str(spec), skipped)
            files = [m for m in matches if m.is_file() and _is_image_file(m)]
            for m in matches:
                if m.is_dir():
                    files += _walk_images(m, skipped)
            if files:
                found += files
            else:
                missing.append(str(spec))
        else:
            missing.append(str(spec))
    if skipped:
        logger.warning(
            "%d link(s) to folders not followed (a folder link repeats images or leads out "
            "of the folder given), e.g. %s",
            len(dict.fromkeys(skipped)),
            skipped[0],
        )
    unique: dict[object, Path] = {}
    for path in found:
        unique.setdefault(file_key(path) or str(path), path)
    return list(unique.values()), missing


def run_predict(
    inputs: Sequence[str],
    *,
    weights: str | None = None,
    model: str | None = None,
    topk: int = 5,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str = "auto",
) -> dict[str, Any]:
    """The model and the images of the ``predict`` command, and their predictions.

    The model is ``model`` (with ``weights`` for a state dict that does not name its
    architecture), ``weights`` alone (resnetlab weights), or else the first of ``inputs``
    (a run directory or resnetlab weights file). Returns a dict:

    * ``files``: the image files found; ``missing``: one ``{"path", "error"}`` per input
      that named no image; ``total``: how many of both;
    * ``warnings``: what to tell the user about the model (random weights);
    * ``results``: for a classifier, an iterator of one ``{"path", "topk"}`` per file (or
      ``{"path", "error"}`` for a file that cannot be decoded), predicted batch by batch as
      it is consumed, else None;
    * ``dense``: for a detection or segmentation model, its weights file, which
      :func:`~resnetlab.inference.dense_predict.run_dense_predict` predicts and draws with;
      else None.

    Raises ConfigError for bad options or an image given as the model, NoImagesError when
    no input names an image, and the errors of loading the model.
    """
    if topk < 1 or batch_size < 1:
        raise ConfigError(f"--topk {topk}, --batch-size {batch_size}: both must be >= 1")
    source, inputs = _predict_source(list(inputs), weights, model)
    files, missing = find_images(inputs)
    if not files:
        raise NoImagesError("no images found: " + "; ".join(_why_no_images(str(i)) for i in inputs))
    found: dict[str, Any] = {
        "files": files,
        "missing": [{"path": spec, "error": _why_no_images(spec)} for spec in missing],
        "total": len(files) + len(missing),
        "warnings": [],
        "results": None,
        "dense": None,
    }
    from ..engine.dense import dense_weights_path

    dense = dense_weights_path(source) if model is None and source is not None else None
    if dense is not None:
        return {**found, "dense": dense}
    predictor, found["warnings"] = _load_predictor(source, model, weights, device, batch_size)
    return {**found, "results": predictor.predict_iter(files, topk, on_error="record")}


def _predict_source(
    inputs: list[str], weights: str | None, model: str | None
) -> tuple[str | None, list[str]]:
    """The model's source (a run directory or weights file) and the inputs left to read."""
    if model is not None or weights is not None:
        return weights, inputs
    if len(inputs) < 2:
        raise ConfigError(
            "give a run directory (or --weights FILE, or --model NAME) and then the "
            "images to classify"
        )
    source = inputs[0]
    if Path(source).is_file() and _is_image_file(source):
        raise ConfigError(
            f"{source} is an image, not a model: give a run directory, a .safetensors "
            "file, --weights FILE or --model NAME first"
        )
    return source, inputs[1:]


def _load_predictor(
    source: str | None, model: str | None, weights: str | None, device: str, batch_size: int
) -> tuple[Predictor, list[str]]:
    """The classifier to predict with, and the warnings to show about it."""
    if model is None:
        return Predictor.from_source(source, device=device, batch_size=batch_size), []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        predictor = Predictor.from_name(model, weights, device=device, batch_size=batch_size)
    if not predictor.random_weights:
        return predictor, []
    return predictor, [
        f"{model} has random weights: predictions are meaningless (give a run directory, "
        "or --weights FILE)"
    ]
