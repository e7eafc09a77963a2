"""``models`` (and ``models --paper``), ``info`` and ``weights``: the zoo and its weights."""

from __future__ import annotations

import argparse
import sys

from ..formatting import dumps_json
from .common import CliError, add_command, add_input_size, add_json

MODELS_EPILOG = """examples:
  resnetlab models                 # every model with params and MACs
  resnetlab models 'resnext*'      # a shell-style pattern
  resnetlab models --json > models.json
  resnetlab models --paper         # measured vs the papers' tables, mismatches marked
  resnetlab models --paper 'resnet1*' --json"""

INFO_EPILOG = """examples:
  resnetlab info resnet50
  resnetlab info resnet56 --input-size 3 32 32 --json"""

WEIGHTS_EPILOG = """examples:
  resnetlab weights                           # every named weight: accuracy, sizes, cached?
  resnetlab weights resnet50                  # the weights of one model
  resnetlab weights 'timm:*' --json
  resnetlab weights --download torchvision:resnet50.IMAGENET1K_V2   # prints the file's path
then: create_model("resnet50", weights="torchvision:resnet50.IMAGENET1K_V2"), or
  resnetlab train --weights NAME. Files go to $TORCH_HOME/hub/checkpoints (default
  ~/.cache/torch/hub/checkpoints), are checked against their sha256 and reused offline"""


def add_models_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "models", cmd_models_paper,
                    "List the models with params and MACs (measured).", MODELS_EPILOG)  # fmt: skip
    p.add_argument("pattern", nargs="?", default="*", help="shell-style name pattern")
    add_json(p)
    # `models --paper`: the same command, with the papers' figures beside the measured ones.
    p.add_argument("--paper", action="store_true",
                   help="every published figure beside the measured one, mismatches marked")  # fmt: skip


def add_info_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "info", cmd_info, "Per-stage params and MACs of one model.", INFO_EPILOG)
    p.add_argument("model", help="a model name (see `resnetlab models`)")
    add_input_size(p)
    add_json(p)


def add_weights_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "weights", cmd_weights,
                    "List the named pretrained weights, or download one.", WEIGHTS_EPILOG)  # fmt: skip
    p.add_argument("pattern", nargs="?", default="*",
                   help="shell-style pattern on the weight's or the model's name")  # fmt: skip
    add_json(p)
    p.add_argument("--download", metavar="NAME", help="fetch NAME into the cache; print its path")


def cmd_models(args: argparse.Namespace) -> int:
    from ..models import list_models
    from ..models.summary import models_table, render_models_table

    names = list_models(args.pattern)
    if not names:
        raise CliError(f"no model matches {args.pattern!r}; try `resnetlab models` for all")
    rows = models_table(names, progress=not args.json and sys.stderr.isatty())
    if args.json:
        print(dumps_json(rows, indent=2))
    else:
        print(render_models_table(rows))
    return 0


def cmd_models_paper(args: argparse.Namespace) -> int:
    """`models --paper`: every published figure beside the measured one; else `models`."""
    if not args.paper:
        return cmd_models(args)
    from ..models.summary import paper_table, render_paper_table

    rows = paper_table(args.pattern, progress=not args.json and sys.stderr.isatty())
    if not rows:
        raise CliError(
            f"no published figure for a model matching {args.pattern!r}; "
            "`resnetlab models --paper` lists them all"
        )
    print(dumps_json(rows, indent=2) if args.json else render_paper_table(rows))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from ..models import model_info
    from ..models.summary import info_table

    info = model_info(args.model, tuple(args.input_size) if args.input_size else None)
    if args.json:
        print(dumps_json(info, indent=2))
    else:
        c, h, w = info["input_size"]
        print(f"{info['name']} ({info['family']}, depth {info['depth']}), input {c}x{h}x{w}")
        print(info_table(info))
    return 0


def cmd_weights(args: argparse.Namespace) -> int:
    from ..models import download_pretrained, list_pretrained
    from ..models.pretrained import pretrained_rows, render_pretrained_table

    if args.download:
        print(download_pretrained(args.download, progress=sys.stderr.isatty()))
        return 0
    rows = pretrained_rows(list_pretrained(args.pattern))
    if not rows:
        raise CliError(f"no named weights match {args.pattern!r}; `resnetlab weights` lists all")
    print(dumps_json(rows, indent=2) if args.json else render_pretrained_table(rows))
    return 0
