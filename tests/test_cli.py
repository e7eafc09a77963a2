"""The command line, run as a user runs it (real subprocesses), and how it shows numbers."""

import argparse
import json
import re
import subprocess
import sys

import pytest

from resnetlab.cli import build_parser
from resnetlab.formatting import dumps_json, format_count, round_floats


def run(*args, check=True):
    proc = subprocess.run(
        [sys.executable, "-m", "resnetlab", *args], capture_output=True, text=True, timeout=300
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def _floats(value):
    if isinstance(value, float):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _floats(v)
    elif isinstance(value, list):
        for v in value:
            yield from _floats(v)


def _significant_digits(x: float) -> int:
    mantissa = repr(x).lower().split("e")[0].replace("-", "").replace(".", "").strip("0")
    return len(mantissa)


def test_models_table_and_json():
    out = run("models", "resnet2*").stdout
    assert "resnet20" in out and "270K" in out and "40.6M" in out and "resnet200_v2" in out
    # The papers' rounded figures are shown as printed, not as 1700000.000.
    out = run("models", "resnet164_v2").stdout
    assert "| 1.70M " in out and "| 1.7M " in out and "+0.19%" in out
    assert not re.search(r"\d{7}", out) and ".000" not in out
    rows = json.loads(run("models", "resnext29*", "--json").stdout)
    assert [r["name"] for r in rows] == ["resnext29_8x64d", "resnext29_16x64d"]
    assert rows[0]["params"] == 34426698
    # JSON carries the digits that mean something: no float with more than 6 significant ones.
    floats = list(_floats(rows))
    assert floats and all(_significant_digits(x) <= 6 for x in floats)
    assert rows[0]["gmacs"] == 5.38727  # 5.387270912 measured


def test_info():
    out = run("info", "resnet50").stdout
    assert "25,557,032" in out and "layer4" in out and "4.09G" in out
    assert "0.000" not in out  # small layers' MACs are counted, not rounded to nothing
    info = json.loads(run("info", "resnet56", "--input-size", "1", "28", "28", "--json").stdout)
    assert info["input_size"] == [1, 28, 28]


@pytest.mark.parametrize("cmd", ["models", "info"])
def test_help_has_examples(cmd):
    assert "examples:" in run(cmd, "--help").stdout


def test_bad_input_is_one_line():
    proc = run("info", "resnet5", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "did you mean" in proc.stderr
    proc = run("models", "nothing*", check=False)
    assert proc.returncode == 2 and "no model matches" in proc.stderr


def test_every_option_has_help():
    missing = []

    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if isinstance(action, argparse._SubParsersAction):
                helps = {a.dest: a.help for a in action._choices_actions}
                for name, sub in action.choices.items():
                    if not helps.get(name):
                        missing.append(f"{path} {name}")
                    walk(sub, f"{path} {name}")
                continue
            text = re.sub(r"\([^)]*\)", "", action.help or "")  # more than a bare default
            if action.help == argparse.SUPPRESS or not re.search(r"[A-Za-z]{3}", text):
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")

    walk(build_parser(), "resnetlab")
    assert not missing, f"options without help: {missing}"


def test_format_count():
    cases = {0: "0", 650: "650", 999.5: "1.00K", 269_722: "270K", 999_999: "1.00M",
             1.7e6: "1.70M", 11_689_512: "11.7M", 4.089e9: "4.09G", -2e6: "-2.00M"}  # fmt: skip
    assert {v: format_count(v) for v in cases} == cases
    assert format_count(None) == "-"


def test_round_floats_at_the_json_boundary():
    import numpy as np

    data = {"top1": 0.9312999844551086, "n": 10_000, "ok": True, "none": None,
            "curve": [(1, 0.1 + 0.2)], "np": np.float32(0.9313), "tiny": 3.00000012e-9}  # fmt: skip
    assert round_floats(data) == {"top1": 0.9313, "n": 10_000, "ok": True, "none": None,
                                  "curve": [[1, 0.3]], "np": 0.9313, "tiny": 3e-9}  # fmt: skip
    assert json.loads(dumps_json([float("nan")]))[0] != json.loads(dumps_json([float("nan")]))[0]
    assert dumps_json({"a": 1 / 3}, indent=None) == '{"a": 0.333333}'


def _epilogs(parser: argparse.ArgumentParser, path: str = "resnetlab"):
    """(command, epilog) of ``parser`` and every subparser under it."""
    if parser.epilog:
        yield path, parser.epilog
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _epilogs(sub, f"{path} {name}")


def test_help_examples_keep_their_line_continuations():
    epilogs = dict(_epilogs(build_parser()))
    assert sum("examples:" in text for text in epilogs.values()) == 14  # every command's
    for name, text in epilogs.items():
        for line in text.splitlines():
            # a lost "\" joins two example lines into one, with the indent in the middle
            assert not re.search(r"\S {4,}--", line), f"{name}: {line!r}"


def test_the_projects_warnings_are_one_line_and_others_keep_their_format(capsys, monkeypatch):
    import warnings

    import resnetlab.cli.models as models_cli
    from resnetlab.cli import main
    from resnetlab.inference.optimize import CompileFallbackWarning

    def info_that_warns(args):
        warnings.warn("torch.compile failed on this model (why); it runs uncompiled",
                      CompileFallbackWarning, stacklevel=2)  # fmt: skip
        warnings.warn("something of another library", FutureWarning, stacklevel=2)
        return 0

    monkeypatch.setattr(models_cli, "cmd_info", info_that_warns)
    before = warnings.showwarning
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = before  # (catch_warnings restores it afterwards too)
        assert main(["info", "resnet20"]) == 0
    err = capsys.readouterr().err
    assert "resnetlab info: warning: torch.compile failed on this model (why); it runs " \
        "uncompiled\n" in err  # fmt: skip
    assert "warning: something of another library" not in err  # Python's own format
    assert warnings.showwarning is before
