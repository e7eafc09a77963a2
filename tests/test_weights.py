"""Weights: torchvision/timm state dicts load with identical outputs; safe, reported loading."""

import json
import pickle

import pytest
import timm
import torch
import torchvision

from conftest import randomize, rel_err
from resnetlab import (
    WeightsError,
    create_model,
    load_model,
    load_weights,
    save_weights,
    to_torchvision_state_dict,
)

TORCHVISION = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
               "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2"]  # fmt: skip
SLOW_TV = {"resnet101", "resnet152", "resnext101_32x8d", "resnext101_64x4d", "wide_resnet101_2"}


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_TV else n for n in TORCHVISION]
)
def test_torchvision_weights_identical_outputs(name, tmp_path):
    tv = randomize(getattr(torchvision.models, name)(num_classes=11))
    path = tmp_path / f"{name}.pth"
    torch.save(tv.state_dict(), path)
    ours = create_model(name, weights=path).eval()
    assert ours.num_classes == 11 and ours.load_report.complete
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert rel_err(tv(x), ours(x)) < 1e-5


@pytest.mark.parametrize("timm_name, name", [("resnetv2_50", "resnet50_v2"),
                                             ("resnetv2_101", "resnet101_v2")])  # fmt: skip
def test_timm_v2_weights_identical_outputs(timm_name, name, tmp_path):
    ref = randomize(timm.create_model(timm_name, num_classes=6))
    path = tmp_path / "timm.pth"
    torch.save(ref.state_dict(), path)
    ours = create_model(name, weights=path).eval()
    assert ours.load_report.fmt == "timm" and ours.load_report.complete
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert rel_err(ref(x), ours(x)) < 1e-5


def test_timm_v1_resnet_loads(tmp_path):
    ref = randomize(timm.create_model("resnet18", num_classes=4))
    torch.save(ref.state_dict(), tmp_path / "t.pth")
    ours = create_model("resnet18", weights=tmp_path / "t.pth").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert rel_err(ref(x), ours(x)) < 1e-5


def test_safetensors_roundtrip_with_sidecar(tmp_path):
    model = randomize(create_model("resnet20", num_classes=3))
    names = ["cat", "dog", "eel"]
    prep = {"mean": [0.5] * 3, "std": [0.25] * 3, "image_size": 32}
    path = save_weights(
        model, tmp_path / "model.safetensors", class_names=names, preprocessing=prep
    )
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["architecture"] == "resnet20" and meta["num_classes"] == 3
    assert meta["class_names"] == names and meta["preprocessing"] == prep
    assert meta["config"]["shortcut"] == "A"
    x = torch.randn(2, 3, 32, 32)
    for source in (path, tmp_path):  # the file, or a run directory holding model.safetensors
        again = load_model(source).eval()
        assert torch.equal(again(x), model(x)) and again.meta["class_names"] == names
    # Without the sidecar the description inside the file's metadata still serves.
    path.with_suffix(".json").unlink()
    assert torch.equal(load_model(path).eval()(x), model(x))
    assert torch.equal(create_model("resnet20", weights=path).eval()(x), model(x))


def test_checkpoint_dict_and_wrapper_prefixes(tmp_path):
    model = randomize(create_model("resnet20"))
    sd = {f"module._orig_mod.{k}": v for k, v in model.state_dict().items()}
    torch.save({"model": sd, "epoch": 3}, tmp_path / "ckpt.pt")
    loaded = create_model("resnet20", weights=tmp_path / "ckpt.pt").eval()
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(loaded(x), model(x))


