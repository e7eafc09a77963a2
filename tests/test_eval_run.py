"""`resnetlab eval RUN` on real tiny runs: the run's own data, split, flip and precision."""

import inspect
import json
import re
import shutil
import subprocess
import sys

import pytest
import torch
from PIL import Image

from resnetlab import cli
from resnetlab.cli.present import format_result
from resnetlab.config import DataConfig, load_train_config
from resnetlab.data import build_loaders
from resnetlab.data.build import default_eval_split
from resnetlab.engine import evaluate_source, train
from resnetlab.engine import evaluator as evaluator_module
from resnetlab.engine.evaluator import loader_kwargs, read_run

SYNTHETIC = "synthetic:n=128,size=16,classes=4"


def tiny_run(out, data, *overrides, **values):
    cfg = load_train_config(None, ["max_iters=6", "tta_flip=true", *overrides],
                            model="resnet20", model_args={"depth": 8}, data=data,
                            output=str(out), **values)  # fmt: skip
    return train(cfg, overwrite=True, progress=False)


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("eval") / "syn"
    summary = tiny_run(run, {"spec": SYNTHETIC, "batch_size": 32, "val_fraction": 0.25})
    return run, summary


def make_split_folder(root, splits=("train", "val"), classes=("ant", "bee", "cat"), mode="RGB"):
    g = torch.Generator().manual_seed(0)
    for split in splits:
        for c, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            for i in range(8 if split == "train" else 5):
                arr = (torch.rand(20, 20, 3, generator=g) * 80 + 60 * c).clamp(0, 255)
                image = Image.fromarray(arr.to(torch.uint8).numpy()).convert(mode)
                image.save(root / split / name / f"{i}.png")
    return root


def run_cli(capsys, *args):
    rc = cli.main(["eval", *map(str, args)])
    out, err = capsys.readouterr()
    return rc, out, err


def test_synthetic_run_eval_equals_its_summary(synthetic_run, capsys):
    run, summary = synthetic_run
    saved = json.loads((run / "summary.json").read_text())
    assert saved["tta_flip"] is True and saved["eval_split"] == "test"
    assert (
        "Evaluated on the test split (n=256), with test-time flip."
        in (run / "report.md").read_text()
    )
    result = evaluate_source(run, progress=False)
    assert result["top1"] == summary["test_top1"] and result["loss"] == summary["test_loss"]
    assert result["n"] == summary["eval_n"] and result["tta_flip"] is True
    assert result["split"] == "test" and result["precision"] == summary["precision"]
    assert (run / "eval-test.json").exists() and (run / "confusion-test.png").exists()

    rc, out, _ = run_cli(capsys, run, "--json")
    shown = json.loads(out)
    assert rc == 0 and shown["top1"] == summary["test_top1"] and "confusion" not in shown
    rc, out, _ = run_cli(capsys, run)
    assert rc == 0 and f"on {SYNTHETIC} (test, n=256, test-time flip): top-1" in out
    # The weights file with the run's config.yaml beside it is the run.
    weights = run / "model.safetensors"
    assert evaluate_source(weights, progress=False)["top1"] == summary["test_top1"]


def test_overrides(synthetic_run, capsys):
    run, summary = synthetic_run
    rc, out, _ = run_cli(capsys, run, "--no-tta-flip", "--json")
    plain = json.loads(out)
    assert rc == 0 and plain["tta_flip"] is False
    assert "test-time flip" not in format_result({**plain, "per_class": {}})
    rc, out, _ = run_cli(capsys, run, "--batch-size", "7", "--device", "cpu", "--json")
    assert rc == 0 and json.loads(out)["top1"] == summary["test_top1"]
    # In-memory data: "val" is the run's held-out val_fraction (0.25 of 128) ...
    rc, out, _ = run_cli(capsys, run, "--split", "val", "--json")
    assert rc == 0 and json.loads(out)["n"] == 32 and (run / "eval-val.json").exists()
    rc, out, _ = run_cli(capsys, run, "--split", "train", "--precision", "fp32", "--json")
    trained = json.loads(out)
    assert rc == 0 and trained["n"] == 96 and trained["precision"] == "fp32"
    # ... and 0.1 of the training set for a run that held none out.
    other = run.parent / "syn-noval"
    tiny_run(other, {"spec": SYNTHETIC, "batch_size": 32}, "eval_every=0")
    rc, out, _ = run_cli(capsys, other, "--split", "val", "--json")
    assert rc == 0 and json.loads(out)["n"] == 12  # 3 of each class's 32


