"""``predict``: classify image files (or draw a dense model's boxes and masks on them)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import IO, Any

from .common import add_command, add_device, add_json, add_model_name
from .present import format_dense_prediction, format_prediction

EPILOG = """examples:
  resnetlab predict runs/r20 photos/ 'more/*.png' --topk 3
  resnetlab predict --weights runs/r20/model.safetensors cat.jpg --json
  resnetlab predict r20.onnx cat.jpg          # a graph from `resnetlab export` (ONNX, OpenVINO .xml)
  resnetlab predict --model resnet50 --weights resnet50-tv.pth dog.jpg  # torchvision/timm
  resnetlab predict --model resnet18 dog.jpg   # random weights: only a smoke test
folders are searched recursively; exit status 1 when some file could not be read"""

# Where a detection or segmentation model's drawn images go without --output
DRAWN_OUTPUT = "predictions"


def add_predict_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "predict", cmd_predict, "Classify image files (a detection or "
                    "segmentation model draws its boxes and masks on them) with a run "
                    "directory or weights.", EPILOG)  # fmt: skip
    p.usage = (
        "%(prog)s (RUN_DIR | --weights FILE | --model NAME) INPUTS... [--topk K] [--json] "
        "[--batch-size B] [--device DEVICE] [--output DIR] [--score-threshold S]"
    )
    p.add_argument("inputs", nargs="+", metavar="INPUTS",
                   help="image files, folders (searched recursively) or glob patterns; "
                   "first a run directory (or an exported .onnx / OpenVINO .xml) unless "
                   "--weights or --model is given")  # fmt: skip
    p.add_argument("--weights", metavar="FILE", help="resnetlab .safetensors (or, with "
                   "--model, a torchvision/timm state dict)")  # fmt: skip
    add_model_name(p)
    p.add_argument("--topk", type=int, default=5, metavar="K", help="classes per image (5)")
    add_json(p, "one JSON object per line")
    p.add_argument("--batch-size", type=int, default=32, metavar="B", help="images per batch")
    add_device(p, default="auto")
    p.add_argument("--output", metavar="DIR", help="detection/segmentation: where the drawn "
                   "images go (predictions/)")  # fmt: skip
    p.add_argument("--score-threshold", type=float, default=0.5, metavar="S",
                   help="detection: draw and list boxes scoring at least S (0.5)")  # fmt: skip


def cmd_predict(args: argparse.Namespace) -> int:
    from ..inference import run_predict

    found = run_predict(
        args.inputs,
        weights=args.weights,
        model=args.model,
        topk=args.topk,
        batch_size=args.batch_size,
        device=args.device,
    )
    if found["dense"] is not None:
        return _predict_dense(found, args)
    return show_predictions(found, as_json=args.json)


def _predict_dense(found: dict[str, Any], args: argparse.Namespace) -> int:
    """A detection or segmentation model: its images predicted, drawn and listed."""
    from ..inference.dense_predict import run_dense_predict

    output = args.output if args.output is not None else DRAWN_OUTPUT
    dense = run_dense_predict(found["dense"], found["files"], output=output,
                              score_threshold=args.score_threshold, device=args.device)  # fmt: skip
    return show_dense_predictions(found, dense, as_json=args.json)


def show_dense_predictions(
    found: dict[str, Any],
    dense: dict[str, Any],
    *,
    as_json: bool = False,
    stdout: IO[str] | None = None,
    stderr: IO[str] | None = None,
) -> int:
    """Print :func:`~resnetlab.inference.dense_predict.run_dense_predict`'s results, one
    line per image as they come (``as_json``: one JSON object per line, unreadable images
    included, else on ``stderr``); inputs that named no image are said on ``stderr``.
    Returns 0, or 1 when some input or image could not be read."""
    out, err = stdout or sys.stdout, stderr or sys.stderr
    for missing in found["missing"]:
        print(f"error: {missing['error']}", file=err, flush=True)
    failed = 0
    for result in dense["results"]:
        shown = {k: v for k, v in result.items() if k != "raw"}
        if "error" in result:
            failed += 1
            if not as_json:
                print(f"error: {result['error']}", file=err, flush=True)
                continue
        if as_json:
            print(json.dumps(shown), file=out, flush=True)
        else:
            print(format_dense_prediction(shown), file=out, flush=True)
    if failed:
        print(f"{failed} of {dense['total']} images could not be read", file=err)
    return 1 if failed or found["missing"] else 0


def show_predictions(
    found: dict[str, Any],
    *,
    as_json: bool = False,
    stdout: IO[str] | None = None,
    stderr: IO[str] | None = None,
) -> int:
    """Print :func:`~resnetlab.inference.run_predict`'s classifications, one line each as
    they come (``as_json``: one JSON object per line, errors included); errors and warnings
    go to ``stderr``. Returns 0, or 1 when some input could not be read."""
    out, err = stdout or sys.stdout, stderr or sys.stderr
    for warning in found["warnings"]:
        print(f"warning: {warning}", file=err)
    failed = 0
    for missing in found["missing"]:
        failed += 1
        if as_json:
            print(json.dumps(missing), file=out, flush=True)
        else:
            print(f"error: {missing['error']}", file=err, flush=True)
    for result in found["results"]:
        if "error" in result:
            failed += 1
            if not as_json:
                print(f"error: {result['error']}", file=err, flush=True)
        if as_json:
            print(json.dumps(result), file=out, flush=True)
        elif "topk" in result:
            print(format_prediction(result), file=out, flush=True)
    if failed:
        print(f"{failed} of {found['total']} inputs could not be read", file=err)
        return 1
    return 0