def test_head_mismatch_is_an_error_unless_asked(tmp_path):
    tv = torchvision.models.resnet18(num_classes=1000)
    torch.save(tv.state_dict(), tmp_path / "r18.pth")
    model = create_model("resnet18", num_classes=10)
    with pytest.raises(WeightsError, match=r"1000 classes, the model 10.*num_classes=10"):
        load_weights(model, tmp_path / "r18.pth")
    with pytest.warns(UserWarning, match="classifier re-initialised"):
        model = create_model("resnet18", num_classes=10, weights=tmp_path / "r18.pth")
    assert model.load_report.reinitialized == ["fc.weight", "fc.bias"]
    assert model.load_report.missing == [] and model.fc.out_features == 10
    assert torch.equal(model.layer1[0].conv1.weight, tv.layer1[0].conv1.weight)


def test_missing_and_unexpected_keys_are_reported(tmp_path):
    sd = create_model("resnet20").state_dict()
    sd.pop("layer1.0.conv1.weight")
    sd["extra.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "partial.pth")
    model = create_model("resnet20")
    with pytest.raises(
        WeightsError, match=r"missing: layer1\.0\.conv1\.weight.*\n.*unexpected: extra"
    ):
        load_weights(model, tmp_path / "partial.pth")
    with pytest.warns(UserWarning, match="partial load"):
        report = load_weights(model, tmp_path / "partial.pth", strict=False)
    assert report.missing == ["layer1.0.conv1.weight"] and report.unexpected == ["extra.weight"]


def test_shape_mismatch_names_keys(tmp_path):
    torch.save(create_model("resnet32").state_dict(), tmp_path / "r32.pth")
    torch.save(create_model("resnet20", shortcut="B").state_dict(), tmp_path / "b.pth")
    with pytest.raises(WeightsError, match=r"unexpected: layer1\.3"):
        load_weights(create_model("resnet20"), tmp_path / "r32.pth")
    sd = create_model("resnet20").state_dict()
    sd["layer2.0.conv1.weight"] = torch.zeros(32, 16, 5, 5)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(
        WeightsError,
        match=r"layer2\.0\.conv1\.weight: file \(32, 16, 5, 5\) vs model \(32, 16, 3, 3\)",
    ):
        load_weights(create_model("resnet20"), tmp_path / "bad.pth")


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_evil_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"conv1.weight": _Evil(str(marker))}, f)
    with pytest.raises(WeightsError, match=r"refused to load .*evil\.pth.*weights_only=True"):
        create_model("resnet20", weights=path)
    assert not marker.exists()
    torch.save({"conv1.weight": torch.zeros(1), "x": _Evil(str(marker))}, path)
    with pytest.raises(WeightsError, match="refused"):
        load_weights(create_model("resnet20"), path)
    assert not marker.exists()


