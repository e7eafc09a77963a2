"""The inference bench: rows with every field, skipped systems explained, the CLI table;
and the benchmark scripts, which record their results only when asked to."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import randomize
from resnetlab import create_model
from resnetlab.cli import main
from resnetlab.cli.present import format_bench
from resnetlab.inference import bench, bench_model
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
        "resnetlab int8 (PT2E, inductor)",
        "onnxruntime",
        "onnxruntime int8 (static QDQ)",
        "openvino (hint f32)",
        "openvino (default hint)",
        "openvino int8 (NNCF)",
    }
    for row in rows:
        assert row.model == "resnet20" and row.input_size == (3, 16, 16) and row.batch_size == 2
        assert row.cpu == bench.cpu_tier()
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
    assert by_name["resnetlab int8 (PT2E, inductor)"].max_rel_error < 0.2
    assert "random inputs" in by_name["resnetlab int8 (PT2E, inductor)"].note


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
    systems = ("resnetlab int8", "onnxruntime int8", "resnetlab optimized bf16",
               "openvino (hint f32)", "openvino (default hint)", "openvino int8 (NNCF)")  # fmt: skip
    for system in systems:
        assert system in out
    assert "CPU " in out.splitlines()[0]
    assert "torchvision eager (NCHW) (fp32): skipped" in out


# --------------------------------------------------------------------------------------
# OpenVINO: fp32 hint, its own default precision, NNCF int8; and where it is missing


def _openvino_default_precision():
    import openvino as ov
    import openvino.opset13 as ops

    x = ops.parameter([1, 4], ov.Type.f32)
    compiled = ov.Core().compile_model(ov.Model([ops.relu(x)], [x]), "CPU")
    name = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    return {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}[name]


def test_openvino_rows_name_their_precision(rows):
    by_name = {r.system: r for r in rows}
    f32, auto, int8 = (by_name[f"openvino {k}"] for k in ("(hint f32)", "(default hint)",
                                                         "int8 (NNCF)"))  # fmt: skip
    for row in (f32, auto, int8):
        assert not row.skipped, row.note
        assert row.timed_batches == 2 and row.img_per_s > 0 and row.p95_ms >= row.p50_ms > 0
    assert f32.precision == "fp32" and f32.max_rel_error < 1e-4
    # The default hint's row says what OpenVINO picked here (bf16 where bf16 is native).
    assert auto.precision == _openvino_default_precision()
    assert f"default precision on this CPU: {auto.precision}" in auto.note
    assert auto.max_rel_error < (1e-4 if auto.precision == "fp32" else 0.05)
    assert int8.precision == "int8" and int8.max_rel_error < 0.2
    assert "NNCF" in int8.note and "random inputs" in int8.note
    assert int8.probe_gflops is not None or "no int8 GEMM probe" in int8.note
    text = format_bench(rows)
    line = next(x for x in text.splitlines() if x.startswith("openvino (default hint)"))
    assert line.split()[3] == auto.precision  # the prec column


def test_openvino_default_precision_has_a_peak_of_its_own_kind():
    model = randomize(create_model("resnet20", depth=8, num_classes=10))
    rows = bench_model(model, batch_size=2, input_size=(3, 16, 16), iters=1, warmup=0,
                       precisions=("fp32",), compare=("openvino",), threads=1)  # fmt: skip
    auto = next(r for r in rows if r.system == "openvino (default hint)")
    assert auto.precision == _openvino_default_precision()
    # bf16 is not among the precisions asked for: its probe is taken for OpenVINO's choice.
    assert auto.probe_gflops is not None and auto.peak_fraction is not None
    fp32 = next(r for r in rows if r.precision == "fp32")
    assert (auto.probe_gflops == fp32.probe_gflops) == (auto.precision == "fp32")


def test_openvino_missing_gives_rows_that_say_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino raises ImportError
    model = randomize(create_model("resnet20", depth=8, num_classes=10))
    rows = bench_model(model, batch_size=2, input_size=(3, 16, 16), iters=1, warmup=0,
                       precisions=("fp32",), compare=("openvino",), probe=False,
                       threads=1)  # fmt: skip
    ov_rows = [r for r in rows if r.system.startswith("openvino")]
    assert [r.system for r in ov_rows] == ["openvino (hint f32)", "openvino (default hint)"]
    for row in ov_rows:
        assert row.skipped and row.img_per_s is None and "pip install openvino" in row.note
    assert not next(r for r in rows if r.system.startswith("resnetlab")).skipped
    assert "openvino (hint f32) (fp32): skipped" in format_bench(rows)


def test_nncf_missing_skips_only_the_int8_row(monkeypatch):
    monkeypatch.setitem(sys.modules, "nncf", None)
    model = randomize(create_model("resnet20", depth=8, num_classes=10))
    rows = bench_model(model, batch_size=2, input_size=(3, 16, 16), iters=1, warmup=0,
                       precisions=("fp32", "int8"), compare=("openvino",), probe=False,
                       threads=1)  # fmt: skip
    by_name = {r.system: r for r in rows}
    assert by_name["openvino int8 (NNCF)"].skipped
    assert "pip install nncf" in by_name["openvino int8 (NNCF)"].note
    assert not by_name["openvino (hint f32)"].skipped


@pytest.mark.parametrize(
    ("flags", "tier"),
    [
        ({"avx2", "fma"}, "AVX2"),
        ({"avx2", "avx512f"}, "AVX512"),
        ({"avx2", "avx512f", "avx512_vnni"}, "AVX512-VNNI"),
        ({"avx2", "avx512f", "avx512_vnni", "avx512_bf16"}, "AVX512-BF16"),
        ({"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8"}, "AMX"),
    ],
)
def test_cpu_tier_from_the_flags(monkeypatch, flags, tier):
    monkeypatch.setattr(bench, "_cpu_flags", lambda: flags)
    monkeypatch.setattr(bench, "_torch_says", lambda name: True)  # the flags decide
    capability = torch.backends.cpu.get_cpu_capability()
    assert bench.cpu_tier() == f"{tier} (torch: {capability})"


def test_cpu_tier_without_proc_cpuinfo(monkeypatch):
    monkeypatch.setattr(bench, "_cpu_flags", set)
    monkeypatch.setattr(bench, "_torch_says", lambda name: name == "_is_vnni_supported")
    capability = torch.backends.cpu.get_cpu_capability()
    assert bench.cpu_tier() == f"AVX512-VNNI (torch: {capability})"


def test_the_table_names_the_cpu_tier(rows):
    first = format_bench(rows).splitlines()[0]
    assert first == f"resnet20, batch 2, input 3x16x16, CPU {bench.cpu_tier()}"


# --------------------------------------------------------------------------------------
# Fraction of peak: each precision against a peak of its own kind


def test_int8_rows_are_compared_with_an_int8_peak(rows):
    by_precision = {}
    for r in rows:
        if not r.skipped:
            by_precision.setdefault(r.precision, set()).add(r.probe_gflops)
    (fp32_peak,) = by_precision["fp32"]
    (int8_peak,) = by_precision["int8"]
    assert int8_peak != fp32_peak  # the int8 GEMM probe, not the fp32 one
    for r in rows:
        if not r.skipped:
            assert r.peak_fraction == pytest.approx(r.gflops / r.probe_gflops)
    text = format_bench(rows)
    assert "int8 rows use the fp32 peak" not in text
    assert f"int8 {int8_peak:.0f} GOP/s" in text and f"fp32 {fp32_peak:.0f} GFLOP/s" in text


def test_no_int8_probe_no_fraction(monkeypatch):
    def missing(a, b):
        raise RuntimeError("_int_mm is not implemented for CPU")

    monkeypatch.setattr(bench, "_int8_matmul", missing)
    model = randomize(create_model("resnet20", depth=8, num_classes=10))
    rows = bench_model(model, batch_size=2, input_size=(3, 16, 16), iters=1, warmup=0,
                       precisions=("fp32", "int8"), compare=(), threads=1)  # fmt: skip
    int8 = next(r for r in rows if r.precision == "int8")
    fp32 = next(r for r in rows if r.precision == "fp32")
    assert int8.peak_fraction is None and int8.probe_gflops is None and int8.gflops > 0
    assert fp32.peak_fraction is not None and "no int8 GEMM probe" in int8.note
    line = next(x for x in format_bench(rows).splitlines() if x.startswith("resnetlab int8"))
    assert line.split()[-2] == "-"  # the "of peak" column


def test_bad_arguments_are_one_line_errors(capsys):
    assert main(["bench", "resnet20", "--precision", "fp16", "--compare", "none"]) == 2
    err = capsys.readouterr().err
    assert "unknown precision" in err and err.strip().count("\n") == 0


# --------------------------------------------------------------------------------------
# The benchmark scripts write the committed record only when asked to

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _script(name: str):
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "name", sorted(p.stem for p in BENCHMARKS.glob("*.py") if p.stem != "common")
)
def test_every_benchmark_script_writes_only_with_write(name, capsys):
    with pytest.raises(SystemExit) as exit_:
        _script(name).main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "--write" in out and "--no-write" not in out


def test_time_to_accuracy_leaves_the_record_alone_without_write(tmp_path, monkeypatch):
    tta = _script("time_to_accuracy")
    common = sys.modules["common"]
    monkeypatch.setattr(common, "BENCHMARKS_MD", tmp_path / "BENCHMARKS.md")
    monkeypatch.setattr(tta, "ROOT", tmp_path)
    calls = []

    def fake_run(preset, output, overrides):
        calls.append(overrides)
        output.mkdir(parents=True, exist_ok=True)
        summary = dict(test_top1=0.5, model="resnet8_pool", data="synthetic", epochs=1,
                       eval_time_s=0.5, train_img_per_s=100.0, precision="fp32",
                       eval={"top1": 0.5, "tta_flip": True})  # fmt: skip
        rows = [dict(epoch=1, wall_s=1.0, test_top1=0.5)]
        return dict(summary=summary, rows=rows, wall=3.0, startup=1.0, wall_no_eval=2.5)

    monkeypatch.setattr(tta, "run_preset", fake_run)
    preset = tmp_path / "tiny.yaml"
    preset.write_text("epochs: 1\n")
    run = tmp_path / "run"
    # KEY=VALUE between options, where argparse alone refuses it.
    tta.main([str(preset), "--target", "40", "max_iters=40", "--budget", "100",
              "--output", str(run), "optim.lr=1e-3"])  # fmt: skip
    assert calls == [["max_iters=40", "optim.lr=1e-3"]]
    assert not (tmp_path / "BENCHMARKS.md").exists() and not (tmp_path / "docs").exists()
    key = f"time_to_accuracy_tiny_{common.tier_key()}"  # one record per CPU tier
    assert (run / f"{key}.png").read_bytes().startswith(b"\x89PNG")

    tta.main([str(preset), "--target", "40", "--budget", "100", "--output", str(run), "--write"])
    text = (tmp_path / "BENCHMARKS.md").read_text()
    assert f"<!-- begin {key} -->" in text and "--write" in text
    assert "| 50.00 | flip |" in text  # the top-1 of `resnetlab eval`, with its TTA setting
    assert (tmp_path / "docs" / "figures" / f"{key}.png").exists()
    # another tier's run adds its own section and leaves this one
    monkeypatch.setattr(tta, "tier_key", lambda: "othertier")
    tta.main([str(preset), "--target", "40", "--budget", "100", "--output", str(run), "--write"])
    text = (tmp_path / "BENCHMARKS.md").read_text()
    assert (
        f"<!-- begin {key} -->" in text and "<!-- begin time_to_accuracy_tiny_othertier -->" in text
    )
    # ... next to its sibling, not at the end, when another benchmark's section came between
    text = text.replace("<!-- begin time_to_accuracy_tiny_othertier -->", "<!-- begin x -->")
    text = text.replace("<!-- end time_to_accuracy_tiny_othertier -->", "<!-- end x -->")
    (tmp_path / "BENCHMARKS.md").write_text(text + "\n<!-- begin other -->\n<!-- end other -->\n")
    monkeypatch.setattr(tta, "tier_key", lambda: "thirdtier")
    tta.main([str(preset), "--target", "40", "--budget", "100", "--output", str(run), "--write"])
    text = (tmp_path / "BENCHMARKS.md").read_text()
    order = [text.index(f"<!-- begin {k} -->") for k in (key, "time_to_accuracy_tiny_thirdtier", "x", "other")]  # fmt: skip
    assert order == sorted(order)
