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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (CliError, ValueError, FileNotFoundError) as e:
        print(f"resnetlab {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"resnetlab {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
