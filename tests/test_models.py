"""The zoo: every named net builds, runs, has the papers' sizes and the documented options."""

from collections import Counter

import pytest
import torch
from torch import nn

import resnetlab
from resnetlab import ModelConfig, create_model, list_models, model_info
from resnetlab.models.blocks import Bottleneck, ShortcutA
from resnetlab.models.reference import PUBLISHED

# Nets over 40M parameters: their forward/backward test is marked slow.
BIG = {"resnet101", "resnet152", "resnet200", "resnet101_v1", "resnet152_v1", "resnet101_v2",
       "resnet152_v2", "resnet200_v2", "resnext101_32x4d", "resnext101_32x8d", "resnext101_64x4d",
       "wide_resnet50_2", "wide_resnet101_2", "resnext29_16x64d"}  # fmt: skip


def small_input(model, batch=2):
    side = 64 if model.config.stem == "imagenet" else 16
    return torch.randn(batch, model.config.in_chans, side, side)


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in BIG else n for n in list_models()]
)
def test_every_model_forward_backward(name):
    model = create_model(name, num_classes=7)
    x = small_input(model)
    out = model(x)
    assert out.shape == (2, 7)
    out.sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None for g in grads)
    assert torch.isfinite(out).all()


def test_list_models_has_every_design_name():
    names = set(list_models())
    expected = {
        *(f"resnet{d}" for d in (18, 34, 50, 101, 152, 200)),
        "resnet50_v1", "resnet50_v2", "resnet101_v2",
        "resnext50_32x4d", "resnext101_32x4d", "resnext101_32x8d", "resnext101_64x4d",
        "wide_resnet50_2", "wide_resnet101_2",
        *(f"resnet{d}" for d in (20, 32, 44, 56, 110, 1202)),
        "resnet110_v2", "resnet164_v2", "resnet1001_v2", "resnext29_8x64d", "resnext29_16x64d",
        *(f"plain{d}" for d in (20, 32, 44, 56, 110)),
    }  # fmt: skip
    assert expected <= names
    assert list_models("resnext29*") == ["resnext29_8x64d", "resnext29_16x64d"]


@pytest.mark.parametrize("name", [n for n, p in PUBLISHED.items() if p.exact and p.params])
def test_exact_param_counts(name):
    assert model_info(name)["params"] == PUBLISHED[name].params


@pytest.mark.parametrize("name", ["resnet164_v2", "resnext29_8x64d", "resnext29_16x64d"])
def test_param_counts_within_paper_rounding(name):
    # The papers print one decimal of millions; ResNeXt-29 16x64d has 68.155M, printed 68.1.
    assert abs(model_info(name)["params"] - PUBLISHED[name].params) <= 0.06e6


def test_resnet1001_v2_params():
    # The pre-activation paper's 10.2M counts the convolution and fc weights; the 0.15M
    # BN scales and shifts of its 333 units come on top.
    with torch.device("meta"):
        model = create_model("resnet1001_v2")
    weights = sum(
        p.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))
        for p in m.parameters()
    )  # fmt: skip
    assert round(weights / 1e6, 1) == 10.2
    assert 10.2e6 < model_info(model)["params"] < 10.4e6


@pytest.mark.parametrize("name", [n for n, p in PUBLISHED.items() if p.exact and p.gmacs])
def test_macs_match_torchvision(name):
    gmacs = model_info(name)["macs"] / 1e9
    assert abs(gmacs - PUBLISHED[name].gmacs) / PUBLISHED[name].gmacs < 0.01


def test_v1_stride_placement_costs_fewer_macs():
    v1 = model_info("resnet50_v1")["macs"] / 1e9
    assert abs(v1 - 3.8) / 3.8 < 0.02  # the 2015 paper's Table 1
    assert v1 < model_info("resnet50")["macs"] / 1e9
    m1, m15 = create_model("resnet50_v1"), create_model("resnet50")
    assert m1.layer2[0].conv1.stride == (2, 2) and m1.layer2[0].conv2.stride == (1, 1)
    assert m15.layer2[0].conv1.stride == (1, 1) and m15.layer2[0].conv2.stride == (2, 2)


