"""Prediction on real image files: the Predictor API and the `predict` command."""

import io
import json
import subprocess
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import random_pixels
from resnetlab import create_model, save_weights
from resnetlab.cli.predict import show_predictions
from resnetlab.data import ImageDecodeError
from resnetlab.inference import (
    Predictor,
    Preprocessing,
    RandomWeightsWarning,
    describe_model,
    find_images,
    imagenet_class_names,
    run_predict,
)

NAMES = ["cat", "dog", "bird"]
PREP = {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3], "image_size": 16, "channels": 3,
        "in_chans": 3, "resize": 18, "crop": "center", "interpolation": "bilinear"}  # fmt: skip


def cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "resnetlab", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A folder of real files: RGB PNG, JPEG, grayscale, RGBA, a corrupt one, a hidden one."""
    root = tmp_path_factory.mktemp("images")
    (root / "sub").mkdir()
    Image.fromarray(random_pixels(0, (20, 30, 3))).save(root / "a_rgb.png")
    Image.fromarray(random_pixels(1, (24, 24, 3))).save(root / "b_photo.jpg", quality=90)
    (root / "c_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png")
    Image.fromarray(random_pixels(2, (18, 26)), mode="L").save(root / "sub" / "d_gray.png")
    Image.fromarray(random_pixels(3, (22, 20, 4)), mode="RGBA").save(root / "sub" / "e_rgba.png")
    Image.fromarray(random_pixels(4, (16, 16, 3))).save(root / "sub" / ".hidden.png")
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny model saved as a run directory would hold it (weights + JSON sidecar)."""
    run = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    model = create_model("resnet20", depth=8, num_classes=3)
    save_weights(model, run / "model.safetensors", preprocessing=PREP, class_names=NAMES)
    return run


@pytest.fixture(scope="module")
def predictor(run_dir):
    return Predictor.from_source(run_dir, device="cpu")


def check_topk(result, k, names=NAMES):
    top = result["topk"]
    assert len(top) == k
    probs = [t["prob"] for t in top]
    assert probs == sorted(probs, reverse=True)
    assert all(0.0 <= p <= 1.0 for p in probs) and sum(probs) <= 1.0 + 1e-5
    assert all(names[t["index"]] == t["class"] for t in top)


def test_predict_files_of_every_kind(images, predictor):
    paths = [images / "a_rgb.png", images / "b_photo.jpg", images / "sub" / "d_gray.png",
             images / "sub" / "e_rgba.png"]  # fmt: skip
    results = predictor.predict(paths, topk=2)
    assert [r["path"] for r in results] == [str(p) for p in paths]
    for r in results:
        check_topk(r, 2)
    full = predictor.predict(paths[0], topk=10)[0]  # topk is capped at the class count
    check_topk(full, 3)
    assert sum(t["prob"] for t in full["topk"]) == pytest.approx(1.0, abs=1e-5)


def test_inputs_paths_pil_and_tensors_agree(images, predictor):
    path = images / "sub" / "d_gray.png"
    pil = Image.open(path)
    by_path, by_pil = predictor.predict([path, pil])
    assert by_path["topk"] == by_pil["topk"] and by_pil["path"] is None
    u8 = torch.from_numpy(random_pixels(5, (3, 18, 18)))  # already at the resize size
    as_u8, as_float, as_gray = predictor.predict([u8, u8.float() / 255, u8[0]])
    assert [t["index"] for t in as_u8["topk"]] == [t["index"] for t in as_float["topk"]]
    for a, b in zip(as_u8["topk"], as_float["topk"], strict=True):
        assert a["prob"] == pytest.approx(b["prob"], abs=1e-5)
    check_topk(as_gray, 3)
    batch = predictor.predict(torch.stack([u8, u8]), topk=3)  # BxCxHxW: one result per image
    assert len(batch) == 2 and batch[0]["topk"] == batch[1]["topk"]


