"""The ``resnetlab`` command line: it parses arguments and calls one library function each."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

EPILOGS = {
    "models": """examples:
  resnetlab models                 # every model with params and MACs
  resnetlab models 'resnext*'      # a shell-style pattern
  resnetlab models --json > models.json""",
    "info": """examples:
  resnetlab info resnet50
  resnetlab info resnet56 --input-size 3 32 32 --json""",
    "train": """examples:
  resnetlab train --model resnet20 --data fashion-mnist --epochs 3 --output runs/r20
  resnetlab train --config configs/fashion_mnist_fast.yaml --output runs/fast
  resnetlab train --config configs/cifar_resnet_paper.yaml --model resnet56 optim.lr=0.05
  resnetlab train --resume runs/r20 --epochs 6      # continue, here with more epochs
overrides: KEY=VALUE with dotted keys, e.g. optim.lr=0.05 schedule.name=onecycle
  data.batch_size=256 model_args.drop_path_rate=0.1 label_smoothing=0.1""",
    "eval": """examples:
  resnetlab eval runs/r20 --data fashion-mnist
  resnetlab eval runs/r20/model.safetensors --data fashion-mnist --json""",
    "predict": """examples:
  resnetlab predict runs/r20 photos/ 'more/*.png' --topk 3
  resnetlab predict --weights runs/r20/model.safetensors cat.jpg --json
  resnetlab predict --model resnet50 --weights resnet50-tv.pth dog.jpg  # torchvision/timm
  resnetlab predict --model resnet18 dog.jpg   # random weights: only a smoke test
folders are searched recursively; exit status 1 when some file could not be read""",
    "export": """examples:
  resnetlab export runs/r20 --format onnx --output r20.onnx --dynamic-batch
  resnetlab export runs/r20 --format torch-export --output r20.pt2
  resnetlab export runs/r50 --format torchvision --output r50.pth
  resnetlab export runs/r20/model.safetensors --format safetensors --output copy.safetensors