def test_stage_breakdown_sums_to_total():
    info = model_info("resnet50")
    assert sum(layer["params"] for layer in info["layers"]) == info["params"]
    assert sum(layer["macs"] for layer in info["layers"]) == info["macs"]
    assert [layer["name"] for layer in info["layers"]][-1] == "fc"


def test_shortcut_options():
    a = create_model("resnet20")
    assert isinstance(a.layer2[0].downsample, ShortcutA) and a.layer1[0].downsample is None
    x = torch.randn(2, 16, 8, 8)
    y = ShortcutA(16, 32, 2)(x)
    assert y.shape == (2, 32, 4, 4) and torch.equal(y[:, 8:24], x[:, :, ::2, ::2])
    assert y[:, :8].abs().sum() == 0 and y[:, 24:].abs().sum() == 0
    b = create_model("resnet20", shortcut="B")
    assert isinstance(b.layer2[0].downsample, nn.Sequential) and b.layer2[1].downsample is None
    c = create_model("resnet20", shortcut="C")
    assert all(blk.downsample is not None for stage in c.stages for blk in stage)
    plain = create_model("plain20")
    assert all(not blk.residual for stage in plain.stages for blk in stage)
    # Option A adds no parameters over the plain net; B and C add projections.
    counts = [model_info(m)["params"] for m in (plain, a, b, c)]
    assert counts[0] == counts[1] < counts[2] < counts[3]


def test_plain_net_has_no_shortcut_in_forward():
    torch.manual_seed(0)
    net = create_model("plain20").eval()
    blk = net.layer1[0]
    x = torch.randn(1, 16, 8, 8)
    expected = blk.relu2(blk.bn2(blk.conv2(blk.relu1(blk.bn1(blk.conv1(x))))))
    assert torch.equal(blk(x), expected)


@pytest.mark.parametrize(
    ("name", "stages"), [("resnet20", 3), ("resnet18", 4), ("resnet50", 4), ("resnext29_8x64d", 3)]
)
def test_every_relu_module_is_called_once(name, stages):
    # Graph-level tools (PT2E quantization) see a module called twice as one node with two
    # outputs; each ReLU call site has a module of its own, and no state-dict key of one.
    model = create_model(name, num_classes=3, layers=(1,) * stages).eval()
    calls = Counter()
    for mod_name, m in model.named_modules():
        if isinstance(m, nn.ReLU):
            m.register_forward_hook(lambda *_, n=mod_name: calls.update([n]))
    model(small_input(model, batch=1))
    assert calls and set(calls.values()) == {1}, calls
    assert not any("relu" in k for k in model.state_dict())


def test_resnext_width_rule():
    m = create_model("resnext50_32x4d")
    assert m.layer1[0].conv2.groups == 32 and m.layer1[0].conv2.in_channels == 128
    x29 = create_model("resnext29_16x64d")
    assert x29.layer1[0].conv2.in_channels == 1024 and x29.layer3[0].conv3.out_channels == 1024
    wide = create_model("wide_resnet50_2")
    assert wide.layer1[0].conv2.in_channels == 128


def test_v2_structure():
    m = create_model("resnet164_v2")
    assert isinstance(m.bn1, nn.Identity)  # no stem BN-ReLU: the first unit's serves
    assert isinstance(m.norm, nn.BatchNorm2d)  # the final BN-ReLU before pooling
    first = m.layer1[0]
    # The projection is fed the shared pre-activation: zeroing norm1's output kills it.
    with torch.no_grad():
        first.norm1.weight.zero_()
        first.norm1.bias.zero_()
    first.eval()
    assert first.downsample(first.norm1(torch.randn(1, 16, 4, 4))).abs().sum() == 0


