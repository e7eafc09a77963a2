"""The ``resnetlab`` command line: it parses arguments and calls one library function each.

Each command lives in its own module, which adds its subparser (options, help, examples)
and runs it; :mod:`.present` turns the library's results into text; :mod:`.common` holds
what they share. :func:`main` is the console script.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable, Sequence

from ..errors import ResnetlabError, TrainingInterrupted
from . import bench, config, eval, experiment, export, models, predict, serve, train
from .common import CliError, parse_with_overrides

__all__ = ["CliError", "build_parser", "main", "parse_with_overrides"]

# The subcommands in the order `resnetlab --help` lists them.
SUBPARSERS = (
    models.add_models_parser,
    models.add_info_parser,
    models.add_weights_parser,
    train.add_train_parser,
    config.add_config_parser,
    eval.add_eval_parser,
    predict.add_predict_parser,
    serve.add_serve_parser,
    export.add_export_parser,
    experiment.add_experiment_parser,
    bench.add_bench_parser,
)


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: the top-level parser and every command's subparser."""
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="resnetlab",
        description="The ResNet family (ResNet, pre-activation ResNet, ResNeXt) for PyTorch.",
        epilog="Run `resnetlab COMMAND --help` for a command's options and examples.",
    )
    parser.add_argument("--version", action="version", version=f"resnetlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in SUBPARSERS:
        add(sub)
    return parser


def _warnings_as_lines(command: str) -> Callable[..., None]:
    """A ``warnings.showwarning`` that says the project's own warnings in one line (what was
    done instead, and why), as errors are said; other warnings keep Python's format."""
    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        if category.__module__.startswith("resnetlab."):
            print(f"resnetlab {command}: warning: {message}", file=file or sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    return show


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parse_with_overrides(parser, argv)
    shown = warnings.showwarning
    warnings.showwarning = _warnings_as_lines(args.command)
    try:
        return args.func(args)
    except TrainingInterrupted as e:
        print(f"resnetlab {args.command}: {e}", file=sys.stderr)
        return 130
    except ResnetlabError as e:
        # a problem with the input or the machine, said on one line; anything else is a bug
        # and keeps its traceback
        print(f"resnetlab {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"resnetlab {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = shown
