"""``experiment``: the papers' experiments, each with results, figures and a report."""

from __future__ import annotations

import argparse

from .common import add_command

EPILOG = """examples:
  resnetlab experiment degradation --quick --output runs/degradation
  resnetlab experiment gradients --quick --output runs/gradients
  resnetlab experiment cardinality --quick --output runs/cardinality
  resnetlab experiment degradation --quick iters=400 precision=bf16   # KEY=VALUE settings
  resnetlab experiment degradation --help     # the settings of one experiment
each writes results.json, figures (PNG) and report.md to --output; running again with the
same settings continues an interrupted run. docs/reproduction.md shows what they gave"""

EPILOGS = {
    "degradation": """examples:
  resnetlab experiment degradation --quick --output runs/degradation  # ~10 min on 2 cores
  resnetlab experiment degradation --output runs/fig6     # the paper's 64k iterations (GPU)
  resnetlab experiment degradation --dataset cifar10 --depths 20 32 44 56 --output runs/c10
  resnetlab experiment degradation --quick --iters 400 --threads 1 --output runs/deg400
  resnetlab experiment degradation --quick --no-zero-init --output runs/deg-paper-init
writes DIR/results.json ({model: {"train_error", "test_error", "curve": [...]}}, errors as
fractions), DIR/degradation.png (plain left, residual right; dashed: training error, bold:
test error) and DIR/report.md saying whether the claim held, did not, or is inconclusive
(nets still at chance, or differences within the noise of the images measuring them)""",
    "gradients": """examples:
  resnetlab experiment gradients --quick --output runs/gradients
  resnetlab experiment gradients --models plain110 resnet110 resnet110_v2 --steps 100
  resnetlab experiment gradients --deep-models --output runs/flow   # skip the 1000-layer nets
  resnetlab experiment gradients --models --deep-models resnet1202 --deep-steps 300 \\
      --output runs/1202                                    # only the 1202-layer net
writes DIR/results.json, DIR/gradients.png (per-layer gradient norms, log scale),
DIR/deep.png (loss of the 1000+-layer nets, memory with/without checkpointing), report.md""",
    "cardinality": """examples:
  resnetlab experiment cardinality --quick --output runs/cardinality
  resnetlab experiment cardinality --budget 2 --output runs/card2x   # the paper's Table 4
  resnetlab experiment cardinality --cardinalities 2 4 8 16 --depths 20 56 --iters 5000
writes DIR/results.json, DIR/cardinality.png (errors of equal-MACs variants) and report.md
with the table of MACs, params and errors""",
}


def add_experiment_parser(sub: argparse._SubParsersAction) -> None:
    from ..experiments import CONFIGS, experiment_fields

    p = add_command(sub, "experiment", cmd_experiment, "Reproduce the papers' experiments "
                    "(results, figures and a report in --output).", EPILOG)  # fmt: skip
    experiments = p.add_subparsers(dest="experiment", metavar="EXPERIMENT", required=True)
    for name in CONFIGS:
        _add_experiment(experiments, name, HELP[name], experiment_fields(name))


HELP = {
    "degradation": "Plain vs residual nets of two depths, same recipe (He et al. 2015, Figure 6).",
    "gradients": "Per-layer gradient norms of plain vs residual nets; 1000+-layer nets trained, "
    "with and without checkpointing.",
    "cardinality": "Cardinality vs depth and width at equal MACs (Xie et al. 2017, Tables 3-4), "
    "on a small scale.",
}


def _add_experiment(
    experiments: argparse._SubParsersAction, name: str, help: str, fields: list[dict[str, str]]
) -> argparse.ArgumentParser:
    """The subparser of one experiment: a flag for each field of its config (``--KEY``, the
    config checks the value) and the same fields as ``KEY=VALUE`` overrides."""
    e = experiments.add_parser(
        name,
        help=help,
        description=help,
        epilog=EPILOGS.get(name, "") + "\n\n" + _fields_text(fields),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    e.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="settings by name, as listed below (after the flags' values)")  # fmt: skip
    e.add_argument("--output", metavar="DIR", help=f"results directory (runs/{name})")
    e.add_argument("--overwrite", action="store_true",
                   help="replace results of other settings in --output")  # fmt: skip
    e.add_argument("--quiet", dest="progress", action="store_false", help="no progress bars")
    for f in fields:
        flag = "--" + f["key"].replace("_", "-")
        text = f"{f['help']} ({_default_phrase(f)})".replace("%", "%%")
        if f["type"] == "bool":
            e.add_argument(flag, dest=f["key"], action=argparse.BooleanOptionalAction, help=text)
        elif f["type"] == "list of names":
            e.add_argument(flag, dest=f["key"], nargs="*", metavar="NAME", help=text)
        elif f["type"].startswith("list"):
            e.add_argument(flag, dest=f["key"], nargs="+", metavar="N", help=text)
        else:
            e.add_argument(flag, dest=f["key"], metavar=METAVARS.get(f["type"], "VALUE"),
                           help=text)  # fmt: skip
    return e


METAVARS = {"int": "N", "int or null": "N", "float": "X", "str": "VALUE", "str or null": "DIR"}


def _default_phrase(f: dict[str, str]) -> str:
    if f["quick"] and f["quick"] != f["default"]:
        return f"full {f['default']}, quick {f['quick']}"
    return f"default {f['default']}"


def _fields_text(fields: list[dict[str, str]]) -> str:
    """The settings as a table: key, full default, quick value, what is allowed."""
    width = max(len(f["key"]) for f in fields) + 2
    dwidth = max(len(f["default"]) for f in fields) + 2
    qwidth = max(len("quick"), *(len(f["quick"]) for f in fields)) + 2
    lines = [
        "settings (KEY=VALUE, or the flag --KEY; values are read as YAML, null for none):",
        f"  {'KEY':<{width}}{'DEFAULT':<{dwidth}}{'QUICK':<{qwidth}}ALLOWED",
    ]
    for f in fields:
        lines.append(f"  {f['key']:<{width}}{f['default']:<{dwidth}}{f['quick']:<{qwidth}}"
                     f"{f['allowed']}".rstrip())  # fmt: skip
    return "\n".join(lines)


def cmd_experiment(args: argparse.Namespace) -> int:
    from ..experiments import run_experiment

    options = {k: v for k, v in vars(args).items()
               if k not in ("command", "experiment", "func") and v is not None}  # fmt: skip
    overrides = list(options.pop("overrides", []))
    for key, value in options.items():
        if isinstance(value, list):  # KEY=VALUE after a list flag's values: an override
            options[key] = [v for v in value if "=" not in v]
            overrides += [v for v in value if "=" in v]
    result = run_experiment(args.experiment, overrides=overrides, **options)
    print(result["summary"])
    return 0