def test_zero_init_last():
    m = create_model("resnet50")
    assert all(blk.bn3.weight.abs().sum() == 0 for s in m.stages for blk in s)
    m = create_model("resnet50", zero_init_last=False)
    assert all(torch.all(blk.bn3.weight == 1) for s in m.stages for blk in s)
    v2 = create_model("resnet18_v2")
    assert all(blk.conv2.weight.abs().sum() == 0 for s in v2.stages for blk in s)
    # A plain net has no identity path to fall back on: it keeps its gamma.
    plain = create_model("plain20")
    assert all(torch.all(blk.bn2.weight == 1) for s in plain.stages for blk in s)
    # A residual net at init is then the identity through each unit (up to the final ReLU).
    net = create_model("resnet20").eval()
    x = torch.rand(1, 16, 8, 8)
    assert torch.equal(net.layer1[0](x), x)


def test_drop_path():
    m = create_model("resnet20", drop_path_rate=0.5, zero_init_last=False)
    rates = [getattr(blk.drop_path, "p", 0.0) for s in m.stages for blk in s]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.5) and rates == sorted(rates)
    x = torch.randn(8, 3, 16, 16)
    m.eval()
    assert torch.equal(m(x), m(x))
    m.train()
    torch.manual_seed(0)
    a = m(x)
    torch.manual_seed(1)
    assert not torch.allclose(a, m(x))


def test_grad_checkpointing_same_gradients():
    torch.manual_seed(0)
    ref = create_model("resnet56", zero_init_last=False)
    ckpt = create_model("resnet56", zero_init_last=False, grad_checkpointing=True)
    ckpt.load_state_dict(ref.state_dict())
    x = torch.randn(4, 3, 16, 16)
    ref(x).square().mean().backward()
    ckpt(x).square().mean().backward()
    for (name, p), q in zip(ref.named_parameters(), ckpt.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_in_chans_one():
    m = create_model("resnet20", in_chans=1)
    assert m.conv1.in_channels == 1
    assert m(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    m = create_model("resnet18", in_chans=1, num_classes=3)
    assert m(torch.randn(2, 1, 64, 64)).shape == (2, 3)


def test_features_only():
    m = create_model("resnet50", features_only=True)
    feats = m(torch.randn(1, 3, 64, 64))
    assert [f.shape[1] for f in feats] == [256, 512, 1024, 2048]  # C2..C5
    assert [f.shape[-1] for f in feats] == [16, 8, 4, 2]
    assert [i["num_chs"] for i in m.feature_info] == [256, 512, 1024, 2048]
    assert [i["reduction"] for i in m.feature_info] == [4, 8, 16, 32]
    assert not hasattr(m, "fc")
    m = create_model("resnet20", features_only=True, out_indices=(0, 3))
    feats = m(torch.randn(1, 3, 32, 32))
    assert [tuple(f.shape[1:]) for f in feats] == [(16, 32, 32), (64, 8, 8)]
    with pytest.raises(ValueError, match=r"out_indices=\(5,\).*0\.\.3"):
        create_model("resnet20", features_only=True, out_indices=(5,))


def test_forward_features_head_and_reset():
    m = create_model("resnet20").eval()
    x = torch.randn(2, 3, 32, 32)
    feats = m.forward_features(x)
    assert feats.shape == (2, 64, 8, 8)
    assert torch.equal(m.forward_head(feats), m(x))
    assert m.forward_head(feats, pre_logits=True).shape == (2, 64)
    m.reset_classifier(5)
    assert m(x).shape == (2, 5) and m.config.num_classes == 5
    m.reset_classifier(0)
    assert m(x).shape == (2, 64)


def test_custom_config():
    cfg = ModelConfig(
        block="preact_bottleneck", layers=(2, 2), widths=(8, 16), stem="cifar", stem_width=8,
        groups=4, base_width=16, num_classes=3,
    )  # fmt: skip
    m = create_model(cfg)
    assert m(torch.randn(2, 3, 16, 16)).shape == (2, 3)
    assert isinstance(create_model("resnet20", depth=38).layer1[0], nn.Module)
    assert create_model("resnet20", depth=38).config.layers == (6, 6, 6)
    assert create_model("resnet164_v2", depth=1001).config.layers == (111, 111, 111)
    assert isinstance(create_model("resnet50", depth=101).layer3[22], Bottleneck)


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(name="resnet20", depth=21), r"depth=21.*6n\+2"),
        (dict(name="resnet164_v2", depth=164 + 6), r"depth=170.*9n\+2"),
        (dict(name="resnet50", depth=51), r"depth=51.*\[50, 101, 152, 200\]"),
        (dict(name="resnet20", drop_path_rate=-0.1), r"drop_path_rate=-0.1.*\[0, 1\)"),
        (dict(name="resnext29_8x64d", base_width=0), r"base_width=0"),
        (
            dict(name="resnext29_8x64d", base_width=1, widths=(16, 32, 64)),
            r"base_width=1.*groups=8",
        ),
        (dict(name="resnet20", groups=4), r"groups=4.*bottleneck"),
        (dict(name="resnet20", shortcut="D"), r"shortcut='D'.*'A', 'B', 'C', 'none'"),
        (dict(name="resnet20", block="dense"), r"block='dense'"),
        (dict(name="resnet20", layers=(3, 3)), r"widths=.*2 positive ints"),
        (dict(name="resnet20", num_classes=-1), r"num_classes=-1"),
        (dict(name="resnet20", colour="red"), r"unknown model option.*colour"),
    ],
)
def test_invalid_configs_name_the_field(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        create_model(kwargs.pop("name"), **kwargs)


def test_unknown_model_suggests_close_names():
    with pytest.raises(ValueError, match=r"unknown model 'resnet5'.*did you mean.*resnet50"):
        create_model("resnet5")
    with pytest.raises(ValueError, match=r"resnext50_32x4d"):
        resnetlab.create_model("resnext50_32x8d")


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["resnet20", "plain20", "resnet18_v2", "resnext29_8x64d", "wide_resnet50_2"]
)
def test_torch_export(name):
    m = create_model(name, num_classes=4).eval()
    x = small_input(m)
    ep = torch.export.export(m, (x,))
    torch.testing.assert_close(ep.module()(x), m(x))


