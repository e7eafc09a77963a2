"""Detection and segmentation through the engine: train, checkpoint, resume, eval, predict.

Each run is a real ``train(config)`` on a COCO-format scene set written in the test (fake
Fashion-MNIST items, 64 px canvases) with a narrow backbone; ``eval`` and ``predict`` go
through the command line.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from resnetlab import cli
from resnetlab.cli.predict import show_dense_predictions
from resnetlab.cli.present import format_dense_prediction
from resnetlab.config import TrainConfig, build_config
from resnetlab.data import write_scene_set
from resnetlab.engine import train
from resnetlab.errors import ConfigError, ResnetlabError
from resnetlab.inference.dense_predict import run_dense_predict
from resnetlab.models.dense import read_dense_meta
from test_scenes import TEST_LEVEL, TRAIN_LEVEL, fake_items, write_idx

TINY = {"widths": [8, 16, 24, 32], "stem_width": 8}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    """A COCO-format scene set of 16 + 8 canvases of 64 px."""
    import numpy as np

    root = tmp_path_factory.mktemp("scenes")
    fm = root / "fm"
    fm.mkdir()
    for prefix, n, level in (("train", 40, TRAIN_LEVEL), ("t10k", 20, TEST_LEVEL)):
        write_idx(fm / f"{prefix}-images-idx3-ubyte.gz", fake_items(n, level, n))
        write_idx(fm / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return write_scene_set(root / "set", source_dir=fm, n_train=16, n_val=8, size=64,
                           max_items=3, progress=False)  # fmt: skip


def config(scenes: Path, out: Path, task: str, head: str, **extra) -> TrainConfig:
    values = {
        "task": task,
        "model": "resnet18",
        "model_args": TINY,
        "dense": {"head": head, "fpn_channels": 64},
        "data": {"spec": f"coco:{scenes}", "batch_size": 4, "num_workers": 0, "image_size": 64},
        "optim": {"name": "adamw", "lr": 2e-3, "weight_decay": 1e-4},
        "epochs": 3,
        "output": str(out),
        **extra,
    }
    return build_config(TrainConfig, values)


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    code = cli.main(list(argv))
    return code, capsys.readouterr().out


def test_detection_trains_resumes_evaluates_and_draws(scenes, tmp_path, capsys):
    run = tmp_path / "det"
    summary = train(config(scenes, run, "detection", "fcos"), progress=False)
    losses = [r["train_loss"] for r in rows(run)]
    assert losses[-1] < losses[0], losses  # it learns
    assert summary["task"] == "detection" and summary["head"] == "fcos"
    assert 0.0 <= summary["test_map"] <= 1.0 and summary["eval_n"] == 8
    assert "test_top1" not in summary and rows(run)[0]["train_acc"] is None
    for name in ("model.safetensors", "predictions.png", "curves.png", "report.md"):
        assert (run / name).is_file(), name
    assert Image.open(run / "predictions.png").size[0] >= 4 * 256  # 4 upscaled drawn images
    meta = read_dense_meta(run / "model.safetensors")
    assert meta["task"] == "detection" and meta["dense"]["head"] == "fcos"
    assert len(meta["class_names"]) == 10

    # eval on the run's own data gives the summary's mAP exactly
    code, out = run_cli(capsys, "eval", str(run), "--json")
    result = json.loads(out)
    assert code == 0 and result["map"] == summary["test_map"] and result["split"] == "val"
    assert (run / "eval-val.json").is_file()
    code, out = run_cli(capsys, "eval", str(run))
    assert "box mAP" in out and "per-class box AP" in out

    # a longer schedule continues from the last checkpoint
    longer = train(config(scenes, run, "detection", "fcos", epochs=4), resume=True,
                   progress=False)  # fmt: skip
    assert longer["steps"] == summary["steps"] + 4 and [r["epoch"] for r in rows(run)] == [
        1,
        2,
        3,
        4,
    ]

    # predict draws each image into --output and lists what it found
    image = scenes / "val" / "images" / "000000.png"
    drawn = tmp_path / "drawn"
    code, out = run_cli(capsys, "predict", str(run), str(image), "--output", str(drawn),
                        "--score-threshold", "0", "--json")  # fmt: skip
    line = json.loads(out.splitlines()[0])
    assert code == 0 and Path(line["drawn"]) == drawn / "000000.png"
    assert (drawn / "000000.png").is_file() and isinstance(line["detections"], list)
    assert all(d["label"] in meta["class_names"] and len(d["box"]) == 4 for d in line["detections"])


def test_segmentation_trains_and_reports_miou(scenes, tmp_path, capsys):
    run = tmp_path / "seg"
    summary = train(config(scenes, run, "segmentation", "deeplabv3", epochs=2), progress=False)
    losses = [r["train_loss"] for r in rows(run)]
    assert losses[-1] < losses[0], losses
    assert 0.0 < summary["test_miou"] <= 1.0 and 0.0 < summary["test_pixel_acc"] <= 1.0
    assert (run / "predictions.png").is_file()
    code, out = run_cli(capsys, "eval", str(run), "--json")
    result = json.loads(out)
    assert result["miou"] == summary["test_miou"]
    assert set(result["per_class_iou"]) >= {"background"}
    drawn = tmp_path / "drawn"
    code, out = run_cli(capsys, "predict", str(run), str(scenes / "val" / "images"),
                        "--output", str(drawn))  # fmt: skip
    assert code == 0 and len(out.splitlines()) == 8 and len(list(drawn.glob("*.png"))) == 8
    assert all("->" in line for line in out.splitlines())


def test_mask_rcnn_reports_mask_map(scenes, tmp_path):
    run = tmp_path / "mask"
    summary = train(config(scenes, run, "detection", "maskrcnn", max_iters=2), progress=False)
    assert summary["test_mask_map"] is not None and 0.0 <= summary["test_mask_map"] <= 1.0


def test_checkpoint_of_a_dense_run_evaluates(scenes, tmp_path, capsys):
    run = tmp_path / "ckpt"
    train(config(scenes, run, "segmentation", "fcn", epochs=1), progress=False)
    best = run / "checkpoints" / "best.pt"
    code, out = run_cli(capsys, "eval", str(best), "--data", f"coco:{scenes}", "--json")
    assert code == 0 and json.loads(out)["miou"] is not None


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"task": "detection", "dense": {"head": "deeplabv3"}}, "a detection head is one of"),
        ({"task": "segmentation", "dense": {"head": "fcos"}}, "a segmentation head is one of"),
        ({"task": "detection", "mixup_alpha": 0.2}, "classification only"),
        ({"task": "segmentation", "tta_flip": True}, "classification only"),
        (
            {"task": "segmentation", "data": {"resize_from": 16}},
            r"data\.resize_from.*classification only",
        ),
        ({"task": "detection", "finetune": {"freeze": "stage2"}}, "dense.trainable_layers"),
        ({"task": "detection", "dense": {"output_stride": 8}}, "detection uses FPN"),
        ({"task": "tracking"}, "invalid task='tracking'"),
        ({"dense": {"fpn_channels": 32}}, "a multiple of 32, >= 64"),
    ],
)
def test_bad_dense_configs_say_what_to_do(values, message):
    with pytest.raises(ConfigError, match=message):
        build_config(TrainConfig, values)


def test_dense_task_on_classification_data_is_refused(tmp_path, capsys):
    code = cli.main(["train", "--task", "detection", "--data", "fashion-mnist", "--output",
                     str(tmp_path / "r"), "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert code != 0 and "coco:PATH" in err and "Traceback" not in err


def test_bad_augment_for_a_dense_run(scenes, tmp_path):
    cfg = config(scenes, tmp_path / "r", "detection", "fcos")
    cfg = build_config(TrainConfig, {**cfg.to_dict(), "data": {**cfg.to_dict()["data"],
                                                                  "augment": "autoaugment"}})  # fmt: skip
    with pytest.raises(ResnetlabError, match="data.augment='autoaugment' for detection"):
        train(cfg, progress=False)


def test_predict_with_a_dense_model_reports_unreadable_images(scenes, tmp_path, capsys):
    run = tmp_path / "seg"
    train(config(scenes, run, "segmentation", "fcn", epochs=1, eval_every=0), progress=False)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    good = scenes / "val" / "images" / "000001.png"
    code = cli.main(["predict", str(run), str(good), str(bad), "--output", str(tmp_path / "o")])
    captured = capsys.readouterr()
    assert code == 1 and "broken.png" in captured.err and "1 of 2 images" in captured.err
    assert (tmp_path / "o" / "000001.png").is_file()
    # the library returns the results as data and draws only where asked
    found = run_dense_predict(run, [good, bad])
    names = read_dense_meta(run / "model.safetensors")["class_names"]
    assert found["task"] == "segmentation" and found["total"] == 2
    first, second = list(found["results"])
    assert first["path"] == str(good) and "drawn" not in first
    assert first["raw"].shape == (64, 64) and set(first["areas"]) <= set(names)
    assert set(second) == {"path", "error"} and "broken.png" in second["error"]
    again = run_dense_predict(run, [good, bad], output=tmp_path / "lib")
    out, err = io.StringIO(), io.StringIO()
    assert show_dense_predictions({"missing": []}, again, as_json=True, stdout=out, stderr=err) == 1
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert lines[0] == {"path": str(good), "areas": first["areas"],
                        "drawn": str(tmp_path / "lib" / "000001.png")}  # fmt: skip
    assert lines[1]["path"] == str(bad) and err.getvalue() == "1 of 2 images could not be read\n"
    with pytest.raises(ConfigError, match=r"--score-threshold 1\.5: must be in \[0, 1\]"):
        run_dense_predict(run, [good], score_threshold=1.5)
    # the classification tools say what the file is and what takes it
    code = cli.main(["export", str(run), "--format", "onnx", "--output", str(tmp_path / "x.onnx")])
    err = capsys.readouterr().err
    assert code != 0 and "describes a segmentation model (fcn on resnet18)" in err
    assert "resnetlab eval" in err and "Traceback" not in err


def test_dense_predictions_read_as_one_line_each():
    boxes = [{"label": f"c{i}", "score": 0.9 - i / 100, "box": [1.4, 2.6, 30.0, 40.9]}
             for i in range(7)]  # fmt: skip
    line = format_dense_prediction({"path": "a.png", "detections": boxes, "drawn": "o/a.png"})
    assert line == (
        "a.png: 7 found: c0 0.90 at [1, 2, 30, 40]; c1 0.89 at [1, 2, 30, 40]; c2 0.88 at "
        "[1, 2, 30, 40]; c3 0.87 at [1, 2, 30, 40]; c4 0.86 at [1, 2, 30, 40]; 2 more "
        "(--json lists all) -> o/a.png"
    )
    assert format_dense_prediction({"path": "b.png", "detections": [], "drawn": "o/b.png"}) == (
        "b.png: 0 found -> o/b.png"
    )
    areas = {"path": "c.png", "areas": {"cat": 0.05, "dog": 0.25}, "drawn": "o/c.png"}
    assert format_dense_prediction(areas) == "c.png: dog 25.0%, cat 5.0% -> o/c.png"
    assert format_dense_prediction({"path": "d.png", "areas": {}}) == "d.png: background only"


def test_drawing_puts_boxes_in_class_colours():
    from resnetlab.engine.draw import class_colors, draw_detections, draw_semantic

    image = torch.zeros(3, 32, 32)
    pred = {"boxes": torch.tensor([[4.0, 4.0, 20.0, 20.0]]), "labels": torch.tensor([2]),
            "scores": torch.tensor([0.9])}  # fmt: skip
    out = draw_detections(image, pred, ["a", "b", "c"], score_threshold=0.5)
    assert out.shape == (3, 256, 256) and out.dtype == torch.uint8  # upscaled 8x
    colour = torch.tensor(class_colors(3)[1], dtype=torch.uint8)
    assert (out[:, 4 * 8, 10 * 8] == colour).all()  # the top edge of the box
    below = draw_detections(image, {**pred, "scores": torch.tensor([0.1])}, ["a", "b", "c"])
    assert int(below.sum()) == 0  # under the threshold: nothing drawn
    mask = torch.zeros(32, 32, dtype=torch.long)
    mask[:8] = 3
    sem = draw_semantic(image, mask, 3)
    assert sem[:, :64].sum() > 0 and int(sem[:, 64:].sum()) == 0
