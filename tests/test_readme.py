"""README's examples cannot drift: its Python blocks run as written, every `resnetlab`
command line in it parses with the real parser, and the quick ones run."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from resnetlab import cli

README = Path(__file__).parents[1] / "README.md"
# A block right after this comment is shown, not run (e.g. it downloads weights); the
# comment says why, in the README itself.
NOT_RUN = "<!-- not run:"
QUICK = {"models", "info", "config", "weights"}  # commands that finish in seconds


def blocks(lang: str) -> list[tuple[int, str, bool]]:
    """(line, code, runnable) of each ```lang block."""
    out, lines = [], README.read_text().splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() == f"```{lang}":
            start, body = i + 1, []
            i += 1
            while lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            before = "\n".join(lines[max(0, start - 4) : start - 1])
            out.append((start, "\n".join(body), NOT_RUN not in before))
        i += 1
    return out


def commands() -> list[tuple[int, list[str]]]:
    """Every resnetlab command line of README's bash blocks, as argv after `resnetlab`."""
    found = []
    for start, code, _ in blocks("bash"):
        joined = re.sub(r"\\\n\s*", " ", code)
        for offset, line in enumerate(joined.splitlines()):
            line = line.split(" #")[0].strip()
            m = re.search(r"(?:\.venv/bin/resnetlab|-m resnetlab)\s+(.*)", line)
            if m and not line.startswith("#"):
                found.append((start + offset, shlex.split(m.group(1))))
    return found


def test_readme_has_examples_to_check():
    assert len([b for b in blocks("python") if b[2]]) >= 4
    assert len(commands()) >= 30


@pytest.mark.parametrize("line, code", [(n, c) for n, c, run in blocks("python") if run],
                         ids=lambda v: f"line{v}" if isinstance(v, int) else "")  # fmt: skip
def test_python_block_runs_as_written(tmp_path, line, code):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, f"README line {line}:\n{proc.stderr[-3000:]}"


def test_every_command_line_parses():
    parser = cli.build_parser()
    bad = []
    for line, argv in commands():
        try:
            args, extra = parser.parse_known_args(argv)
        except SystemExit:
            bad.append((line, argv, "refused by the parser"))
            continue
        if extra and not (hasattr(args, "overrides") and all("=" in e for e in extra)):
            bad.append((line, argv, f"unrecognized {extra}"))
    assert not bad, bad


def test_quick_commands_run():
    ran = 0
    for line, argv in commands():
        if argv[0] not in QUICK or "--download" in argv:
            continue
        proc = subprocess.run([sys.executable, "-m", "resnetlab", *argv], capture_output=True,
                              text=True, timeout=300)  # fmt: skip
        assert proc.returncode == 0, f"README line {line}: {argv}\n{proc.stderr[-2000:]}"
        ran += 1
    assert ran >= 4
