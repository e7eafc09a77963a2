"""Dense models: dilated backbones (output_stride) for every family, FPN backbones, the
detection and segmentation heads, and their weights files."""

import json

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops import FrozenBatchNorm2d

from conftest import randomize
from resnetlab import create_model, save_weights
from resnetlab.errors import ConfigError
from resnetlab.models import WeightsError
from resnetlab.models.dense import (
    DETECTION_HEADS,
    SEGMENTATION_HEADS,
    SMALL_IMAGE_BUDGET,
    DenseSpec,
    FrozenBatchNormAct2d,
    anchor_sizes,
    create_dense_model,
    deeplab_rates,
    fpn_backbone,
    freeze_batch_norm,
    load_dense_model,
    read_dense_meta,
    save_dense_weights,
)
from resnetlab.models.resnet import allowed_output_strides
from resnetlab.models.zoo import get_config

# Every family, shrunk (small widths, 1-2 units per stage: two units exercise the later
# units' dilation) so that each output stride of each net runs in milliseconds.
_IN = dict(widths=(16, 32, 64, 128), layers=(1, 1, 2, 2))
_C = dict(layers=(1, 2, 2))
FAMILIES = {
    "resnet18": _IN,  # v1.5 basic
    "resnet50": _IN,  # v1.5 bottleneck (stride on the 3x3)
    "resnet50_v1": _IN,  # 2015 paper: stride on the first 1x1
    "resnet18_v2": _IN,  # pre-activation basic
    "resnet50_v2": _IN,  # pre-activation bottleneck
    "resnext50_32x4d": _IN,
    "wide_resnet50_2": _IN,
    "plain18": _IN,  # no shortcuts
    "resnet20": _C,  # CIFAR, option A shortcuts
    "plain20": _C,
    "resnet110_v2": _C,  # CIFAR pre-activation basic
    "resnet164_v2": _C,  # CIFAR pre-activation bottleneck, stride on the 1x1
    "resnet164": _C,
    "resnext29_8x64d": dict(_C, widths=(8, 16, 32)),
    "resnet8_pool": {},  # CIFAR stem with a max-pool
}
SMALL_DET = dict(backbone_args=dict(widths=(16, 32, 64, 128)), fpn_channels=64, min_size=64,
                 max_size=64)  # fmt: skip
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _side(model):
    return 64 if model.config.stem == "imagenet" else 16


@pytest.mark.parametrize("name", list(FAMILIES))
def test_output_stride_features_match_feature_info_and_the_strided_net(name):
    """Dilating instead of striding computes the strided net's features at every position:
    subsampled, the dilated features ARE the strided ones (the atrous algorithm), which
    pins down where each dilation goes; shapes are those feature_info promises."""
    args = FAMILIES[name]
    levels = tuple(range(len(get_config(name, **args).layers) + 1))  # the stem, every stage
    ref = randomize(create_model(name, features_only=True, out_indices=levels, **args))
    x = torch.randn(2, 3, _side(ref), _side(ref))
    with torch.no_grad():
        ref_feats = ref(x)
    allowed = allowed_output_strides(ref.config)
    assert ref.output_stride == allowed[0] and ref.feature_info[-1]["reduction"] == allowed[0]
    for os_ in allowed:
        m = create_model(name, features_only=True, out_indices=ref.out_indices,
                         output_stride=os_, **args)  # fmt: skip
        m.load_state_dict(ref.state_dict(), strict=True)  # the same keys at every stride
        m.eval()
        assert m.feature_info[-1]["reduction"] == os_
        assert [i["module"] for i in m.feature_info] == ["maxpool", *m.stage_names]
        modules = dict(m.named_modules())
        assert all(i["module"] in modules for i in m.feature_info)
        with torch.no_grad():
            feats = m(x)
        for f, info, r, rinfo in zip(
            feats, m.feature_info, ref_feats, ref.feature_info, strict=True
        ):
            side = x.shape[-1] // info["reduction"]
            assert f.shape == (2, info["num_chs"], side, side), (os_, info)
            step = rinfo["reduction"] // info["reduction"]
            torch.testing.assert_close(f[..., ::step, ::step], r, rtol=1e-4, atol=1e-5)
    # The classifier too: features at output_stride, the same head.
    full = create_model(name, num_classes=5, output_stride=allowed[-1], **args).eval()
    with torch.no_grad():
        assert full.forward_features(x).shape[-1] == x.shape[-1] // allowed[-1]
        assert full(x).shape == (2, 5)