def test_corrupt_and_missing_files(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        create_model("resnet20", weights=tmp_path / "nope.pth")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(WeightsError, match=r"cannot read .*bad\.safetensors"):
        create_model("resnet20", weights=tmp_path / "bad.safetensors")
    with pytest.raises(WeightsError, match="directory without model.safetensors"):
        create_model("resnet20", weights=tmp_path)
    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    with pytest.raises(WeightsError, match="not a state dict"):
        create_model("resnet20", weights=tmp_path / "tensor.pth")
    with pytest.raises(ValueError, match=r"fmt='onnx'"):
        load_weights(create_model("resnet20"), tmp_path / "tensor.pth", fmt="onnx")


def test_rgb_weights_into_grayscale_model(tmp_path):
    src = randomize(create_model("resnet20"))
    torch.save(src.state_dict(), tmp_path / "rgb.pth")
    gray = create_model("resnet20", in_chans=1, weights=tmp_path / "rgb.pth").eval()
    assert gray.load_report.adapted and gray.conv1.weight.shape[1] == 1
    x = torch.randn(2, 1, 32, 32)
    # A grey image fed as 3 equal channels to the RGB net gives the same output.
    torch.testing.assert_close(gray(x), src(x.expand(-1, 3, -1, -1)), rtol=1e-4, atol=1e-5)


def test_features_only_ignores_head(tmp_path):
    torch.save(create_model("resnet18").state_dict(), tmp_path / "r.pth")
    m = create_model("resnet18", features_only=True, weights=tmp_path / "r.pth")
    assert m.load_report.ignored == ["fc.weight", "fc.bias"]


def test_export_to_torchvision_layout(tmp_path):
    ours = randomize(create_model("resnext50_32x4d", num_classes=5))
    tv = torchvision.models.resnext50_32x4d(num_classes=5)
    tv.load_state_dict(to_torchvision_state_dict(ours), strict=True)
    tv.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert rel_err(ours(x), tv(x)) < 1e-6
    for name in ("resnet50_v2", "resnet20", "plain18"):
        with pytest.raises(ValueError, match="no torchvision counterpart"):
            to_torchvision_state_dict(create_model(name))
    with pytest.warns(UserWarning, match="strides on the 1x1"):
        to_torchvision_state_dict(create_model("resnet50_v1"))


# ------------------------------------------------------------------ integrity and validation


def _saved(tmp_path, **kwargs):
    model = randomize(create_model("resnet20", depth=8, num_classes=3))
    save_weights(model, tmp_path / "model.safetensors", **kwargs)
    return model, tmp_path / "model.safetensors", tmp_path / "model.json"


def _flip_tensor_byte(path):
    data = bytearray(path.read_bytes())
    data[-50] ^= 0xFF  # the tensor data ends the file
    path.write_bytes(bytes(data))


def test_flipped_bytes_in_safetensors_are_refused(tmp_path):
    _, path, side = _saved(tmp_path)
    assert len(json.loads(side.read_text())["tensors_sha256"]) == 64
    _flip_tensor_byte(path)
    for load in (lambda: load_model(tmp_path), lambda: create_model("resnet20", weights=path)):
        with pytest.raises(WeightsError, match=rf"{path} is damaged.*sha256.*model\.json"):
            load()
    side.unlink()  # the description inside the file carries the checksum too
    with pytest.raises(
        WeightsError, match=r"is damaged.*sha256 recorded in the description inside"
    ):
        load_model(path)


def test_weights_from_before_checksums_still_load(tmp_path):
    from safetensors.torch import save_file

    model, path, side = _saved(tmp_path)
    meta = json.loads(side.read_text())
    del meta["tensors_sha256"]
    side.write_text(json.dumps(meta))
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, path, metadata={"resnetlab-weights": json.dumps(meta)})
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(load_model(tmp_path).eval()(x), model(x))
    side.unlink()
    assert torch.equal(load_model(path).eval()(x), model(x))


def _edit(meta, dotted, value):
    out = json.loads(json.dumps(meta))
    *parents, last = dotted.split(".")
    target = out
    for key in parents:
        target = target[key]
    target[last] = value
    return out


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda m: [1, 2], "holds an array"),
        (lambda m: None, "holds null"),
        (lambda m: _edit(m, "config", None), r"'config' is null"),
        (lambda m: {k: v for k, v in m.items() if k != "config"}, r"'config' is missing"),
        (lambda m: _edit(m, "format", "other"), r"'format' is \"other\""),
        (lambda m: _edit(m, "config.drop_path_rate", "0.1"), r"config\.drop_path_rate is \"0\.1\""),
        (lambda m: _edit(m, "config.layers", "abc"), r"config\.layers is \"abc\""),
        (lambda m: _edit(m, "config.bogus", 1), r"config\.bogus is not a model option"),
        (lambda m: _edit(m, "config.block", "wide"), r"'config' is invalid.*block"),
        (lambda m: _edit(m, "class_names", ["a"]), r"'class_names' has 1 names for 3 classes"),
        (lambda m: _edit(m, "class_names", "abc"), r"'class_names' is not a list"),
        (lambda m: _edit(m, "preprocessing", [1]), r"'preprocessing' is \[1\]"),
        (lambda m: _edit(m, "preprocessing.image_size", 10**9), r"preprocessing\.image_size is"),
        (lambda m: _edit(m, "preprocessing.mean", "abc"), r"preprocessing\.mean is \"abc\""),
        (lambda m: _edit(m, "preprocessing.extra", 1), r"preprocessing\.extra is unknown"),
        (lambda m: _edit(m, "num_classes", 7), r"'num_classes' is 7 but config\.num_classes is 3"),
        (lambda m: _edit(m, "tensors_sha256", 5), r"'tensors_sha256' is not a sha256"),
    ],
)
def test_bad_sidecar_is_a_weights_error_naming_file_and_key(tmp_path, change, match):
    prep = {"mean": [0.5] * 3, "std": [0.25] * 3, "image_size": 32}
    _, path, side = _saved(tmp_path, preprocessing=prep, class_names=["a", "b", "c"])
    side.write_text(json.dumps(change(json.loads(side.read_text()))))
    with pytest.raises(WeightsError, match=rf"bad sidecar {side}: .*{match}"):
        load_model(tmp_path)
    with pytest.raises(WeightsError, match=match):
        create_model("resnet20", depth=8, weights=path)


