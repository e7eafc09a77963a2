"""What the commands share: the user-error type, subparser creation, common options and
the parsing of ``KEY=VALUE`` overrides."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

from ..errors import ResnetlabError

Command = Callable[[argparse.Namespace], int]


class CliError(ResnetlabError):
    """A user error: printed as one line, exit status 2."""


def add_command(
    sub: argparse._SubParsersAction,
    name: str,
    func: Command,
    help: str,
    epilog: str | None = None,
) -> argparse.ArgumentParser:
    """A subparser ``name`` that runs ``func``, with ``help`` as its description and the
    ``epilog`` (its examples) kept as written."""
    p = sub.add_parser(
        name,
        help=help,
        description=help,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(func=func)
    return p


def add_json(p: argparse.ArgumentParser, help: str = "print JSON instead of a table") -> None:
    p.add_argument("--json", action="store_true", help=help)


def add_input_size(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input-size", type=int, nargs=3, metavar=("C", "H", "W"),
                   help="input shape (default: the model's native one)")  # fmt: skip


def add_device(p: argparse.ArgumentParser, **kwargs) -> None:
    """``--device``; ``kwargs`` (a default, another help) go to ``add_argument``."""
    p.add_argument("--device", **{"help": "auto | cpu | cuda | cuda:N", **kwargs})


def add_model_name(p: argparse.ArgumentParser) -> None:
    """``--model NAME`` of predict and serve: the architecture of weights that lack one."""
    p.add_argument("--model", metavar="NAME", help="a model name, for weights that do not "
                   "name their architecture (alone: random weights)")  # fmt: skip


def parse_with_overrides(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None = None
) -> argparse.Namespace:
    """Parse ``argv``; KEY=VALUE overrides may come before, between or after options.

    argparse leaves the ones after an option group unparsed: they are collected here into
    ``overrides`` when the command takes them.
    """
    args, extra = parser.parse_known_args(argv)
    if extra:
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args
