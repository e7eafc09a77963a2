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