def test_output_stride_rejects_values_the_net_does_not_have():
    with pytest.raises(
        ConfigError, match=r"output_stride=12 for resnet50: allowed are 32, 16, 8, 4"
    ):
        create_model("resnet50", output_stride=12)
    with pytest.raises(ConfigError, match=r"output_stride=8 .*allowed are 4, 2, 1"):
        create_model("resnet20", output_stride=8, features_only=True)
    with pytest.raises(ConfigError, match="allowed are 8, 4, 2"):
        create_model("resnet8_pool", output_stride=True)


@pytest.mark.parametrize("name", ["resnet50", "resnext50_32x4d"])
def test_output_stride_8_matches_torchvision_replace_stride_with_dilation(name):
    tv = getattr(torchvision.models, name)(
        num_classes=5, replace_stride_with_dilation=[False, True, True]
    )
    tv = randomize(tv)
    ours = create_model(name, num_classes=5, output_stride=8).eval()
    ours.load_state_dict(tv.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), tv(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("timm_name, name, os_", [("resnetv2_50", "resnet50_v2", 16),
                                                   ("resnet18", "resnet18", 8)])  # fmt: skip
def test_output_stride_matches_timm(timm_name, name, os_, tmp_path):
    ref = randomize(timm.create_model(timm_name, num_classes=6, output_stride=os_))
    torch.save(ref.state_dict(), tmp_path / "timm.pth")
    ours = create_model(name, weights=tmp_path / "timm.pth", output_stride=os_).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours.forward_features(x), ref.forward_features(x))
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- FPN


