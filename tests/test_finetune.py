"""Fine-tuning from pretrained weights: the new head, freezing, per-group lr, frozen BN,
preprocessing taken from the weights, and weights that do not fit."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from resnetlab.config import FinetuneConfig, OptimConfig, load_train_config
from resnetlab.engine import TrainingError, train
from resnetlab.engine.finetune import FineTuning
from resnetlab.engine.optim import param_groups
from resnetlab.models import create_model
from test_folder_auto import make_folder

PRE = {"model": "resnet8_pool", "precision": "fp32", "eval_every": 0, "max_iters": 4,
       "data": {"spec": "synthetic:n=128,test=32,size=16,classes=5,channels=3",
                "batch_size": 16}}  # fmt: skip


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A 5-class, 3-channel run to start from."""
    out = tmp_path_factory.mktemp("pre") / "run"
    train(load_train_config(None, [], **PRE, output=str(out)), progress=False)
    return out


def finetune(tmp_path, pretrained, data, *overrides, name="ft", **values):
    values.setdefault("max_iters", 4)
    values.setdefault("model", "resnet8_pool")
    cfg = load_train_config(
        None, list(overrides), weights=str(pretrained),
        data={"spec": f"imagefolder:{data}", "batch_size": 8, "num_workers": 0},
        precision="fp32", output=str(tmp_path / name), eval_every=0, **values,
    )  # fmt: skip
    train(cfg, progress=False)
    return load_file(tmp_path / name / "model.safetensors")


def same(a, b, prefix):
    keys = [k for k in a if k.startswith(prefix) and not k.endswith("num_batches_tracked")]
    assert keys, prefix
    return all(torch.equal(a[k], b[k]) for k in keys)


def test_new_head_and_preprocessing_from_the_weights(tmp_path, pretrained, capfd):
    data = make_folder(tmp_path / "gray", classes=3, train=8, val=2)  # 1-channel images
    after = finetune(tmp_path, pretrained, data)
    err = capfd.readouterr().err
    assert "reinitialized: fc.weight, fc.bias" in err and "new head: 3 classes (c0, c1, c2)" in err
    assert after["fc.weight"].shape == (3, 128)
    report = (tmp_path / "ft" / "report.md").read_text()
    assert "## Weights" in report and "reinitialized: fc.weight, fc.bias" in report
    meta = json.loads((tmp_path / "ft" / "model.json").read_text())
    pre = json.loads((pretrained / "model.json").read_text())["preprocessing"]
    # the weights' statistics and 3 channels (gray repeated), not the folder's own
    assert meta["preprocessing"]["mean"] == pre["mean"] and meta["in_chans"] == 3
    assert meta["preprocessing"]["channels"] == 3


def test_freezing_keeps_the_frozen_parts_as_pretrained(tmp_path, pretrained):
    data = make_folder(tmp_path / "d", classes=3, train=8, val=2, mode="RGB")
    before = load_file(pretrained / "model.safetensors")
    after = finetune(tmp_path, pretrained, data, "finetune.freeze=stage1", name="s1")
    assert same(before, after, "conv1.") and same(before, after, "bn1.")
    assert same(before, after, "layer1.")  # running statistics too: frozen BN is in eval
    assert not same(before, after, "layer2.")
    after = finetune(tmp_path, pretrained, data, "finetune.head_epochs=1", name="head",
                     max_iters=None, epochs=1)  # fmt: skip
    assert all(same(before, after, p) for p in ("conv1.", "layer1.", "layer2.", "layer3."))
    after = finetune(tmp_path, pretrained, data, "finetune.freeze_bn=true", name="bn")
    bn = [k for k in before if "running_" in k]
    assert bn and all(torch.equal(before[k], after[k]) for k in bn)
    assert not torch.equal(before["layer2.0.conv1.weight"], after["layer2.0.conv1.weight"])


def test_backbone_lr_scale_makes_its_own_group():
    model = create_model("resnet8_pool", num_classes=3)
    groups = param_groups(model, OptimConfig(lr=0.1, no_decay_norm_bias=True),
                          backbone_lr_scale=0.1)  # fmt: skip
    head = {id(model.fc.weight), id(model.fc.bias)}
    for g in groups:
        is_head = {id(p) for p in g["params"]} <= head
        assert g.get("lr", 0.1) == pytest.approx(0.1 if is_head else 0.01)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert len(param_groups(model, OptimConfig())) == 1


def test_freeze_options_are_checked(tmp_path, pretrained):
    model = create_model("resnet8_pool", num_classes=3)
    with pytest.raises(ValueError, match="resnet8_pool has 3 stages; use none, stem, stage1"):
        FineTuning(model, FinetuneConfig(freeze="stage4"))
    with pytest.raises(ValueError, match="finetune.freeze='layer2'"):
        FinetuneConfig(freeze="layer2")
    ft = FineTuning(model, FinetuneConfig(freeze="stem", head_epochs=1))
    assert ft.describe(0).startswith("frozen: conv1, bn1, layer1, layer2, layer3")
    assert ft.describe(1) == "frozen: conv1, bn1"
    model.train()
    ft.apply(model, 1)
    assert not model.bn1.training and model.layer1.training
    assert not model.conv1.weight.requires_grad and model.fc.weight.requires_grad
    assert all(isinstance(m, nn.Module) for _, m in ft.frozen)


def test_weights_that_do_not_fit(tmp_path, pretrained):
    data = make_folder(tmp_path / "d", classes=2, train=8, val=2)
    with pytest.raises(TrainingError, match=r"holds a resnet8_pool, not a resnet20: pass --model"):
        finetune(tmp_path, pretrained, data, model="resnet20", name="x")
    proc = subprocess.run(
        [sys.executable, "-m", "resnetlab", "train", "--model", "resnet8_pool", "--weights",
         str(tmp_path / "missing.safetensors"), "--data", f"imagefolder:{data}",
         "--output", str(tmp_path / "y"), "--max-iters", "1", "--quiet"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "weights file not found" in proc.stderr
