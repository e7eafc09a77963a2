"""``predict`` for detection and segmentation models: results as JSON lines and drawn PNGs.

Each image is decoded as RGB in [0, 1] (the dense models normalize and, for detection,
resize inside themselves, as torchvision's do), run through the model and drawn with its
boxes and masks (``engine/draw.py``) into ``OUTPUT/<name>.png``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import IO, Any

import torch

from ..data.errors import ImageDecodeError
from ..data.images import load_image
from ..device import resolve_device
from ..engine.dense import load_dense_source
from ..engine.draw import draw_detections, draw_semantic, save_png
from ..errors import ConfigError

# Larger images are shrunk to this longer side before they reach the model.
MAX_SIDE = 2048
# Detections listed per image in the text output (the best first)
SHOWN = 5


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
    output: str | Path | None,
    score_threshold: float = 0.5,
    as_json: bool = False,
    device: str = "auto",
    stdout: IO[str] | None = None,
    stderr: IO[str] | None = None,
) -> int:
    """Predict ``files`` with the dense model at ``path``, drawing each into ``output``
    (default ``predictions/``); one line per image. Returns 0, or 1 if some file failed."""
    out, err = stdout or sys.stdout, stderr or sys.stderr
    if not 0 <= score_threshold <= 1:
        raise ConfigError(f"--score-threshold {score_threshold}: must be in [0, 1]")
    out_dir = Path(output) if output is not None else Path("predictions")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot write drawn predictions to {out_dir}: {e.strerror or e}; "
                          "pass another --output") from None  # fmt: skip
    predictor = DensePredictor.from_path(path, device=device)
    failed = 0
    used: set[str] = set()
    for file in files:
        try:
            image = predictor.prepare(file)
        except ImageDecodeError as e:
            failed += 1
            line = {"path": str(file), "error": str(e)}
            print(json.dumps(line) if as_json else f"error: {e}", file=out if as_json else err)
            continue
        result = predictor.predict(image, score_threshold=score_threshold)
        name = _unique(file.stem, used)
        drawn = save_png(predictor.draw(image, result, score_threshold=score_threshold),
                         out_dir / f"{name}.png")  # fmt: skip
        shown = {k: v for k, v in result.items() if k != "raw"}
        if as_json:
            print(json.dumps({"path": str(file), **shown, "drawn": str(drawn)}), file=out)
        else:
            print(_format(file, shown, drawn), file=out, flush=True)
    if failed:
        print(f"{failed} of {len(files)} images could not be read", file=err)
        return 1
    return 0


def _unique(stem: str, used: set[str]) -> str:
    """``stem``, or ``stem-2``, ``stem-3``... when images of the same name came before."""
    name, i = stem, 1
    while name in used:
        i += 1
        name = f"{stem}-{i}"
    used.add(name)
    return name


def _format(file: Path, result: dict[str, Any], drawn: Path) -> str:
    if "detections" in result:
        found = result["detections"]
        parts = [f"{d['label']} {d['score']:.2f} at {[int(c) for c in d['box']]}"
                 for d in found[:SHOWN]]  # fmt: skip
        more = f"; {len(found) - SHOWN} more (--json lists all)" if len(found) > SHOWN else ""
        what = f"{len(found)} found" + (": " + "; ".join(parts) + more if parts else "")
    else:
        areas = sorted(result["areas"].items(), key=lambda kv: -kv[1])
        what = ", ".join(f"{k} {100 * v:.1f}%" for k, v in areas) or "background only"
    return f"{file}: {what} -> {drawn}"
