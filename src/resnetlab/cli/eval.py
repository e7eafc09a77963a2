"""``eval``: a run directory or weights file on a dataset."""

from __future__ import annotations

import argparse

from ..formatting import dumps_json
from .common import add_command, add_device, add_json

EPILOG = """examples:
  resnetlab eval runs/r20                  # the run's own data, split, test-time flip, precision
  resnetlab eval runs/r20 --split val --no-tta-flip
  resnetlab eval runs/r20 --data imagefolder:more_photos --output eval-more
  resnetlab eval runs/r20/model.safetensors --data fashion-mnist --json
on the run's own data and split, top-1 equals its summary.json test_top1. Writes
eval-<split>.json and confusion-<split>.png beside the run (or in --output); a run directory
that is not writable gets nothing written unless --output is given"""


def add_eval_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "eval", cmd_eval,
                    "Evaluate a run directory or weights file on a dataset.", EPILOG)  # fmt: skip
    p.add_argument("source", help="a run directory or a .safetensors file")
    p.add_argument("--data", help="dataset spec, as for train (default: the run's own data; "
                   "needed for a weights file without the run's config.yaml beside it)")  # fmt: skip
    p.add_argument("--data-dir", help="where datasets live (default: the run's)")
    p.add_argument("--split", choices=["train", "val", "test"],
                   help="default: the split the run was evaluated on")  # fmt: skip
    p.add_argument("--tta-flip", action=argparse.BooleanOptionalAction, default=None,
                   help="average with the flipped image (default: as the run did)")  # fmt: skip
    p.add_argument("--batch-size", type=int, help="default: the run's eval batch size, else 256")
    add_device(p, help="auto | cpu | cuda | cuda:N (default: the run's)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"],
                   help="default: the run's (fp32 for a weights file alone)")  # fmt: skip
    p.add_argument("--output", help="where to write confusion-<split>.png and eval-<split>.json")
    add_json(p, "print one JSON object")


def cmd_eval(args: argparse.Namespace) -> int:
    from ..engine import evaluate_source
    from .present import format_result

    result = evaluate_source(
        args.source,
        args.data,
        split=args.split,
        data_dir=args.data_dir,
        batch_size=args.batch_size,
        device=args.device,
        precision=args.precision,
        output=args.output,
        tta_flip=args.tta_flip,
        progress=not args.json,
    )
    if args.json:
        # the measured values exactly as summary.json has them (float32 noise only removed)
        print(dumps_json({k: v for k, v in result.items() if k != "confusion"}, digits=None))
    else:
        print(format_result(result))
    return 0
