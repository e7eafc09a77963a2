"""The command line, run as a user runs it: real subprocesses."""

import json
import subprocess
import sys

import pytest


def run(*args, check=True):
    proc = subprocess.run(
        [sys.executable, "-m", "resnetlab", *args], capture_output=True, text=True, timeout=300
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_models_table_and_json():
    out = run("models", "resnet2*").stdout
    assert "resnet20" in out and "269,722" in out and "resnet200_v2" in out
    rows = json.loads(run("models", "resnext29*", "--json").stdout)
    assert [r["name"] for r in rows] == ["resnext29_8x64d", "resnext29_16x64d"]
    assert rows[0]["params"] == 34426698


def test_info():
    out = run("info", "resnet50").stdout
    assert "25,557,032" in out and "layer4" in out and "4.089" in out
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
