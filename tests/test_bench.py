"""The inference bench: rows with every field, skipped systems explained, the CLI table."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import randomize
from resnetlab import create_model
from resnetlab.cli import main
from resnetlab.inference import bench_model, format_bench
from resnetlab.models import get_config

FIELDS = ("img_per_s", "p50_ms", "p95_ms", "gflops", "probe_gflops", "peak_fraction",
          "max_rel_error")  # fmt: skip


@pytest.fixture(scope="module")
def rows():
    model = randomize(create_model("resnet20", depth=8, num_classes=10))
    return bench_model(model, batch_size=2, input_size=(3, 16, 16), iters=2, warmup=1, threads=1)


def test_rows_have_every_field(rows):
    by_name = {r.system: r for r in rows}
    assert set(by_name) == {
        "resnetlab eager (NCHW, BN)",
        "torchvision eager (NCHW)",
        "resnetlab optimized (BN folded, channels_last)",
        "resnetlab optimized bf16 (BN folded, channels_last)",
        "resnetlab int8 (FX x86, static)",
        "onnxruntime",
        "onnxruntime int8 (static QDQ)",
    }
    for row in rows:
        assert row.model == "resnet20" and row.input_size == (3, 16, 16) and row.batch_size == 2
        if row.skipped:
            continue
        assert row.timed_batches == 2
        for name in FIELDS:
            assert getattr(row, name) is not None, f"{row.system}: {name} missing"
        assert row.img_per_s > 0 and row.p95_ms >= row.p50_ms > 0
        if sys.platform == "linux":
            assert row.mem_mb is not None
    assert by_name["resnetlab eager (NCHW, BN)"].max_rel_error == 0
    assert by_name["resnetlab optimized (BN folded, channels_last)"].max_rel_error < 1e-4
    assert by_name["onnxruntime"].max_rel_error < 1e-4
    assert by_name["resnetlab int8 (FX x86, static)"].max_rel_error < 0.2
    assert "random inputs" in by_name["resnetlab int8 (FX x86, static)"].note


def test_torchvision_lacking_the_net_is_a_skipped_row_with_a_note(rows):
    (tv,) = [r for r in rows if r.system.startswith("torchvision")]
    assert tv.skipped and tv.img_per_s is None
    assert "skipped" in tv.note and "torchvision" in tv.note
    text = format_bench(rows)
    assert "resnet20, batch 2, input 3x16x16" in text
    assert "GEMM peak" in text and "torchvision eager (NCHW) (fp32): skipped" in text


def test_torchvision_twin_computes_the_same_function():
    cfg = get_config("resnet18", layers=(1, 1, 1, 1))  # torchvision fixes the widths
    model = randomize(create_model(cfg, num_classes=5))
    rows = bench_model(model, batch_size=2, input_size=(3, 32, 32), iters=1, warmup=0,
                       precisions=("fp32",), compare=("torchvision",), probe=False,
                       threads=1)  # fmt: skip
    (tv,) = [r for r in rows if r.system.startswith("torchvision")]
    assert not tv.skipped and tv.max_rel_error < 1e-5
    assert all(r.peak_fraction is None for r in rows)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"precisions": ("fp16",)}, "unknown precision"),
        ({"compare": ("tensorrt",)}, "unknown comparison"),
        ({"input_size": (1, 16, 16)}, "input channels"),
        ({"iters": 0}, "iters"),
        ({"precisions": ("fp32",), "compile": ("int8",)}, "not among the precisions"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        bench_model(create_model("resnet20", depth=8), **kwargs)


def test_cli_json(capsys):
    code = main(["bench", "resnet20", "--iters", "1", "--warmup", "0", "--batch-size", "2",
                 "--input-size", "3", "16", "16", "--precision", "fp32",
                 "--compare", "none", "--threads", "1", "--json"])  # fmt: skip
    assert code == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["system"] for r in rows] == ["resnetlab optimized (BN folded, channels_last)"]
    assert rows[0]["img_per_s"] > 0 and rows[0]["max_rel_error"] < 1e-4


def test_cli_prints_a_table():
    # One thread: on a shared machine, two OpenMP threads wait on each other at every op.
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "resnetlab", "bench", "resnet20", "--iters", "2",
         "--batch-size", "2"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "resnet20, batch 2, input 3x32x32" in out
    for column in ("img/s", "p50 ms", "p95 ms", "mem MB", "of peak"):
        assert column in out
    for system in ("resnetlab int8", "onnxruntime int8", "resnetlab optimized bf16"):
        assert system in out
    assert "torchvision eager (NCHW) (fp32): skipped" in out
