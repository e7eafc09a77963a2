"""``export``: a model as safetensors, torchvision, ONNX, .pt2 or OpenVINO IR."""

from __future__ import annotations

import argparse

from .common import add_command

EPILOG = """examples:
  resnetlab export runs/r20 --format onnx --output r20.onnx     # batch dimension free
  resnetlab export runs/r20 --format onnx --output r20-b1.onnx --static-batch
  resnetlab export runs/r20 --format openvino --output r20-ov/  # model.xml + model.bin
  resnetlab export runs/r20 --format torch-export --output r20.pt2
  resnetlab export runs/r50 --format torchvision --output r50.pth
  resnetlab export runs/r20/model.safetensors --format safetensors --output copy.safetensors
every export is read back and compared with PyTorch (relative error <= 1e-4) unless
--no-verify"""


def add_export_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "export", cmd_export,
                    "Write a model as safetensors, torchvision, ONNX, .pt2 or OpenVINO IR.",
                    EPILOG)  # fmt: skip
    p.add_argument("source", help="a run directory or a resnetlab .safetensors file")
    p.add_argument("--format", required=True, metavar="FORMAT",
                   help="safetensors | torchvision | onnx | torch-export | openvino")  # fmt: skip
    p.add_argument("--output", required=True, metavar="PATH",
                   help="the file to write (openvino: a folder or a .xml path)")  # fmt: skip
    batch = p.add_mutually_exclusive_group()
    batch.add_argument("--static-batch", action="store_true",
                       help="fix the batch dimension at 1 (onnx, torch-export, openvino; "
                       "default: free)")  # fmt: skip
    batch.add_argument("--dynamic-batch", action="store_true",
                       help="a free batch dimension: the default, kept for older command "
                       "lines")  # fmt: skip
    p.add_argument("--no-verify", action="store_true", help="skip reading it back and comparing")
    p.add_argument("--opset", type=int, metavar="N", help="ONNX opset (default 17)")


def cmd_export(args: argparse.Namespace) -> int:
    from ..inference import export_model
    from .present import format_export_result

    result = export_model(
        args.source,
        args.format,
        args.output,
        dynamic_batch=False if args.static_batch else (True if args.dynamic_batch else None),
        verify=not args.no_verify,
        opset=args.opset,
    )
    print(format_export_result(result))
    return 0
