"""``config``: every key of a training config, its type, default and allowed values."""

from __future__ import annotations

import argparse

from ..formatting import dumps_json
from .common import CliError, add_command, add_json

EPILOG = """examples:
  resnetlab config                  # every key of a training config
  resnetlab config 'optim.*'        # a shell-style pattern on the key
  resnetlab config 'model_args.*'   # the model's own options
  resnetlab config --json
set keys in a YAML file (`resnetlab train --config FILE`) or as KEY=VALUE on the train
command line, e.g. resnetlab train --data mnist optim.lr=1e-3 max_iters=2e3"""


def add_config_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "config", cmd_config, "List every training config key (for --config "
                    "files and KEY=VALUE overrides): type, default, allowed values.", EPILOG)  # fmt: skip
    p.add_argument("pattern", nargs="?", default="*", help="shell-style pattern on the key")
    add_json(p)


def cmd_config(args: argparse.Namespace) -> int:
    from ..config import config_keys
    from ..formatting import render_table

    rows = config_keys(args.pattern)
    if not rows:
        raise CliError(f"no config key matches {args.pattern!r}; `resnetlab config` lists all")
    columns = [("key", "key"), ("type", "type"), ("default", "default"), ("allowed", "allowed")]
    print(dumps_json(rows, indent=2) if args.json else render_table(rows, columns))
    return 0
