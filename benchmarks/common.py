"""Shared helpers of the benchmark scripts: their command line, the machine, BENCHMARKS.md.

Every script only prints unless given ``--write``: the committed BENCHMARKS.md sections and
the figures under docs/ change only when asked to (a trial run with a few iterations must
not replace a measured table). ``KEY=VALUE`` overrides may stand anywhere on the line.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import shlex
import sys
from pathlib import Path

import torch

from resnetlab.inference.bench import cpu_tier

BENCHMARKS_MD = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
HEADER = (
    "# Benchmarks\n\nEvery table here is written by a script under `benchmarks/`, which "
    "measures the compared systems side by side in one run on one machine; the command is "
    "given with each table. The machines are shared: compare ratios within a table, not "
    "absolute figures across tables.\n"
)


def benchmark_parser(doc: str | None) -> argparse.ArgumentParser:
    """The parser every script starts from: its docstring as the help, and ``--write``."""
    p = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--write",
        action="store_true",
        help="record the result in BENCHMARKS.md (and figures in docs/figures/); "
        "without it the script only prints",
    )
    return p


def parse_args(p: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """Parse ``argv`` (default: the command line); ``KEY=VALUE`` words anywhere on it join
    ``overrides`` when the script takes them (argparse alone stops at the first option)."""
    from resnetlab.cli import parse_with_overrides

    return parse_with_overrides(p, argv)


def command(script: str, argv: list[str] | None) -> str:
    """The command line that produced a section, as it is recorded with it."""
    args = sys.argv[1:] if argv is None else argv
    return f"python benchmarks/{script} " + shlex.join(args)  # quoted as a shell needs it


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return (
        f"{cpu}, {os.cpu_count()} cores ({cpu_tier()}), {gpu}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )


def tier_key() -> str:
    """This CPU's tier as a section-key suffix (``amx``, ``avx512-bf16``, ``avx2``, ...): a
    table measured on one tier must not replace another tier's."""
    return cpu_tier().split()[0].lower()


def markdown_table(headers: list[str], rows: list[list[object]]) -> str:
    def fmt(v: object) -> str:
        return f"{v:,.1f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_section(key: str, title: str, body: str, command: str) -> None:
    """Replace (or append) the section ``key`` of BENCHMARKS.md."""
    date = datetime.date.today().isoformat()
    block = (
        f"<!-- begin {key} -->\n## {title}\n\n{body}\n\nMachine: {machine()}. "
        f"Measured {date} with `{command}`.\n<!-- end {key} -->"
    )
    text = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else HEADER
    pattern = re.compile(rf"<!-- begin {key} -->.*?<!-- end {key} -->", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        # A new section goes after its last sibling (the same key but its last part: another
        # CPU tier's or model's record of the same benchmark), else at the end.
        family = re.escape(key.rsplit("_", 1)[0])
        ends = list(re.finditer(rf"<!-- end {family}_[^ _]+ -->\n", text))
        at = ends[-1].end() if ends else len(text)
        text = f"{text[:at]}\n{block}\n{text[at:]}"
    BENCHMARKS_MD.write_text(text)
