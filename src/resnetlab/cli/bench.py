"""``bench``: inference speed of a model beside torchvision, onnxruntime and OpenVINO."""

from __future__ import annotations

import argparse
import sys

from ..formatting import dumps_json
from .common import add_command, add_input_size, add_json

EPILOG = """examples:
  resnetlab bench resnet50 --batch-size 16   # fp32, bf16, int8; torchvision, onnxruntime, openvino
  resnetlab bench resnet50 --batch-size 1 --precision fp32,int8 --iters 20
  resnetlab bench resnet20 --input-size 3 32 32 --compare onnxruntime,openvino --json
  resnetlab bench runs/r20 --precision int8 --compile      # a trained run; adds torch.compile rows
img/s and p50/p95 latency per batch; mem: peak RSS growth while the system ran; of peak:
2 x MACs x img/s over a matrix-product probe of the same kind in the same run (fp32, bf16,
int8; "-" where torch has no probe of that kind); prec: what each row computed in (OpenVINO's
default hint row: the precision it picked on this CPU, whose tier the title names).
int8 is calibrated on random inputs here (speed only): use optimize_for_inference with
your own images for accuracy"""


def add_bench_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "bench", cmd_bench, "Inference speed of a model: resnetlab "
                    "fp32/bf16/int8 vs torchvision, onnxruntime and OpenVINO, side by side.",
                    EPILOG)  # fmt: skip
    p.add_argument("model", help="a model name, a run directory or a resnetlab .safetensors")
    p.add_argument("--batch-size", type=int, default=16, metavar="B", help="images per batch (16)")
    p.add_argument("--precision", default="fp32,bf16,int8", metavar="LIST",
                   help="resnetlab precisions to time, comma-separated (fp32,bf16,int8)")  # fmt: skip
    p.add_argument("--compare", default="eager,torchvision,onnxruntime,openvino", metavar="LIST",
                   help="baselines, comma-separated: eager (the model as it is), torchvision, "
                   "onnxruntime, openvino (default: all four; none)")  # fmt: skip
    add_input_size(p)
    p.add_argument("--iters", type=int, default=10, metavar="N", help="timed batches (10)")
    p.add_argument("--warmup", type=int, default=2, metavar="N", help="untimed batches first (2)")
    p.add_argument("--rounds", type=int, default=1, metavar="R",
                   help="alternate the systems R times (1)")  # fmt: skip
    p.add_argument("--compile", action="store_true", help="add torch.compile variants")
    p.add_argument("--threads", type=int, metavar="N",
                   help="intra-op threads for torch and onnxruntime (default: torch's)")  # fmt: skip
    add_json(p, "print the rows as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def cmd_bench(args: argparse.Namespace) -> int:
    from ..inference import bench_model
    from .present import format_bench

    rows = bench_model(
        args.model,
        batch_size=args.batch_size,
        precisions=[p for p in args.precision.split(",") if p],
        compare=[c for c in args.compare.split(",") if c and c != "none"],
        input_size=tuple(args.input_size) if args.input_size else None,
        iters=args.iters,
        warmup=args.warmup,
        rounds=args.rounds,
        compile=args.compile,
        threads=args.threads,
        progress=None if args.quiet or args.json else lambda m: print(m, file=sys.stderr),
    )
    print(dumps_json([r.to_dict() for r in rows], indent=2) if args.json else format_bench(rows))
    return 0