@pytest.mark.parametrize("name", ["resnet18", "resnet50_v2", "resnext50_32x4d", "resnet20"])
def test_fpn_backbone_levels(name):
    args = FAMILIES[name]
    b = fpn_backbone(name, out_channels=32, **args)
    assert b.out_channels == 32
    x = torch.randn(2, 3, 64, 64)
    out = b.eval()(x)
    assert list(out) == [lv["name"] for lv in b.feature_info]
    n = len(args["layers"])
    assert len(out) == n + 1  # every stage and the pooled level (3 + 1 for a CIFAR net)
    for lv, f in zip(b.feature_info, out.values(), strict=True):
        assert f.shape == (2, 32, 64 // lv["reduction"], 64 // lv["reduction"])
    # frozen_bn=True (the default): no BatchNorm left; a v2 net's BN-ReLUs stay BN-ReLUs.
    assert not any(isinstance(m, nn.BatchNorm2d) for m in b.modules())
    if name.endswith("_v2"):
        assert any(isinstance(m, FrozenBatchNormAct2d) for m in b.modules())


def test_freezing_batch_norm_keeps_the_function():
    m = randomize(create_model("resnet50_v2", features_only=True, **_IN))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = m(x)
        after = freeze_batch_norm(m)(x)
    types = {type(mod) for mod in m.modules()}
    assert FrozenBatchNormAct2d in types and nn.BatchNorm2d not in types
    for a, b in zip(after, before, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_fpn_backbone_is_torchvisions_resnet_fpn_backbone():
    tv = randomize(resnet_fpn_backbone(backbone_name="resnet18", weights=None,
                                       norm_layer=nn.BatchNorm2d, trainable_layers=5))  # fmt: skip
    ours = fpn_backbone("resnet18", trainable_layers=5, frozen_bn=False)
    ours.load_state_dict(tv.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(ours.eval()(x).values(), tv(x).values(), strict=True):
            torch.testing.assert_close(a, b)
    # The default (frozen BN, 3 trainable stages): the same keys, the same frozen params.
    tv = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=3)
    ours = fpn_backbone("resnet18")
    assert list(ours.state_dict()) == list(tv.state_dict())
    grads = {k: p.requires_grad for k, p in tv.named_parameters()}
    assert {k: p.requires_grad for k, p in ours.named_parameters()} == grads


def test_trainable_layers_and_backbone_weights(tmp_path):
    src = randomize(create_model("resnet20", num_classes=4))
    save_weights(src, tmp_path / "cls.safetensors")
    b = fpn_backbone("resnet20", weights=tmp_path / "cls.safetensors", trainable_layers=2,
                     out_channels=16)  # fmt: skip
    torch.testing.assert_close(b.body.conv1.weight, src.conv1.weight)
    assert b.body.layer3[0].bn1.running_var.equal(src.layer3[0].bn1.running_var)
    trains = {k.split(".")[1] for k, p in b.named_parameters() if p.requires_grad}
    assert trains == {"layer3", "layer2", "inner_blocks", "layer_blocks"}
    b = fpn_backbone("resnet20", trainable_layers=4, frozen_bn=False, out_channels=16)
    assert all(p.requires_grad for p in b.parameters())  # all: stages, stem conv and BN
    with pytest.raises(ConfigError, match=r"trainable_layers=5: resnet20 has 3 stages .* 0\.\.4"):
        fpn_backbone("resnet20", trainable_layers=5)
    with pytest.raises(ConfigError, match="returned_layers"):
        fpn_backbone("resnet20", returned_layers=[2, 4])


# --------------------------------------------------------------------------- heads


def _targets(size=64, with_masks=True):
    out = []
    for k in (1, 2):
        boxes = torch.tensor([[4.0, 6.0, 30.0, 40.0], [20.0, 10.0, 60.0, 50.0]])[:k]
        t = dict(boxes=boxes, labels=torch.tensor([1, 3])[:k])
        if with_masks:
            masks = torch.zeros(k, size, size, dtype=torch.uint8)
            for j, (x0, y0, x1, y1) in enumerate(boxes.int().tolist()):
                masks[j, y0:y1, x0:x1] = 1
            t["masks"] = masks
        out.append(t)
    return out


@pytest.mark.parametrize("head", DETECTION_HEADS)
def test_detection_heads_train_and_predict(head):
    torch.manual_seed(0)
    model = create_dense_model(dict(task="detection", head=head, backbone="resnet18",
                                    num_classes=3, **SMALL_DET))  # fmt: skip
    assert model.spec.output_stride == 32 and model.spec.trainable_layers == 5
    assert model.spec.frozen_bn is False  # no backbone weights: ordinary BN
    images = [torch.rand(3, 64, 64) for _ in range(2)]
    losses = model.train()(images, _targets(with_masks=head == "maskrcnn"))
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.backbone.body.conv1.weight.grad is not None
    assert model.backbone.fpn.layer_blocks[0][0].weight.grad is not None
    with torch.no_grad():
        out = model.eval()(images)
    assert len(out) == 2
    for det in out:
        n = len(det["boxes"])
        assert det["boxes"].shape == (n, 4) and det["scores"].shape == (n,)
        assert ((det["labels"] >= 1) & (det["labels"] <= 3)).all()
        if head == "maskrcnn":
            assert det["masks"].shape == (n, 1, 64, 64) and det["masks"].dtype == torch.float32
    # Anchors: one size per level, 16 px doubling (FCOS: the levels' strides).
    sizes = model.anchor_generator.sizes if head in ("retinanet", "fcos") else (
        model.rpn.anchor_generator.sizes)  # fmt: skip
    if head == "fcos":
        assert sizes == ((8,), (16,), (32,), (64,), (128,))
    else:
        assert sizes == anchor_sizes(5) == ((16,), (32,), (64,), (128,), (256,))


@pytest.mark.parametrize("head", SEGMENTATION_HEADS)
def test_segmentation_heads_train_and_predict(head):
    spec = DenseSpec("segmentation", head, "resnet50_v2", 3, backbone_args=_IN)
    model = create_dense_model(spec)
    assert model.spec.output_stride == 16
    x = torch.rand(2, 3, 64, 64)
    logits = model.train()(x)["out"]
    assert logits.shape == (2, 4, 64, 64)
    target = torch.randint(0, 4, (2, 64, 64))
    target[0, :4] = 255
    nn.functional.cross_entropy(logits, target, ignore_index=255).backward()
    assert model.backbone.conv1.weight.grad is not None
    with torch.no_grad():
        assert model.eval()(x)["out"].shape == (2, 4, 64, 64)


def test_detector_is_torchvisions_faster_rcnn():
    sizes = anchor_sizes(5)
    tv = FasterRCNN(
        resnet_fpn_backbone(backbone_name="resnet18", weights=None, norm_layer=nn.BatchNorm2d,
                            trainable_layers=5),
        num_classes=4, min_size=64, max_size=64, image_mean=list(MEAN), image_std=list(STD),
        rpn_anchor_generator=AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * 5),
        **{**SMALL_IMAGE_BUDGET, "rpn_post_nms_top_n_test": 50},
    )  # fmt: skip
    randomize(tv.backbone)  # the heads keep their init: random ones propose nothing
    tv.eval()
    ours = create_dense_model(DenseSpec("detection", "fasterrcnn", "resnet18", 3, min_size=64,
                                        max_size=64)).eval()  # fmt: skip
    ours.rpn._post_nms_top_n = dict(tv.rpn._post_nms_top_n)
    ours.roi_heads.score_thresh = tv.roi_heads.score_thresh = 0.0  # random weights: keep all
    ours.load_state_dict(tv.state_dict(), strict=True)
    images = [torch.rand(3, 64, 64)]
    with torch.no_grad():
        a, b = ours(images)[0], tv(images)[0]
    assert len(a["boxes"]) > 0
    for key in ("boxes", "labels", "scores"):
        torch.testing.assert_close(a[key], b[key])


def test_segmenter_is_torchvisions_deeplabv3():
    tv = randomize(torchvision.models.segmentation.deeplabv3_resnet50(
        weights=None, weights_backbone=None, num_classes=4, aux_loss=False))  # fmt: skip
    # Output stride 8 at 512 px gives torchvision's atrous rates (12, 24, 36).
    spec = DenseSpec("segmentation", "deeplabv3", "resnet50", 3, output_stride=8, min_size=512,
                     max_size=512)  # fmt: skip
    ours = create_dense_model(spec).eval()
    ours.load_state_dict(tv.state_dict(), strict=True)
    x = torch.rand(1, 3, 64, 64)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(ours(x)["out"], tv((x - mean) / std)["out"])


def test_deeplab_rates_follow_the_paper_scaled_to_the_feature_map():
    assert deeplab_rates(16, 513) == (6, 12, 18)  # the paper's
    assert deeplab_rates(8, 512) == (12, 24, 36)  # torchvision's
    assert deeplab_rates(16, 128) == (2, 3, 4)  # an 8x8 map
    assert deeplab_rates(32, 128) == (1, 2, 3)


# --------------------------------------------------------------------------- specs


@pytest.mark.parametrize("changes, pattern", [
    (dict(task="classification"), "invalid task='classification'"),
    (dict(head="fcn"), "head='fcn': a detection head is one of fasterrcnn"),
    (dict(backbone="resnet51"), "unknown model 'resnet51'; did you mean"),
    (dict(num_classes=0), "num_classes=0"),
    (dict(output_stride=12), "output_stride=12: resnet18 allows 32, 16, 8, 4"),
    (dict(trainable_layers=6), r"trainable_layers=6: resnet18 has 4 stages and a stem: 0\.\.5"),
    (dict(mean=(0.5,)), r"mean=\(0.5,\): expected 3 values"),
    (dict(std=(0.2, 0.2, 0.0)), "std="),
    (dict(backbone_args={"num_classes": 5}), "backbone_args key"),
    (dict(backbone_args={"widht": 3}), "unknown model option"),
    (dict(min_size=64, max_size=32), "max_size=32: expected >= min_size=64"),
    (dict(fpn_channels=40), "fpn_channels=40: expected a multiple of 32, >= 64"),
    (dict(fpn_channels=32), "fpn_channels=32: expected a multiple of 32, >= 64"),
    (dict(frozen_bn="yes"), "frozen_bn='yes': expected true or false"),
    (dict(anchors=3), "unknown dense spec key"),
])  # fmt: skip
def test_bad_specs_name_the_field(changes, pattern):
    base = dict(task="detection", head="fasterrcnn", backbone="resnet18", num_classes=3)
    with pytest.raises(ConfigError, match=pattern):
        DenseSpec.from_dict({**base, **changes})


def test_spec_round_trip_and_required_fields():
    spec = DenseSpec("segmentation", "fcn", "resnet20", 2, backbone_args=dict(layers=[1, 1, 1]))
    assert spec.backbone_args == {"layers": (1, 1, 1)}
    assert DenseSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    with pytest.raises(ConfigError, match="lacks num_classes"):
        DenseSpec.from_dict(dict(task="detection", head="fcos", backbone="resnet18"))
    with pytest.raises(ConfigError, match="output_stride=16: resnet20 allows 4, 2, 1"):
        DenseSpec("segmentation", "fcn", "resnet20", 2, output_stride=16)
    # CIFAR nets reduce by 4 in all: segmentation's default 16 becomes their own 4.
    assert create_dense_model(spec).spec.output_stride == 4


# --------------------------------------------------------------------------- files


def test_detection_weights_round_trip(tmp_path):
    spec = DenseSpec("detection", "maskrcnn", "resnet18", 2, frozen_bn=True, **SMALL_DET)
    model = randomize(create_dense_model(spec)).eval()
    path = save_dense_weights(model, tmp_path / "det.safetensors", class_names=["a", "b"])
    meta = read_dense_meta(path)
    assert meta["task"] == "detection" and meta["class_names"] == ["a", "b"]
    assert meta["dense"] == model.spec.to_dict()
    loaded = load_dense_model(path).eval()
    assert loaded.spec == model.spec and loaded.class_names == ["a", "b"]
    images = [torch.rand(3, 64, 64), torch.rand(3, 48, 64)]
    with torch.no_grad():
        for a, b in zip(loaded(images), model(images), strict=True):
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # The file alone describes itself: without the sidecar it loads the same.
    path.with_suffix(".json").unlink()
    assert load_dense_model(path).spec == model.spec


def test_segmentation_weights_round_trip_with_frozen_preact_bn(tmp_path):
    src = randomize(create_model("resnet18_v2", num_classes=3, **_IN))
    save_weights(src, tmp_path / "cls.safetensors", preprocessing=dict(
        mean=[0.3], std=[0.2], image_size=32))  # fmt: skip
    spec = DenseSpec("segmentation", "deeplabv3", "resnet18_v2", 2, backbone_args=_IN)
    model = create_dense_model(spec, weights=tmp_path / "cls.safetensors")
    # With weights: frozen BN, three trainable stages, the card's statistics.
    assert model.spec.frozen_bn and model.spec.trainable_layers == 3
    assert model.spec.mean == (0.3, 0.3, 0.3) and model.spec.std == (0.2, 0.2, 0.2)
    assert model.load_report.complete and "fc.weight" in model.load_report.ignored
    assert any(isinstance(m, FrozenBatchNormAct2d) for m in model.modules())
    assert not model.backbone.conv1.weight.requires_grad
    assert model.backbone.layer4[0].conv1.weight.requires_grad
    assert model.backbone.norm.weight.equal(src.norm.weight)  # the final BN-ReLU, frozen
    (tmp_path / "run").mkdir()
    save_dense_weights(model, tmp_path / "run" / "model.safetensors", class_names=["x", "y"])
    loaded = load_dense_model(tmp_path / "run").eval()  # a run directory
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x)["out"], model.eval()(x)["out"])
    assert read_dense_meta(tmp_path / "run")["task"] == "segmentation"