def test_preprocessing_resizes_crops_and_normalizes():
    prep = Preprocessing.from_dict(PREP)
    x = prep(Image.fromarray(np.full((40, 60, 3), 255, np.uint8)))
    assert x.shape == (3, 16, 16)
    expected = torch.tensor([(1 - m) / s for m, s in zip(PREP["mean"], PREP["std"], strict=True)])
    assert torch.allclose(x[:, 8, 8], expected, atol=1e-5)
    gray = Preprocessing.from_dict({"mean": [0.5], "std": [0.5], "image_size": 8, "in_chans": 3})
    y = gray(
        Image.fromarray(random_pixels(6, (10, 12, 3)))
    )  # RGB -> L, then repeated to 3 channels
    assert y.shape == (3, 8, 8) and torch.equal(y[0], y[1]) and torch.equal(y[1], y[2])
    with pytest.raises(ValueError, match="one of each per channel"):
        Preprocessing.from_dict({"mean": [0.5], "std": [0.5, 0.5], "image_size": 8})
    with pytest.raises(ValueError, match="resize"):
        Preprocessing.from_dict({"mean": [0.5], "std": [0.5], "image_size": 8, "resize": 4})


def test_one_channel_models_get_grayscale(images):
    gray = create_model("resnet20", depth=8, num_classes=2, in_chans=1)
    p = Predictor.from_model(gray, {"mean": [0.5], "std": [0.25], "image_size": 16}, ["x", "y"])
    assert p.preprocessing.channels == 1
    x = p.prepare(images / "a_rgb.png")  # RGB file -> one grey channel
    assert x.shape == (1, 16, 16)
    for r in p.predict([images / "a_rgb.png", images / "sub" / "e_rgba.png"], topk=2):
        check_topk(r, 2, ["x", "y"])
    with pytest.raises(ValueError, match="3-channel inputs; the model takes 1"):
        Predictor.from_model(gray, PREP, ["x", "y"])


def test_batching_does_not_change_results(images, predictor):
    paths = find_images([images])[0]
    paths = [p for p in paths if "broken" not in p.name]
    one = predictor.predict(paths, batch_size=1, topk=3)
    many = predictor.predict(paths, batch_size=32, topk=3)
    for a, b in zip(one, many, strict=True):
        assert [t["index"] for t in a["topk"]] == [t["index"] for t in b["topk"]]
        for ta, tb in zip(a["topk"], b["topk"], strict=True):
            assert ta["prob"] == pytest.approx(tb["prob"], abs=1e-5)


def test_unreadable_file_raises_or_is_recorded(images, predictor):
    paths = [images / "a_rgb.png", images / "c_broken.png", images / "b_photo.jpg"]
    with pytest.raises(ImageDecodeError, match="c_broken.png"):
        predictor.predict(paths)
    results = predictor.predict(paths, on_error="record", batch_size=2)
    assert "c_broken.png" in results[1]["error"] and "topk" not in results[1]
    check_topk(results[0], 3)
    check_topk(results[2], 3)


def test_find_images_folders_globs_and_missing(images):
    found, missing = find_images([images])
    names = [p.name for p in found]
    assert names == ["a_rgb.png", "b_photo.jpg", "c_broken.png", "d_gray.png", "e_rgba.png"]
    found, missing = find_images([f"{images}/**/*.png", images / "a_rgb.png", images / "nope.png"])
    assert [p.name for p in found] == ["a_rgb.png", "c_broken.png", "d_gray.png", "e_rgba.png"]
    assert missing == [str(images / "nope.png")]
    assert find_images([f"{images}/*.webp"]) == ([], [f"{images}/*.webp"])


def test_one_predictor_serves_many_threads(images, predictor):
    paths = [p for p in find_images([images])[0] if "broken" not in p.name]
    expected = predictor.predict(paths, topk=3)
    with ThreadPoolExecutor(4) as pool:
        runs = list(pool.map(lambda _: predictor.predict(paths, topk=3), range(8)))
    for run in runs:
        for a, b in zip(run, expected, strict=True):
            assert [t["index"] for t in a["topk"]] == [t["index"] for t in b["topk"]]
            for ta, tb in zip(a["topk"], b["topk"], strict=True):
                assert ta["prob"] == pytest.approx(tb["prob"], abs=1e-5)


def test_defaults_without_a_sidecar():
    with pytest.warns(RandomWeightsWarning, match="random weights"):
        p = Predictor.from_name("resnet20", device="cpu")
    assert p.random_weights and p.class_names[:2] == ("class_0", "class_1")
    assert p.preprocessing.image_size == 32 and p.preprocessing.mean[0] == pytest.approx(0.4914)
    with torch.device("meta"):
        big = create_model("resnet50")
        gray = create_model("resnet18", in_chans=1, num_classes=2)
    prep, names = describe_model(big)
    assert (prep.image_size, prep.resize, prep.mean) == (224, 256, (0.485, 0.456, 0.406))
    assert names == imagenet_class_names() and names[0] == "tench" and len(set(names)) == 1000
    prep, names = describe_model(gray)
    assert prep.channels == prep.in_chans == 1 and len(prep.mean) == 1
    with pytest.raises(ValueError, match="2 class names for a model with 1000"):
        describe_model(big, class_names=["a", "b"])


