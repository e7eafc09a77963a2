"""Shared helpers of the benchmark scripts: machine description and BENCHMARKS.md sections."""

from __future__ import annotations

import datetime
import os
import platform
import re
from pathlib import Path

import torch

BENCHMARKS_MD = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
HEADER = (
    "# Benchmarks\n\nEvery table here is written by a script under `benchmarks/`, which "
    "measures the compared systems side by side in one run on one machine; the command is "
    "given with each table. The machines are shared: compare ratios within a table, not "
    "absolute figures across tables.\n"
)


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
        f"{cpu}, {os.cpu_count()} cores ({torch.backends.cpu.get_cpu_capability()}), {gpu}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )


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
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else f"{text}\n{block}\n"
    BENCHMARKS_MD.write_text(text)