def _load_errors(sources, timeout=120):
    """Run load_model on each source in a fresh process (what is being tested could hang or
    allocate for hours without the fix: the timeout bounds it); each error as type: message."""
    import subprocess
    import sys

    code = (
        "import json, sys\n"
        "from resnetlab import load_model\n"
        "out = []\n"
        "for src in sys.argv[1:]:\n"
        "    try:\n"
        "        load_model(src); out.append('loaded')\n"
        "    except Exception as e:\n"
        "        out.append(f'{type(e).__name__}: {e}')\n"
        "print(json.dumps(out))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, *map(str, sources)], capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.splitlines()[-1])


ABSURD = [
    ({"config.num_classes": 10**9, "num_classes": 10**9}, r"fc\.weight: file \(3, 64\)"),
    ({"config.layers": [10**6, 1, 1]}, r"layers=\[1000000, 1, 1\], the file holds \[1, 1, 1\]"),
    ({"config.widths": [10**9, 32, 64]}, r"does not describe|cannot be built"),
    ({"config.stem_width": 2**40}, r"does not describe|cannot be built"),
]


def test_absurd_sizes_in_the_sidecar_allocate_nothing(tmp_path):
    """Consistent but absurd descriptions are checked against the file's tensors before a
    model is built: an error at once, not gigabytes allocated or hours of building."""
    import re

    runs = []
    for i, (changes, _) in enumerate(ABSURD):
        _, _, side = _saved(tmp_path / str(i))
        meta = json.loads(side.read_text())
        for key, value in changes.items():
            meta = _edit(meta, key, value)
        side.write_text(json.dumps(meta))
        runs.append(tmp_path / str(i))
    for run, got, (_, match) in zip(runs, _load_errors(runs), ABSURD, strict=True):
        assert got.startswith("WeightsError: ") and str(run / "model.json") in got, got
        assert re.search(match, got), got


def test_bad_sidecar_reaches_predict_and_export_as_weights_error(tmp_path):
    from resnetlab.inference import Predictor, export_model

    _, _, side = _saved(tmp_path)
    side.write_text(json.dumps(_edit(json.loads(side.read_text()), "config.groups", "2")))
    with pytest.raises(WeightsError, match=r"config\.groups"):
        Predictor.from_source(tmp_path)
    with pytest.raises(WeightsError, match=r"config\.groups"):
        export_model(tmp_path, "onnx", tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_sidecar_preprocessing_out_of_range_names_the_weights(tmp_path):
    _, path, side = _saved(tmp_path)
    prep = {"mean": [0.5] * 3, "std": [0.0] * 3, "image_size": 32}
    side.write_text(json.dumps(_edit(json.loads(side.read_text()), "preprocessing", prep)))
    # The model's card is built as the weights are read: the error names them at once.
    with pytest.raises(WeightsError, match=rf"bad description of {path}: .*std"):
        load_model(tmp_path)


def test_fifo_weights_and_sidecar_are_refused_unopened(tmp_path):
    """Opening a FIFO blocks until something writes to it: run in a subprocess with a timeout."""
    import os

    (tmp_path / "a").mkdir()
    _, _, side = _saved(tmp_path / "a")
    side.unlink()
    os.mkfifo(side)
    (tmp_path / "b").mkdir()
    _, path, side_b = _saved(tmp_path / "b")
    path.unlink()
    os.mkfifo(path)
    os.mkfifo(tmp_path / "w.pth")
    got = _load_errors([tmp_path / "a", tmp_path / "b", tmp_path / "w.pth"])
    assert (
        got[0].startswith(f"WeightsError: {side} is a named pipe (FIFO)") and "delete it" in got[0]
    )
    assert got[1].startswith(f"WeightsError: {path} is a named pipe (FIFO)"), got[1]
    assert got[2].startswith(f"WeightsError: {tmp_path / 'w.pth'} is a named pipe"), got[2]


def test_atomic_write_is_still_importable_from_weights():
    from resnetlab import io
    from resnetlab.models.weights import atomic_write

    assert atomic_write is io.atomic_write


def test_bad_arguments_are_project_errors_and_still_value_errors(tmp_path):
    from resnetlab.errors import ConfigError, ResnetlabError
    from resnetlab.models.weights import encode_weights, weights_meta

    model = create_model("resnet20", num_classes=3)
    torch.save(model.state_dict(), tmp_path / "r.pth")
    cases = [
        (lambda: load_weights(model, tmp_path / "r.pth", fmt="onnx"), ConfigError,
         r"invalid fmt='onnx': expected one of auto, resnetlab, torchvision, timm"),
        (lambda: weights_meta(model, class_names=["a", "b"]), WeightsError,
         r"^2 class names for a model with 3 classes$"),
        (lambda: save_weights(model, tmp_path / "m.pt"), WeightsError,
         r"save_weights writes \.safetensors files, got .*m\.pt$"),
        (lambda: encode_weights(create_model("resnet20", features_only=True)), WeightsError,
         r"^save the full model, not a features_only view of it$"),
    ]  # fmt: skip
    for call, kind, message in cases:
        with pytest.raises(kind, match=message) as err:
            call()
        assert isinstance(err.value, ResnetlabError) and isinstance(err.value, ValueError)
    assert not (tmp_path / "m.pt").exists()


class _FakeAssets:
    """Stands in for ``importlib.resources.files('resnetlab')`` with a 3-name class list."""

    def files(self, package):
        return self

    def joinpath(self, name):
        return self

    def read_text(self):
        return "tench\ngoldfish\nshark\n"


def test_corrupt_packaged_class_list_is_one_line_from_the_cli(tmp_path, monkeypatch, capsys):
    import importlib

    from PIL import Image

    from resnetlab import cli
    from resnetlab.errors import InstallationError
    from resnetlab.inference import imagenet_class_names

    image = tmp_path / "dog.png"
    Image.new("RGB", (40, 30), (120, 80, 40)).save(image)
    # the module that reads the packaged list, wherever the function is defined
    home = importlib.import_module(imagenet_class_names.__module__)
    monkeypatch.setattr(home, "resources", _FakeAssets())
    imagenet_class_names.cache_clear()
    try:
        with pytest.raises(InstallationError, match="has 3 names, not 1000") as err:
            imagenet_class_names()
        assert isinstance(err.value, RuntimeError)
        code = cli.main(["predict", "--model", "resnet18", str(image), "--device", "cpu"])
    finally:
        imagenet_class_names.cache_clear()
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert (
        err == "resnetlab predict: error: the packaged ImageNet class list has 3 names, not 1000\n"
    )