def test_config_keeps_its_in_chans():
    cfg = ModelConfig(block="basic", layers=(1, 1), widths=(8, 16), stem="cifar", stem_width=8,
                      in_chans=1, num_classes=2)  # fmt: skip
    assert create_model(cfg).conv1.in_channels == 1
    assert create_model(cfg, in_chans=3).conv1.in_channels == 3


def test_cifar_pool_stem_halves_the_resolution_for_a_quarter_of_the_cost():
    plain = create_model("resnet20", in_chans=1, layers=(1, 1, 1))
    pooled = create_model("resnet20", in_chans=1, layers=(1, 1, 1), stem="cifar_pool")
    assert plain.state_dict().keys() == pooled.state_dict().keys()  # a max-pool, no weights
    feats = create_model("resnet20", stem="cifar_pool", features_only=True, out_indices=(0, 3))
    assert [tuple(f.shape[1:]) for f in feats(torch.randn(1, 3, 32, 32))] == [(16, 16, 16),
                                                                              (64, 4, 4)]  # fmt: skip
    assert [i["reduction"] for i in feats.feature_info] == [2, 8]
    macs_plain = model_info(plain, (1, 28, 28))["macs"]
    macs_pooled = model_info(pooled, (1, 28, 28))["macs"]
    stem = 9 * 16 * 28 * 28  # the stem conv runs at full resolution in both
    assert (macs_plain - stem) / (macs_pooled - stem) == pytest.approx(4, rel=0.15)
    assert pooled(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ValueError, match="stem='pool'.*cifar_pool"):
        create_model("resnet20", stem="pool")