@pytest.mark.parametrize("layout", ["train_val", "train_val_test"])
def test_image_folder_run_eval_equals_its_summary(tmp_path, capsys, layout):
    splits = ("train", "val", "test") if layout == "train_val_test" else ("train", "val")
    data = make_split_folder(tmp_path / "imgs", splits)
    spec = f"imagefolder:{data}"
    run = tmp_path / "run"
    # Streaming (in_memory=false) for one layout, decoded into memory for the other.
    in_memory = False if layout == "train_val_test" else None
    summary = tiny_run(run, {"spec": spec, "batch_size": 8, "num_workers": 0,
                             "in_memory": in_memory})  # fmt: skip
    split = "test" if layout == "train_val_test" else "val"
    assert summary["eval_split"] == split and default_eval_split(spec) == split
    rc, out, _ = run_cli(capsys, run, "--json")
    result = json.loads(out)
    assert rc == 0 and result["top1"] == summary["test_top1"] and result["split"] == split
    assert result["loss"] == summary["test_loss"] and result["n"] == 15
    # A train/ + val/ folder: --split val needs no val_fraction.
    rc, out, _ = run_cli(capsys, run, "--split", "val", "--data", spec)
    assert rc == 0 and f"on {spec} (val, n=15, test-time flip): top-1" in out
    if layout == "train_val":
        rc, _, err = run_cli(capsys, run, "--split", "test")
        assert rc == 2 and "resnetlab eval: error:" in err and "--split val" in err


def test_fine_tuned_run_eval_equals_its_summary(synthetic_run, tmp_path, capsys):
    pretrained, _ = synthetic_run
    data = make_split_folder(tmp_path / "gray", mode="L")
    run = tmp_path / "ft"
    # Gray images read with the pretrained weights' 3 channels and statistics.
    summary = tiny_run(run, {"spec": f"imagefolder:{data}", "batch_size": 8, "num_workers": 0},
                       weights=str(pretrained))  # fmt: skip
    assert json.loads((run / "model.json").read_text())["in_chans"] == 3
    rc, out, _ = run_cli(capsys, run, "--json")
    result = json.loads(out)
    assert rc == 0 and result["top1"] == summary["test_top1"]
    assert result["loss"] == summary["test_loss"]


def test_weights_file_alone_needs_data(synthetic_run, tmp_path, capsys):
    run, summary = synthetic_run
    alone = tmp_path / "alone"
    alone.mkdir()
    for name in ("model.safetensors", "model.json"):
        shutil.copy(run / name, alone / name)
    rc, _, err = run_cli(capsys, alone / "model.safetensors")
    assert rc == 2 and err.count("\n") == 1
    assert "has no config.yaml" in err and "--data" in err
    rc, out, _ = run_cli(capsys, alone / "model.safetensors", "--data", SYNTHETIC, "--json")
    result = json.loads(out)
    assert rc == 0 and result["tta_flip"] is False and result["precision"] == "fp32"
    assert (alone / "eval-test.json").exists()


def test_bad_input_is_one_line_error(synthetic_run, tmp_path, capsys):
    run, _ = synthetic_run
    rc, _, err = run_cli(capsys, tmp_path / "nowhere")
    assert rc == 2 and err.startswith("resnetlab eval: error:") and "no such run" in err
    rc, _, err = run_cli(capsys, run, "--data", "synthetic:n=64,size=16,classes=3")
    assert rc == 2 and "3 classes but the model predicts 4" in err and err.count("\n") == 1
    broken = tmp_path / "broken"
    shutil.copytree(run, broken)
    (broken / "config.yaml").write_text("epochs: [not, a, number\n")
    rc, _, err = run_cli(capsys, broken)
    assert rc == 2 and re.search(r"cannot read .*broken/config\.yaml", err)
    assert err.count("\n") == 1
    with pytest.raises(SystemExit):
        cli.main(["eval", str(run), "--split", "dev"])


def test_read_only_run_dir_gets_nothing_written(synthetic_run, tmp_path, monkeypatch, capsys):
    run, summary = synthetic_run
    for name in ("eval-val.json", "confusion-val.png"):
        (run / name).unlink(missing_ok=True)
    real_access = evaluator_module.os.access
    monkeypatch.setattr(evaluator_module.os, "access",
                        lambda p, mode: False if str(p) == str(run) else real_access(p, mode))  # fmt: skip
    rc, out, err = run_cli(capsys, run, "--split", "val")
    assert rc == 0 and "top-1" in out and "confusion matrix" not in out
    assert "note:" in err and "not writable" in err and "--output" in err
    assert not (run / "eval-val.json").exists() and not (run / "confusion-val.png").exists()
    elsewhere = tmp_path / "elsewhere"
    rc, out, _ = run_cli(capsys, run, "--split", "val", "--output", elsewhere)
    assert rc == 0 and (elsewhere / "eval-val.json").exists()
    assert f"confusion matrix: {elsewhere / 'confusion-val.png'}" in out


def test_run_data_config_flows_into_build_loaders(synthetic_run):
    run, _ = synthetic_run
    record = read_run(run / "model.safetensors")
    assert record is not None and record.eval_split == "test"
    kwargs = loader_kwargs(record.config.data)
    data = next(iter(inspect.signature(build_loaders).parameters.values()))
    assert data.annotation in (DataConfig, "DataConfig")  # build_loaders takes the whole config
    fields = set(DataConfig.__dataclass_fields__) - {"spec"}
    assert set(kwargs) == fields
    assert DataConfig(spec=record.config.data.spec, **kwargs) == record.config.data
    assert {"val_fraction", "eval_split", "pipeline", "in_memory"} <= set(kwargs)


def test_subprocess_eval_of_a_run(synthetic_run):
    run, summary = synthetic_run
    proc = subprocess.run([sys.executable, "-m", "resnetlab", "eval", str(run)],
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"(test, n=256, test-time flip): top-1 {100 * summary['test_top1']:.2f}%" in proc.stdout