def test_trained_run_predicts_through_the_cli(tmp_path, images):
    from resnetlab.engine import train

    run = tmp_path / "run"
    train({"model": "resnet20", "model_args": {"depth": 8}, "epochs": 1, "output": str(run),
           "data": {"spec": "synthetic:n=64,test=32,size=16,classes=3", "batch_size": 32}},
          progress=False)  # fmt: skip
    proc = cli("predict", run, images, f"{images}/sub/*.png", "--topk", "2")
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 4  # 5 files under the folder, the glob's 2 already seen, 1 broken
    assert lines[0].startswith(f"{images / 'a_rgb.png'}: class_")
    assert lines[0].count("(") == 2
    err = proc.stderr.strip().splitlines()
    assert any("c_broken.png" in line and "cannot decode" in line for line in err)
    assert err[-1] == "1 of 5 inputs could not be read"


def test_cli_json_lines(run_dir, images):
    proc = cli("predict", "--weights", run_dir / "model.safetensors", images / "a_rgb.png",
               images / "c_broken.png", images / "sub", "--json", "--batch-size", "2")  # fmt: skip
    assert proc.returncode == 1
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["path"].rsplit("/", 1)[1] for r in rows] == [
        "a_rgb.png", "c_broken.png", "d_gray.png", "e_rgba.png"]  # fmt: skip
    assert "c_broken.png" in rows[1]["error"]
    for row in rows[:1] + rows[2:]:
        check_topk(row, 3)


def test_cli_torchvision_weights_get_imagenet_names(tmp_path, images):
    import torchvision

    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "tv.pth")
    proc = cli("predict", "--model", "resnet18", "--weights", tmp_path / "tv.pth",
               images / "b_photo.jpg", "--json", "--topk", "3")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (row,) = [json.loads(line) for line in proc.stdout.splitlines()]
    names = imagenet_class_names()
    check_topk(row, 3, names)
    assert "random weights" not in proc.stderr


def test_cli_random_weights_warning(images):
    proc = cli("predict", "--model", "resnet20", images / "a_rgb.png", "--topk", "1")
    assert proc.returncode == 0
    assert "random weights: predictions are meaningless" in proc.stderr
    assert proc.stdout.startswith(f"{images / 'a_rgb.png'}: class_")


def test_run_predict_output_and_errors(tmp_path, run_dir, images):
    found = run_predict([str(run_dir), str(images / "a_rgb.png"), str(tmp_path / "gone.png")],
                        topk=1)  # fmt: skip
    assert found["total"] == 2 and found["dense"] is None and not found["warnings"]
    assert [m["path"] for m in found["missing"]] == [str(tmp_path / "gone.png")]
    out, err = io.StringIO(), io.StringIO()
    code = show_predictions(found, stdout=out, stderr=err)  # the CLI's printing
    assert code == 1 and out.getvalue().count("\n") == 1
    assert "gone.png" in err.getvalue()
    with pytest.raises(ValueError, match="no images found"):
        run_predict([str(run_dir), f"{tmp_path}/*.png"])
    with pytest.raises(ValueError, match="is an image, not a model"):
        run_predict([str(images / "a_rgb.png"), str(images / "b_photo.jpg")])
    with pytest.raises(ValueError, match="then the images"):
        run_predict([str(run_dir)])


def test_bad_sources(tmp_path, images):
    with pytest.raises(ValueError, match="not found"):
        Predictor.from_source(tmp_path / "missing")
    torch.save(create_model("resnet20", num_classes=3).state_dict(), tmp_path / "w.pth")
    with pytest.raises(ValueError, match="--model NAME --weights"):
        Predictor.from_source(tmp_path / "w.pth")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # trained weights: no random-weights warning
        p = Predictor.from_name("resnet20", tmp_path / "w.pth", device="cpu")
    assert len(p.class_names) == 3 and not p.random_weights
    with pytest.raises(ValueError, match="topk"):
        p.predict(images / "a_rgb.png", topk=0)
