"""The data layer's catalog, dataset specs, DataInfo and package boundaries."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
import torch

import resnetlab.data as data
from resnetlab.data import CATALOG, DataInfo, parse_data_spec
from resnetlab.data.seeding import derive_seed
from resnetlab.data.splits import stratified_split

DATA_PACKAGE = Path(data.__file__).parent


def test_catalog_constants():
    assert set(CATALOG) == {"fashion-mnist", "mnist", "cifar10", "cifar100"}
    for spec in CATALOG.values():
        assert len(spec.class_names) == spec.num_classes == len(set(spec.class_names))
        assert len(spec.mean) == len(spec.std) == spec.channels
        assert all(len(f.md5) == 32 and f.urls for f in spec.files)
    fashion = CATALOG["fashion-mnist"]
    assert fashion.class_names[0] == "T-shirt/top" and fashion.class_names[9] == "Ankle boot"
    assert (fashion.mean, fashion.std) == ((0.2860,), (0.3530,))
    assert fashion.files[0].urls[0].startswith("http://fashion-mnist.s3-website")
    mnist = CATALOG["mnist"]
    assert mnist.class_names == tuple("0123456789") and not mnist.hflip
    assert [u.split("/")[2] for u in mnist.files[0].urls] == [
        "ossci-datasets.s3.amazonaws.com",
        "yann.lecun.com",
    ]
    md5s = {f.filename: f.md5 for f in mnist.files}
    assert md5s["train-images-idx3-ubyte.gz"] == "f68b3c2dcbeaaa9fbdd348bbdeb94873"
    cifar100 = CATALOG["cifar100"].class_names
    assert list(cifar100) == sorted(cifar100) and cifar100[:2] == ("apple", "aquarium_fish")
    assert CATALOG["cifar10"].files[0].filename == "cifar-10-binary.tar.gz"
    assert CATALOG["cifar100"].files[0].md5 == "03b5dce01913d631647c71ecec9e9cb8"


def test_data_info_preprocessing_is_json():
    info = DataInfo("x", 2, ("a", "b"), 1, 28, (0.1307,), (0.3081,), in_chans=3)
    pre = json.loads(json.dumps(info.preprocessing()))
    assert pre == {
        "mean": [0.1307],
        "std": [0.3081],
        "image_size": 28,
        "channels": 1,
        "in_chans": 3,
        "resize": 28,
        "crop": "center",
        "interpolation": "bilinear",
    }


@pytest.mark.parametrize(
    ("spec", "kind", "name"),
    [
        ("fashion-mnist", "builtin", "fashion-mnist"),
        ("Fashion_MNIST", "builtin", "fashion-mnist"),
        ("CIFAR-10", "builtin", "cifar10"),
        ("cifar100", "builtin", "cifar100"),
        ("imagefolder:/data/pets", "imagefolder", "imagefolder"),
        ("synthetic", "synthetic", "synthetic"),
        ("synthetic:100", "synthetic", "synthetic"),
    ],
)
def test_parse_valid_specs(spec, kind, name):
    parsed = parse_data_spec(spec)
    assert (parsed.kind, parsed.name) == (kind, name)


def test_parse_spec_details_and_errors():
    assert parse_data_spec("imagefolder:/data/My Pets").path == Path("/data/My Pets")
    cfg = parse_data_spec("synthetic:classes=4, size=16,channels=1,n=40,test=8,seed=3").synthetic
    assert (cfg.classes, cfg.size, cfg.channels, cfg.n, cfg.test, cfg.seed) == (4, 16, 1, 40, 8, 3)
    assert parse_data_spec("synthetic:100").synthetic.n == 100
    with pytest.raises(ValueError, match=r"unknown dataset 'cifar1O'.*Did you mean 'cifar10'\?"):
        parse_data_spec("cifar1O")
    with pytest.raises(
        ValueError, match=r"fashion-mnist, mnist, cifar10, cifar100, imagefolder:PATH"
    ):
        parse_data_spec("imagenet")
    with pytest.raises(ValueError, match=r"Did you mean 'fashion-mnist'"):
        parse_data_spec("fashon-mnist")
    with pytest.raises(ValueError, match="is empty"):
        parse_data_spec("  ")
    with pytest.raises(ValueError, match="give the folder, as imagefolder:PATH"):
        parse_data_spec("imagefolder:")
    with pytest.raises(ValueError, match=r"mnist takes train=N and test=N .* got '3'"):
        parse_data_spec("mnist:3")
    assert parse_data_spec("mnist:train=20,test=5").limit == {"train": 20, "test": 5}
    with pytest.raises(ValueError, match=r"got 'val=3'"):
        parse_data_spec("cifar10:val=3")
    with pytest.raises(ValueError, match="synthetic option 'colour' is unknown"):
        parse_data_spec("synthetic:colour=3")
    with pytest.raises(ValueError, match="synthetic option channels=2: must be 1 or 3"):
        parse_data_spec("synthetic:channels=2")
    with pytest.raises(ValueError, match=r"synthetic option n='many': must be an integer"):
        parse_data_spec("synthetic:n=many")


def test_a_bare_folder_as_the_dataset_says_how_to_pass_it(tmp_path):
    pattern = re.escape(f"is a folder: pass it as 'imagefolder:{tmp_path}'")
    with pytest.raises(ValueError, match=pattern):
        parse_data_spec(str(tmp_path))


def test_stratified_split_and_seeds():
    labels = torch.arange(1000) % 10
    train, val = stratified_split(labels, 0.1, seed=0)
    assert len(val) == 100 and torch.bincount(labels[val]).tolist() == [10] * 10
    assert set(train.tolist()).isdisjoint(val.tolist()) and len(train) + len(val) == 1000
    assert torch.equal(val, stratified_split(labels, 0.1, seed=0)[1])
    assert not torch.equal(val, stratified_split(labels, 0.1, seed=1)[1])
    with pytest.raises(ValueError, match="selects no sample"):
        stratified_split(torch.arange(5), 0.1, seed=0)
    assert derive_seed(1, 2, "x") == derive_seed(1, 2, "x") != derive_seed(2, 1, "x")
    assert derive_seed(1, "2") != derive_seed(1, 2)
    assert derive_seed(0, 0, "order") == 142567021365218823  # pinned: resumed runs rely on it


def test_data_package_imports_nothing_else_from_resnetlab():
    for path in DATA_PACKAGE.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                module = node.module or ""
                if node.level == 2 and module in ("errors", "io", "config", "models.card"):
                    continue  # the error base, file I/O, the configs, the model card: left of data
                assert node.level in (0, 1), f"{path.name}: import from a parent package"
                assert node.level == 1 or not module.startswith("resnetlab"), path.name
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    assert not alias.name.startswith("resnetlab"), f"{path.name}: {alias.name}"


def test_public_api():
    for name in data.__all__:
        assert hasattr(data, name), name
    assert issubclass(data.ChecksumError, data.DataError)
    assert issubclass(data.DataError, RuntimeError)
    assert data.AUGMENTS == ("none", "flip", "crop", "standard")