def test_weights_files_that_are_not_dense_models(tmp_path):
    cls = tmp_path / "cls.safetensors"
    save_weights(create_model("resnet20", num_classes=3), cls)
    assert read_dense_meta(cls) is None
    with pytest.raises(WeightsError, match="classification model's weights: load it with"):
        load_dense_model(cls)
    torch.save(create_model("resnet20").state_dict(), tmp_path / "tv.pth")
    assert read_dense_meta(tmp_path / "tv.pth") is None
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(WeightsError, match="cannot read"):
        load_dense_model(tmp_path / "junk.safetensors")
    with pytest.raises(WeightsError, match="not found"):
        read_dense_meta(tmp_path / "missing.safetensors")
    spec = DenseSpec("segmentation", "fcn", "resnet20", 2, backbone_args=_C)
    path = save_dense_weights(create_dense_model(spec), tmp_path / "seg.safetensors",
                              class_names=["a", "b"])  # fmt: skip
    with pytest.raises(WeightsError, match="holds a whole segmentation model"):
        create_dense_model(spec, weights=path)
    # Tensors changed behind the description's back.
    tensors = {k: v.clone() for k, v in create_dense_model(spec).state_dict().items()}
    save_file(tensors, path)
    with pytest.raises(WeightsError, match="damaged"):
        load_dense_model(path)
    with pytest.raises(ConfigError, match="expected 2 names"):
        save_dense_weights(create_dense_model(spec), tmp_path / "x.safetensors", class_names=["a"])
    side = path.with_suffix(".json")
    side.write_text(json.dumps({**json.loads(side.read_text()), "class_names": ["a"]}))
    with pytest.raises(WeightsError, match="'class_names' has 1 names for 2 classes"):
        read_dense_meta(path)


def test_frozen_bn_modules_load_torchvision_frozen_keys():
    # FrozenBatchNorm2d has no num_batches_tracked: the same keys as torchvision's detectors.
    b = fpn_backbone("resnet18")
    assert isinstance(b.body.bn1, FrozenBatchNorm2d)
    assert not any(k.endswith("num_batches_tracked") for k in b.state_dict())