every export is read back and compared with PyTorch (relative error <= 1e-4) unless
--no-verify""",
}


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


def cmd_models(args: argparse.Namespace) -> int:
    from .models import list_models
    from .models.summary import MODELS_COLUMNS, models_table, render_table

    names = list_models(args.pattern)
    if not names:
        raise CliError(f"no model matches {args.pattern!r}; try `resnetlab models` for all")
    rows = models_table(names, progress=not args.json and sys.stderr.isatty())
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(render_table(rows, MODELS_COLUMNS))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .models import model_info
    from .models.summary import info_table

    info = model_info(args.model, tuple(args.input_size) if args.input_size else None)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        c, h, w = info["input_size"]
        print(f"{info['name']} ({info['family']}, depth {info['depth']}), input {c}x{h}x{w}")
        print(info_table(info))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .config import load_train_config
    from .engine import train

    preset = args.config
    output = args.output
    if args.resume:
        if args.config:
            raise CliError("--resume takes the run's own config.yaml; drop --config")
        preset, output = f"{args.resume}/config.yaml", args.resume
    data = {"spec": args.data, "data_dir": args.data_dir, "batch_size": args.batch_size}
    cfg = load_train_config(
        preset,
        args.overrides,
        model=args.model,
        epochs=args.epochs,
        seed=args.seed,
        device=args.device,
        precision=args.precision,
        max_iters=args.max_iters,
        save_every_steps=args.save_every_steps,
        output=output,
        data={k: v for k, v in data.items() if v is not None},
        optim={"lr": args.lr} if args.lr is not None else {},
    )
    summary = train(
        cfg, resume=bool(args.resume), overwrite=args.overwrite, progress=not args.quiet
    )
    top1 = summary["test_top1"]
    print(
        f"done: {summary['model']} on {summary['data']}, {summary['epochs']} epochs in "
        f"{summary['train_time_s']:.0f} s ({summary['train_img_per_s']:.0f} img/s), "
        + (f"test top-1 {100 * top1:.2f}%" if top1 is not None else "no evaluation")
        + f"\nreport: {summary['run_dir']}/report.md  plot: {summary['run_dir']}/curves.png"
    )
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .engine import evaluate_source, format_result

    result = evaluate_source(
        args.source,
        args.data,
        split=args.split,
        data_dir=args.data_dir,
        batch_size=args.batch_size,
        device=args.device,
        output=args.output,
        tta_flip=args.tta_flip,
        progress=not args.json,
    )
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "confusion"}))
    else:
        print(format_result(result))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .inference import run_predict

    return run_predict(
        args.inputs,
        weights=args.weights,
        model=args.model,
        topk=args.topk,
        as_json=args.json,
        batch_size=args.batch_size,
        device=args.device,
    )


def cmd_export(args: argparse.Namespace) -> int:
    from .inference import export_model, format_export_result

    result = export_model(
        args.source,
        args.format,
        args.output,
        dynamic_batch=args.dynamic_batch,
        verify=not args.no_verify,
        opset=args.opset,
    )
    print(format_export_result(result))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="resnetlab",
        description="The ResNet family (ResNet, pre-activation ResNet, ResNeXt) for PyTorch.",
        epilog="Run `resnetlab COMMAND --help` for a command's options and examples.",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"resnetlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, func: Callable, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name,
            help=help,
            description=help,
            epilog=EPILOGS.get(name),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.set_defaults(func=func)
        return p

    p = add("models", cmd_models, "List the models with params and MACs (measured).")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style name pattern")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p = add("info", cmd_info, "Per-stage params and MACs of one model.")
    p.add_argument("model", help="a model name (see `resnetlab models`)")
    p.add_argument("--input-size", type=int, nargs=3, metavar=("C", "H", "W"))
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p = add("train", cmd_train, "Train a model on a dataset; writes a self-describing run dir.")
    p.add_argument("--config", help="a YAML preset (see configs/)")
    p.add_argument("--model", help="model name (default: the preset's, else resnet20)")
    p.add_argument("--data", help="fashion-mnist | mnist | cifar10 | cifar100 | "
                   "imagefolder:PATH | synthetic")  # fmt: skip
    p.add_argument("--data-dir", help="where datasets live (default $RESNETLAB_DATA or "
                   "~/.cache/resnetlab)")  # fmt: skip
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--max-iters", type=int, help="stop after this many iterations")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--precision", help="auto | fp32 | bf16 | fp16")
    p.add_argument("--output", help="the run directory (default runs/default)")
    p.add_argument("--save-every-steps", type=int, help="also checkpoint every N steps")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR")
    p.add_argument("--overwrite", action="store_true", help="replace a run in --output")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")

    p = add("eval", cmd_eval, "Evaluate a run directory or weights file on a dataset.")
    p.add_argument("source", help="a run directory or a .safetensors file")
    p.add_argument("--data", required=True, help="dataset spec, as for train")
    p.add_argument("--data-dir")
    p.add_argument("--split", default="test", choices=["test", "val"])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="auto")
    p.add_argument("--output", help="where to write confusion-<split>.png and eval-<split>.json")
    p.add_argument("--tta-flip", action="store_true", help="average with the flipped image")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = add("predict", cmd_predict, "Classify image files with a run directory or weights.")
    p.usage = (
        "%(prog)s (RUN_DIR | --weights FILE | --model NAME) INPUTS... [--topk K] [--json] "
        "[--batch-size B] [--device DEVICE]"
    )
    p.add_argument("inputs", nargs="+", metavar="INPUTS",
                   help="image files, folders (searched recursively) or glob patterns; "
                   "first a run directory unless --weights or --model is given")  # fmt: skip
    p.add_argument("--weights", metavar="FILE", help="resnetlab .safetensors (or, with "
                   "--model, a torchvision/timm state dict)")  # fmt: skip
    p.add_argument("--model", metavar="NAME", help="a model name, for weights that do not "
                   "name their architecture (alone: random weights)")  # fmt: skip
    p.add_argument("--topk", type=int, default=5, metavar="K", help="classes per image (5)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--batch-size", type=int, default=32, metavar="B", help="images per batch")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")

    p = add("export", cmd_export, "Write a model as safetensors, torchvision, ONNX or .pt2.")
    p.add_argument("source", help="a run directory or a resnetlab .safetensors file")
    p.add_argument("--format", required=True, metavar="FORMAT",
                   help="safetensors | torchvision | onnx | torch-export")  # fmt: skip
    p.add_argument("--output", required=True, metavar="PATH", help="the file to write")
    p.add_argument("--dynamic-batch", action="store_true",
                   help="a free batch dimension (onnx, torch-export)")  # fmt: skip
    p.add_argument("--no-verify", action="store_true", help="skip reading it back and comparing")
    p.add_argument("--opset", type=int, metavar="N", help="ONNX opset (default 17)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (CliError, ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"resnetlab {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"resnetlab {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
