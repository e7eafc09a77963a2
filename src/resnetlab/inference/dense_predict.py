"""``predict`` for detection and segmentation models: their detections or class areas,
and the images drawn with them.

Each image is decoded as RGB in [0, 1] (the dense models normalize and, for detection,
resize inside themselves, as torchvision's do), run through the model and, where an output
folder is given, drawn with its boxes and masks (``engine/draw.py``) into
``OUTPUT/<name>.png``. The results are data; the ``predict`` command prints them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ..data.errors import ImageDecodeError
from ..data.images import load_image
from ..device import resolve_device
from ..engine.dense import load_dense_source
from ..engine.draw import draw_detections, draw_semantic, save_png
from ..errors import ConfigError

# Larger images are shrunk to this longer side before they reach the model.
MAX_SIDE = 2048


class DensePredictor:
    """A detection or segmentation model and what it needs to predict image files."""

    def __init__(self, model: torch.nn.Module, device: str = "auto") -> None:
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.spec = model.spec
        self.class_names = tuple(model.class_names)

    @classmethod
    def from_path(cls, path: Path, device: str = "auto") -> DensePredictor:
        return cls(load_dense_source(path), device=device)

    def prepare(self, path: str | Path) -> torch.Tensor:
        from torchvision.transforms.v2.functional import pil_to_tensor

        image = load_image(path, 3, max_side=MAX_SIDE)
        return pil_to_tensor(image).float().div_(255)

    @torch.no_grad()
    def predict(self, image: torch.Tensor, *, score_threshold: float = 0.5) -> dict[str, Any]:
        """The model's answer for one image ([3, H, W] in 0..1): detections or class areas,
        with ``raw`` (the model's output) for drawing."""
        x = image.to(self.device)
        if self.spec.task == "detection":
            raw = {k: v.cpu() for k, v in self.model([x])[0].items()}
            keep = raw["scores"] >= score_threshold
            found = [
                {"label": self.class_names[int(k) - 1], "score": round(float(s), 4),
                 "box": [round(float(c), 1) for c in b]}
                for k, s, b in zip(raw["labels"][keep], raw["scores"][keep], raw["boxes"][keep],
                                   strict=True)
            ]  # fmt: skip
            return {"detections": found, "raw": raw}
        mask = self.model(x[None])["out"][0].argmax(0).cpu()
        total = mask.numel()
        areas = {
            name: round(int((mask == k).sum()) / total, 4)
            for k, name in enumerate(self.class_names, start=1)
            if bool((mask == k).any())
        }
        return {"areas": areas, "raw": mask}

    def draw(self, image: torch.Tensor, result: dict[str, Any], *, score_threshold: float = 0.5):
        if self.spec.task == "detection":
            return draw_detections(image, result["raw"], self.class_names,
                                   score_threshold=score_threshold)  # fmt: skip
        return draw_semantic(image, result["raw"], len(self.class_names))


def run_dense_predict(
    path: Path,
    files: list[Path],
    *,
    output: str | Path | None = None,
    score_threshold: float = 0.5,
    device: str = "auto",
) -> dict[str, Any]:
    """Predict ``files`` with the dense model at ``path`` (a run directory or its weights).

    With ``output`` each image is drawn with its boxes or masks into ``output/<name>.png``
    (``name-2``, ``name-3``... for repeated names). Returns a dict:

    * ``task``: ``"detection"`` or ``"segmentation"``; ``total``: how many files;
    * ``results``: an iterator of one dict per file, in order, predicted as it is consumed:
      ``{"path", "detections": [{"label", "score", "box"}, ...], "raw", "drawn"}`` for a
      detector (boxes scoring at least ``score_threshold``), ``{"path", "areas": {class:
      fraction of the pixels}, "raw", "drawn"}`` for a segmenter, or ``{"path", "error"}``
      for a file that cannot be decoded. ``raw`` is the model's output (its boxes, labels
      and scores, or the [H, W] class-index mask); ``drawn`` is where the drawn image went,
      only with ``output``.

    Raises ConfigError for a bad ``score_threshold`` or an output folder that cannot be
    made, and the errors of loading the model.
    """
    if not 0 <= score_threshold <= 1:
        raise ConfigError(f"--score-threshold {score_threshold}: must be in [0, 1]")
    out_dir = Path(output) if output is not None else None
    if out_dir is not None:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"cannot write drawn predictions to {out_dir}: "
                              f"{e.strerror or e}; pass another --output") from None  # fmt: skip
    predictor = DensePredictor.from_path(path, device=device)
    return {
        "task": predictor.spec.task,
        "total": len(files),
        "results": _predict_files(predictor, files, out_dir, score_threshold),
    }


def _predict_files(
    predictor: DensePredictor, files: list[Path], out_dir: Path | None, score_threshold: float
) -> Iterator[dict[str, Any]]:
    """One result per file (see :func:`run_dense_predict`), each drawn as it is predicted."""
    used: set[str] = set()
    for file in files:
        try:
            image = predictor.prepare(file)
        except ImageDecodeError as e:
            yield {"path": str(file), "error": str(e)}
            continue
        result = {"path": str(file), **predictor.predict(image, score_threshold=score_threshold)}
        if out_dir is not None:
            drawn = predictor.draw(image, result, score_threshold=score_threshold)
            result["drawn"] = str(save_png(drawn, out_dir / f"{_unique(file.stem, used)}.png"))
        yield result


def _unique(stem: str, used: set[str]) -> str:
    """``stem``, or ``stem-2``, ``stem-3``... when images of the same name came before."""
    name, i = stem, 1
    while name in used:
        i += 1
        name = f"{stem}-{i}"
    used.add(name)
    return name
