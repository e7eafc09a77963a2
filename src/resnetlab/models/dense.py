"""Dense prediction with the ResNet family: object detection and semantic segmentation.

The backbone is any resnetlab net (``create_model(..., features_only=True)``, dilated with
``output_stride`` where asked); the rest is torchvision's, unchanged:

- Faster R-CNN (Ren et al. 2015, "Faster R-CNN: Towards Real-Time Object Detection with
  Region Proposal Networks") and Mask R-CNN (He et al. 2017) on a feature pyramid (Lin et
  al. 2017, "Feature Pyramid Networks for Object Detection"; torchvision ``BackboneWithFPN``);
- RetinaNet (Lin et al. 2017, "Focal Loss for Dense Object Detection") and FCOS (Tian et al.
  2019, "FCOS: Fully Convolutional One-Stage Object Detection") on P3-P7;
- DeepLabV3 (Chen et al. 2017, "Rethinking Atrous Convolution for Semantic Image
  Segmentation") and FCN (Long et al. 2015) on the last stage.

Label 0 is the background everywhere: a spec's ``num_classes`` counts the object classes
(K), the heads have K + 1 outputs. The models normalise their inputs themselves (images in
0..1): detectors in torchvision's ``GeneralizedRCNNTransform``, segmenters before the
backbone.

Anchors. torchvision's defaults (32..512 px, one octave per level from P2) are sized for
800-1333 px COCO images. Here level i of the pyramid (finest first) gets anchors of
``16 * 2**i`` px at aspect ratios 0.5, 1 and 2: 16, 32, 64, 128, 256 px on P2-P6 for
Faster/Mask R-CNN, the same sizes on P3-P7 for RetinaNet. They suit images of about 128 px
(``min_size=128``) holding objects of 20..64 px, the scene set's, which the three finest
levels cover. FCOS has no anchor boxes: its "anchor" is one point per location whose size
must be the level's stride (torchvision's FCOS sizes its centre sampling and regression
ranges by it), so FCOS gets the true strides.

Weights files: :func:`save_dense_weights` writes ``.safetensors`` with a JSON sidecar (also
stored inside the file) that holds the spec, the class names and the sha256 of the tensors;
:func:`load_dense_model` rebuilds the model from that alone and refuses a changed file.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from safetensors.torch import save as save_safetensors_bytes
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.detection import FCOS, FasterRCNN, MaskRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.segmentation import FCN, DeepLabV3
from torchvision.models.segmentation.deeplabv3 import DeepLabHead
from torchvision.models.segmentation.fcn import FCNHead
from torchvision.ops import FrozenBatchNorm2d, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import (
    ExtraFPNBlock,
    LastLevelMaxPool,
    LastLevelP6P7,
)

from ..config import ModelConfig, at_least, option, reject, validate_fields
from ..errors import ConfigError, ResnetlabError
from ..io import JSONFileError, StorageError, read_json, require_regular_file
from . import create_model
from .blocks import BatchNormAct2d
from .pretrained import _IMAGENET
from .resnet import ResNet, allowed_output_strides
from .weights import (
    DENSE_WEIGHTS_FORMAT,
    SIDECAR_CHECKSUM,
    SIDECAR_FORMAT,
    WEIGHTS_FILENAME,
    WeightsError,
    WeightsFile,
    content_sha256,
    read_weights,
    sidecar_path,
    write_weights,
)
from .zoo import get_config

__all__ = [
    "DENSE_FORMAT",
    "DETECTION_HEADS",
    "SEGMENTATION_HEADS",
    "TASKS",
    "DenseSpec",
    "FrozenBatchNormAct2d",
    "anchor_sizes",
    "create_dense_model",
    "deeplab_rates",
    "fpn_backbone",
    "freeze_batch_norm",
    "load_dense_model",
    "read_dense_meta",
    "save_dense_weights",
]

TASKS = ("detection", "segmentation")
DETECTION_HEADS = ("fasterrcnn", "maskrcnn", "retinanet", "fcos")
SEGMENTATION_HEADS = ("deeplabv3", "fcn")
HEADS = {"detection": DETECTION_HEADS, "segmentation": SEGMENTATION_HEADS}
# The output stride a spec gets when it names none (or the backbone's own reduction when
# that is finer): detection keeps the strided net (FPN brings back the resolution),
# segmentation dilates the last stage (the DeepLabV3 paper trains at output stride 16).
DEFAULT_OUTPUT_STRIDE = {"detection": 32, "segmentation": 16}
# The sidecar's "format" of dense models, and the key of their description inside the
# .safetensors file; a classification weights file says "resnetlab-weights".
DENSE_FORMAT = DENSE_WEIGHTS_FORMAT
DENSE_VERSION = 1
# See the module's doc: anchor sizes double per pyramid level from this one.
ANCHOR_BASE_SIZE = 16
ASPECT_RATIOS = (0.5, 1.0, 2.0)
# DeepLabV3's ASPP rates at output stride 16 on crops of about 512 px (513 in the paper;
# doubled at output stride 8), and that crop size.
DEEPLAB_RATES_OS16 = (6, 12, 18)
DEEPLAB_CROP = 512
# backbone_args that the spec sets itself, or that make no sense for a backbone.
_RESERVED_ARGS = ("num_classes", "in_chans", "features_only", "out_indices", "output_stride",
                  "weights")  # fmt: skip
MAX_IMAGE_SIDE = 4096


def _floats_ok(v: tuple) -> bool:
    return 1 <= len(v) <= 4 and all(math.isfinite(x) for x in v)


@dataclass(frozen=True)
class DenseSpec:
    """What a detection or segmentation model is: task, head, backbone and sizes.

    ``num_classes`` counts the object classes without the background (label 0). ``None``
    fields are chosen by :func:`create_dense_model` (and the model's ``.spec`` holds the
    chosen values): ``output_stride`` 32 for detection, 16 for segmentation (at most the
    backbone's own reduction); ``trainable_layers`` (stages counted from the top, then the
    stem, as torchvision counts them: 0..5 for a 4-stage net, 0..4 for a CIFAR net) all
    without backbone weights, 3 with; ``frozen_bn`` (torchvision's FrozenBatchNorm2d in the
    backbone) with backbone weights only. ``min_size``/``max_size``: detection resizes
    images to them (torchvision's 800/1333 are far too big for small images);
    segmentation sizes DeepLabV3's atrous rates for images of ``min_size`` px.
    ``fpn_channels``: the pyramid's width (detection; a multiple of 32, at least 64: FCOS's
    heads normalise in 32 groups, and a group needs two values on a 1 x 1 top level). ``mean``/``std`` normalise the 0..1 input inside the model.
    """

    task: str = option(dataclasses.MISSING, choices=TASKS)
    head: str = option(dataclasses.MISSING, choices=DETECTION_HEADS + SEGMENTATION_HEADS)
    backbone: str = option(dataclasses.MISSING, allowed="a model name (resnetlab.list_models())")
    num_classes: int = option(
        dataclasses.MISSING, check=at_least(1), allowed="an integer >= 1 (without background)"
    )
    backbone_args: dict = field(default_factory=dict)
    output_stride: int | None = None
    trainable_layers: int | None = option(None, check=at_least(0), allowed="an integer >= 0")
    frozen_bn: bool | None = None
    min_size: int = option(128, check=lambda v: 16 <= v <= MAX_IMAGE_SIDE,
                         allowed=f"an integer in [16, {MAX_IMAGE_SIDE}]")  # fmt: skip
    max_size: int = option(128, check=lambda v: 16 <= v <= MAX_IMAGE_SIDE,
                         allowed=f"an integer in [16, {MAX_IMAGE_SIDE}]")  # fmt: skip
    mean: tuple[float, ...] = option(_IMAGENET[0], check=_floats_ok, allowed="1 to 4 numbers")
    std: tuple[float, ...] = option(
        _IMAGENET[1],
        check=lambda v: _floats_ok(v) and all(x > 0 for x in v),
        allowed="1 to 4 positive numbers",
    )
    in_chans: int = option(3, check=lambda v: 1 <= v <= 4, allowed="an integer in [1, 4]")
    fpn_channels: int = option(
        256, check=lambda v: v >= 64 and v % 32 == 0, allowed="a multiple of 32, >= 64"
    )

    def __post_init__(self) -> None:
        validate_fields(self, "")
        if self.head not in HEADS[self.task]:
            reject("head", self.head, f"a {self.task} head is one of {', '.join(HEADS[self.task])}")
        bad = sorted(set(self.backbone_args) & set(_RESERVED_ARGS))
        if bad:
            raise ConfigError(
                f"invalid backbone_args key(s) {bad}: in_chans and output_stride are fields "
                "of the spec, num_classes is the head's; backbone_args take ModelConfig "
                "fields (widths=, layers=, groups=, ...) or depth="
            )
        # Lists (JSON, YAML) become tuples, so that a spec equals its to_dict() round trip.
        args = {k: tuple(v) if isinstance(v, list) else v for k, v in self.backbone_args.items()}
        object.__setattr__(self, "backbone_args", args)
        for key in ("mean", "std"):
            object.__setattr__(self, key, tuple(float(x) for x in getattr(self, key)))
        cfg = self.model_config()  # an unknown net or a bad override is a ConfigError here
        if self.output_stride is not None:
            allowed = allowed_output_strides(cfg)
            if self.output_stride not in allowed:
                reject("output_stride", self.output_stride,
                      f"{self.backbone} allows {', '.join(map(str, allowed))} (its full "
                      "reduction divided by 2**k, one k per stage that dilates)")  # fmt: skip
        top = len(cfg.layers) + 1
        if self.trainable_layers is not None and self.trainable_layers > top:
            reject("trainable_layers", self.trainable_layers,
                  f"{self.backbone} has {len(cfg.layers)} stages and a stem: 0..{top}")  # fmt: skip
        if self.max_size < self.min_size:
            reject("max_size", self.max_size, f"expected >= min_size={self.min_size}")
        for key in ("mean", "std"):
            if len(getattr(self, key)) != self.in_chans:
                reject(key, getattr(self, key),
                      f"expected {self.in_chans} values, one per input channel (in_chans)")  # fmt: skip

    def model_config(self) -> ModelConfig:
        """The backbone's architecture (the named net with ``backbone_args`` applied)."""
        return get_config(self.backbone, **self.backbone_args).replace(in_chans=self.in_chans)

    def replace(self, **changes: Any) -> DenseSpec:
        return DenseSpec.from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "backbone_args":
                value = {k: list(v) if isinstance(v, tuple) else v for k, v in value.items()}
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, data: Any) -> DenseSpec:
        if not isinstance(data, dict):
            reject("dense spec", data, "expected a mapping of DenseSpec fields")
        fields = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ConfigError(
                f"unknown dense spec key(s) {', '.join(map(str, unknown))}: allowed are "
                f"{', '.join(fields)}"
            )
        missing = [k for k in ("task", "head", "backbone", "num_classes") if k not in data]
        if missing:
            raise ConfigError(f"the dense spec lacks {', '.join(missing)} (required)")
        return cls(**data)


# ----------------------------------------------------------------------------- backbone


class FrozenBatchNormAct2d(FrozenBatchNorm2d):
    """torchvision's FrozenBatchNorm2d followed by ReLU: the frozen twin of a pre-activation
    unit's BatchNormAct2d (BN and ReLU in one module, with BN's keys). torchvision has no
    such module: its nets keep BN and ReLU apart, so FrozenBatchNorm2d alone serves them."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(super().forward(x), inplace=True)


def freeze_batch_norm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d in ``module`` by a FrozenBatchNorm2d with its statistics
    and affine parameters (BatchNormAct2d by FrozenBatchNormAct2d); returns ``module``.

    Detection trains on a few images per batch, too few for batch statistics, so its
    pretrained backbones keep their ImageNet statistics (Detectron's practice, and
    torchvision's detection backbones). torchvision builds its nets with a
    norm_layer argument; resnetlab's blocks are built as the papers draw them, so the BNs
    are swapped after the weights are loaded.
    """
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            cls = FrozenBatchNormAct2d if isinstance(child, BatchNormAct2d) else FrozenBatchNorm2d
            frozen = cls(child.num_features, eps=child.eps)
            with torch.no_grad():
                if child.affine:
                    frozen.weight.copy_(child.weight)
                    frozen.bias.copy_(child.bias)
                if child.track_running_stats:
                    frozen.running_mean.copy_(child.running_mean)
                    frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen.to(child.weight.device))
        else:
            freeze_batch_norm(child)
    return module


def _freeze_layers(model: ResNet, trainable_layers: int) -> None:
    """torchvision's rule (``_resnet_fpn_extractor``): train the top ``trainable_layers``
    stages, then the stem conv, and the stem BN only when everything trains. The final
    BN-ReLU of a pre-activation net goes with the last stage."""
    stages = model.stage_names
    top = len(stages) + 1
    if (
        isinstance(trainable_layers, bool)
        or not isinstance(trainable_layers, int)
        or not (0 <= trainable_layers <= top)
    ):
        raise ConfigError(
            f"invalid trainable_layers={trainable_layers!r}: {model.name} has {len(stages)} "
            f"stages and a stem, so 0..{top} (stages counted from the top)"
        )
    train = ([*stages[::-1], "conv1"])[:trainable_layers]
    if trainable_layers == top:
        train.append("bn1")
    if stages[-1] in train:
        train.append("norm")
    for name, param in model.named_parameters():
        if name.split(".", 1)[0] not in train:
            param.requires_grad_(False)


def _trunk(
    backbone: str | ModelConfig,
    *,
    weights: Any,
    trainable_layers: int,
    frozen_bn: bool,
    out_indices: tuple[int, ...] | None = None,
    **model_args: Any,
) -> ResNet:
    _refuse_dense_file(weights)
    model = create_model(
        backbone, weights=weights, features_only=True, out_indices=out_indices, **model_args
    )
    if frozen_bn:
        freeze_batch_norm(model)
    _freeze_layers(model, trainable_layers)
    return model


def _refuse_dense_file(weights: Any) -> None:
    """Backbone weights must be a classifier's: a dense model's file is refused by name
    (the classification reader would only see a description it does not know)."""
    if not isinstance(weights, (str, os.PathLike)):
        return
    p = Path(weights)
    p = p / WEIGHTS_FILENAME if p.is_dir() else p
    if p.suffix == ".safetensors" and p.is_file():
        meta = read_dense_meta(p)
        if meta is not None:
            raise WeightsError(
                f"{weights} holds a whole {meta['task']} model, not backbone weights: load it "
                "with resnetlab.models.dense.load_dense_model"
            )


def fpn_backbone(
    backbone: str | ModelConfig,
    *,
    weights: Any = None,
    trainable_layers: int = 3,
    returned_layers: list[int] | tuple[int, ...] | None = None,
    extra_blocks: ExtraFPNBlock | None = None,
    frozen_bn: bool = True,
    out_channels: int = 256,
    **model_args: Any,
) -> BackboneWithFPN:
    """A resnetlab net with a feature pyramid on top: torchvision's ``BackboneWithFPN``
    (torchvision's ``resnet_fpn_backbone`` for every net of the family).

    ``weights`` takes what ``create_model(weights=...)`` takes; ``returned_layers`` are
    stage numbers (default all: 1..4 for ImageNet nets, 1..3 for CIFAR nets);
    ``extra_blocks`` default: a max-pooled level on top (``LastLevelMaxPool``);
    ``model_args`` go to ``create_model`` (``output_stride=``, ``in_chans=``, config
    overrides). With the same weights and ``trainable_layers``, a torchvision ResNet's
    ``resnet_fpn_backbone`` has the same state-dict keys and outputs.

    The result's ``feature_info`` lists the pyramid's levels: ``name`` (its key in the
    output), ``num_chs`` and ``reduction`` (true, with dilation), finest first.
    """
    if isinstance(out_channels, bool) or not isinstance(out_channels, int) or out_channels < 1:
        raise ConfigError(f"invalid out_channels={out_channels!r}: expected an integer >= 1")
    model = _trunk(
        backbone, weights=weights, trainable_layers=trainable_layers, frozen_bn=frozen_bn,
        **model_args,
    )  # fmt: skip
    n = len(model.stage_names)
    layers = list(range(1, n + 1)) if returned_layers is None else list(returned_layers)
    if not layers or any(
        isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n for k in layers
    ) or layers != sorted(set(layers)):  # fmt: skip
        raise ConfigError(
            f"invalid returned_layers={returned_layers!r}: expected increasing stage numbers "
            f"in 1..{n} ({model.name} has {n} stages)"
        )
    info = [model.feature_info[k - 1] for k in layers]  # feature_info: stages 1..n
    return_layers = {model.stage_names[k - 1]: str(i) for i, k in enumerate(layers)}
    extra_blocks = LastLevelMaxPool() if extra_blocks is None else extra_blocks
    fpn = BackboneWithFPN(
        model, return_layers, [i["num_chs"] for i in info], out_channels, extra_blocks
    )
    levels = [
        dict(name=str(i), num_chs=out_channels, reduction=lv["reduction"])
        for i, lv in enumerate(info)
    ]
    top = info[-1]["reduction"]
    # The extra levels torchvision's blocks add (names as they name them): a stride-2
    # max-pool of P5, or two stride-2 convs.
    if isinstance(extra_blocks, LastLevelMaxPool):
        levels.append(dict(name="pool", num_chs=out_channels, reduction=top * 2))
    elif isinstance(extra_blocks, LastLevelP6P7):
        chs = extra_blocks.p7.out_channels
        levels += [dict(name="p6", num_chs=chs, reduction=top * 2),
                   dict(name="p7", num_chs=chs, reduction=top * 4)]  # fmt: skip
    fpn.feature_info = levels
    fpn.load_report = getattr(model, "load_report", None)  # what loading the weights did
    return fpn


# ------------------------------------------------------------------------------- heads


def anchor_sizes(num_levels: int) -> tuple[tuple[int, ...], ...]:
    """One anchor size per pyramid level, finest first: 16, 32, 64, ... px (module doc)."""
    return tuple((ANCHOR_BASE_SIZE * 2**i,) for i in range(num_levels))


def deeplab_rates(output_stride: int, image_size: int) -> tuple[int, ...]:
    """DeepLabV3's atrous rates for features at ``output_stride`` of ``image_size`` px images.

    The paper's (6, 12, 18) at output stride 16 on 513 px crops, scaled with the feature
    map's size (doubled at output stride 8, as in the paper; a quarter on 128 px images,
    where 12 and 18 would reach past an 8x8 map and leave only the centre tap). Kept
    distinct and >= 1. torchvision's (12, 24, 36) are the values at 8 and 512 px.
    """
    scale = image_size / DEEPLAB_CROP * 16 / output_stride
    rates: list[int] = []
    for r in DEEPLAB_RATES_OS16:
        rates.append(max(round(r * scale), rates[-1] + 1 if rates else 1))
    return tuple(rates)


class _ForegroundOnly:
    """torchvision's RetinaNet and FCOS score all num_classes with sigmoids, the background
    column 0 included: it is trained as a negative everywhere, yet could pass the score
    threshold. Label 0 is the background here, so such detections are dropped."""

    def postprocess_detections(self, *args: Any, **kwargs: Any) -> list[dict[str, torch.Tensor]]:
        detections = super().postprocess_detections(*args, **kwargs)  # type: ignore[misc]
        return [{k: v[d["labels"] > 0] for k, v in d.items()} for d in detections]


class DenseRetinaNet(_ForegroundOnly, RetinaNet):
    """torchvision's RetinaNet whose detections never carry the background label."""


class DenseFCOS(_ForegroundOnly, FCOS):
    """torchvision's FCOS whose detections never carry the background label, with box
    regression that starts alive.

    torchvision's regression head ends in a ReLU on a conv initialised with std 0.01 and
    bias 0: from random backbone weights, a distance channel whose output starts negative
    everywhere gets no gradient and never recovers (the box loss stays at exactly 1.0; it
    happened to one of three 26-layer backbones trained from scratch here). The FCOS paper
    predicts exp(s x), which cannot die; a bias of 1 (one stride each way, the targets being
    normalised by the stride) starts every distance positive and keeps torchvision's head.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        nn.init.constant_(self.head.regression_head.bbox_reg.bias, 1.0)


class _NormalizedInput:
    """Normalises 0..1 images by the model's ``input_mean``/``input_std`` buffers before
    torchvision's segmentation model (which expects normalised input) sees them."""

    def set_input_stats(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        # Not in the state dict: the spec holds them.
        self.register_buffer("input_mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)  # type: ignore[attr-defined]
        self.register_buffer("input_std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)  # type: ignore[attr-defined]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return super().forward((x - self.input_mean) / self.input_std)  # type: ignore[misc]


class DenseDeepLabV3(_NormalizedInput, DeepLabV3):
    """torchvision's DeepLabV3 taking 0..1 images (state-dict keys unchanged)."""


class DenseFCN(_NormalizedInput, FCN):
    """torchvision's FCN taking 0..1 images (state-dict keys unchanged)."""


# torchvision's proposal and RoI sampling budgets are set for 800 x 1333 images (2,000 RPN
# proposals, 512 sampled RoIs per image). Small images (<= SMALL_IMAGE_SIDE) hold few
# objects on 1/60 of the pixels: a quarter of the RoIs keeps ~4 positives per object, and
# the RoI head (RoIAlign's backward and the 12,544 x 1,024 fc6, ~85% of a CPU step at 512
# RoIs on 128 px images) costs a quarter.
SMALL_IMAGE_SIDE = 512
SMALL_IMAGE_BUDGET = dict(
    rpn_pre_nms_top_n_train=1000, rpn_post_nms_top_n_train=500,
    rpn_pre_nms_top_n_test=500, rpn_post_nms_top_n_test=300, box_batch_size_per_image=128,
)  # fmt: skip


def _proposal_budget(spec: DenseSpec) -> dict[str, int]:
    """The two-stage detectors' proposal/RoI budgets: torchvision's, or for small images
    :data:`SMALL_IMAGE_BUDGET`."""
    return dict(SMALL_IMAGE_BUDGET) if spec.max_size <= SMALL_IMAGE_SIDE else {}


def _detector(spec: DenseSpec, trunk: dict[str, Any]) -> nn.Module:
    n = len(spec.model_config().layers)
    one_stage = spec.head in ("retinanet", "fcos")
    c = spec.fpn_channels
    # torchvision's layouts: the two-stage detectors on C2-C5 plus a pooled P6, the
    # one-stage ones on C3-C5 plus P6, P7 computed from P5.
    backbone = fpn_backbone(
        spec.backbone,
        returned_layers=list(range(max(1, n - 2), n + 1)) if one_stage else None,
        extra_blocks=LastLevelP6P7(c, c) if one_stage else LastLevelMaxPool(),
        out_channels=c,
        **trunk,
    )
    levels = backbone.feature_info
    common = dict(
        min_size=spec.min_size,
        max_size=spec.max_size,
        image_mean=list(spec.mean),
        image_std=list(spec.std),
    )
    classes = spec.num_classes + 1
    if spec.head == "fcos":
        strides = tuple((lv["reduction"],) for lv in levels)
        anchors = AnchorGenerator(strides, ((1.0,),) * len(levels))
        return DenseFCOS(backbone, classes, anchor_generator=anchors, **common)
    anchors = AnchorGenerator(anchor_sizes(len(levels)), (ASPECT_RATIOS,) * len(levels))
    if spec.head == "retinanet":
        return DenseRetinaNet(backbone, classes, anchor_generator=anchors, **common)
    # RoI pooling reads the stage levels (not the pooled one), as torchvision's default.
    names = [lv["name"] for lv in levels if lv["name"].isdigit()]
    common.update(_proposal_budget(spec))
    box_pool = MultiScaleRoIAlign(names, output_size=7, sampling_ratio=2)
    if spec.head == "fasterrcnn":
        return FasterRCNN(
            backbone, classes, rpn_anchor_generator=anchors, box_roi_pool=box_pool, **common
        )
    mask_pool = MultiScaleRoIAlign(names, output_size=14, sampling_ratio=2)
    return MaskRCNN(
        backbone,
        classes,
        rpn_anchor_generator=anchors,
        box_roi_pool=box_pool,
        mask_roi_pool=mask_pool,
        **common,
    )


def _segmenter(spec: DenseSpec, trunk: dict[str, Any]) -> nn.Module:
    n = len(spec.model_config().layers)
    model = _trunk(spec.backbone, out_indices=(n,), **trunk)
    # "norm" is the net's final BN-ReLU for pre-activation nets (an Identity otherwise):
    # the head sees forward_features' output, as the classifier does.
    body = IntermediateLayerGetter(model, {"norm": "out"})
    classes = spec.num_classes + 1
    if spec.head == "deeplabv3":
        rates = deeplab_rates(spec.output_stride, spec.min_size)
        net: nn.Module = DenseDeepLabV3(body, DeepLabHead(model.num_features, classes, rates))
    else:
        net = DenseFCN(body, FCNHead(model.num_features, classes))
    net.set_input_stats(spec.mean, spec.std)
    net.load_report = getattr(model, "load_report", None)
    return net


def _card_stats(wf: WeightsFile) -> tuple[list[float], list[float]] | None:
    if wf.card is not None:
        prep = wf.card.preprocessing
    else:
        prep = (wf.meta or {}).get("preprocessing") or {}
    if "mean" in prep and "std" in prep:
        return list(prep["mean"]), list(prep["std"])
    return None


def _resolve(spec: DenseSpec, wf: WeightsFile | None) -> DenseSpec:
    """``spec`` with every None chosen, and the weights' own mean/std in place of the
    default ImageNet statistics."""
    cfg = spec.model_config()
    changes: dict[str, Any] = {}
    if spec.output_stride is None:
        changes["output_stride"] = min(
            DEFAULT_OUTPUT_STRIDE[spec.task], allowed_output_strides(cfg)[0]
        )
    if spec.trainable_layers is None:
        changes["trainable_layers"] = 3 if wf is not None else len(cfg.layers) + 1
    if spec.frozen_bn is None:
        changes["frozen_bn"] = wf is not None
    stats = _card_stats(wf) if wf is not None else None
    if stats is not None and (spec.mean, spec.std) == _IMAGENET:  # the defaults
        mean, std = stats
        if len(mean) == 1 and len(std) == 1:  # a grayscale card on a 3-channel model
            mean, std = mean * spec.in_chans, std * spec.in_chans
        if len(mean) != spec.in_chans or len(std) != spec.in_chans:
            raise ConfigError(
                f"the weights' card normalises {len(mean)} channels (mean={mean}), the spec "
                f"has in_chans={spec.in_chans}: give the spec mean= and std= explicitly"
            )
        changes.update(mean=tuple(mean), std=tuple(std))
    return dataclasses.replace(spec, **changes) if changes else spec


def create_dense_model(spec: DenseSpec | dict[str, Any], *, weights: Any = None) -> nn.Module:
    """A torchvision detection or segmentation model on a resnetlab backbone.

    ``weights`` are the backbone's: anything ``create_model(weights=...)`` takes (resnetlab
    safetensors or run directory, torchvision/timm ``.pth``, named pretrained weights); a
    resnetlab card's mean/std replace the spec's default ImageNet statistics.

    Detection (torchvision's API): ``model(images, targets)`` with ``images`` a list of
    float [C, H, W] tensors in 0..1 and ``targets`` dicts of ``boxes`` (xyxy pixels),
    ``labels`` (1..K) and, for Mask R-CNN, ``masks`` [N, H, W]; a dict of losses in train
    mode, a list of dicts (``boxes``, ``labels``, ``scores``, ``masks`` [N, 1, H, W]) in
    eval mode. Segmentation: ``model(x)`` with ``x`` [N, C, H, W] in 0..1 gives
    ``{"out": logits [N, K + 1, H, W]}``.

    The model's ``.spec`` is the spec with every choice made, so that
    ``create_dense_model(model.spec)`` builds the same architecture; ``.load_report`` says
    what loading the backbone weights did (None without weights).
    """
    if isinstance(spec, dict):
        spec = DenseSpec.from_dict(spec)
    elif not isinstance(spec, DenseSpec):
        raise ConfigError(f"invalid spec={spec!r}: expected a DenseSpec or a mapping of its fields")
    wf = weights
    if weights is not None and not isinstance(weights, WeightsFile):
        _refuse_dense_file(weights)
        wf = read_weights(weights)  # read once: its card may set the statistics
    spec = _resolve(spec, wf)
    trunk = dict(
        weights=wf,
        trainable_layers=spec.trainable_layers,
        frozen_bn=spec.frozen_bn,
        in_chans=spec.in_chans,
        output_stride=spec.output_stride,
        **spec.backbone_args,
    )
    if spec.task == "detection":
        model = _detector(spec, trunk)
        model.load_report = model.backbone.load_report
    else:
        model = _segmenter(spec, trunk)
    model.spec = spec
    return model


# ------------------------------------------------------------------------------- files


def _bad(where: str, what: str) -> WeightsError:
    return WeightsError(f"bad {where}: {what}; save the model again or restore the file")


def _validate_dense_meta(meta: dict[str, Any], where: str) -> dict[str, Any]:
    version = meta.get("version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise _bad(where, f"'version' is {version!r}, expected an integer")
    if version > DENSE_VERSION:
        raise WeightsError(
            f"{where} is version {version}, newer than the {DENSE_VERSION} this resnetlab "
            "reads: upgrade resnetlab"
        )
    try:
        spec = DenseSpec.from_dict(meta.get("dense"))
    except (ConfigError, TypeError) as e:
        raise _bad(where, f"'dense' is not a valid spec ({e})") from None
    if meta.get("task") != spec.task:
        raise _bad(where, f"'task' is {meta.get('task')!r} but the spec's task is {spec.task!r}")
    names = meta.get("class_names")
    if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise _bad(where, "'class_names' is not a list of strings")
    if len(names) != spec.num_classes:
        raise _bad(where, f"'class_names' has {len(names)} names for {spec.num_classes} classes")
    digest = meta.get(SIDECAR_CHECKSUM)
    if not (isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest)):
        raise _bad(where, f"{SIDECAR_CHECKSUM!r} is not a sha256 hex digest")
    return meta


def _weights_path(path: str | os.PathLike) -> Path:
    p = Path(path)
    if p.is_dir():
        p = p / WEIGHTS_FILENAME
    if not os.path.lexists(p):
        raise WeightsError(f"weights file not found: {p}")
    try:
        require_regular_file(p, "weights file")
    except StorageError as e:
        raise WeightsError(str(e)) from None
    return p


def _description(p: Path) -> tuple[dict[str, Any] | None, str]:
    """The dense description of the weights file ``p`` (validated) and where it was read;
    None when the file describes something else or nothing."""
    if p.suffix != ".safetensors":
        return None, str(p)  # torchvision/timm pickles and checkpoints are classifiers
    side = sidecar_path(p)
    if os.path.lexists(side):
        where = f"sidecar {side}"
        try:
            meta = read_json(side, "sidecar")
        except (StorageError, JSONFileError) as e:
            raise WeightsError(
                f"{e}; restore it or delete it to use the description inside {p.name}"
            ) from None
    else:
        where = f"the description inside {p}"
        try:
            with safe_open(str(p), framework="pt") as f:
                text = (f.metadata() or {}).get(DENSE_FORMAT)
        except (SafetensorError, OSError) as e:
            raise WeightsError(f"cannot read {p}: {e} (a truncated or corrupt file?)") from None
        if text is None:
            return None, where
        try:
            meta = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as e:
            raise _bad(where, f"not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != DENSE_FORMAT:
        return None, where
    return _validate_dense_meta(meta, where), where


def read_dense_meta(path: str | os.PathLike) -> dict[str, Any] | None:
    """The description of a detection/segmentation weights file (``format``, ``version``,
    ``task``, ``dense``: the spec as a dict, ``class_names``, the tensors' sha256), checked;
    None for a classification weights file or any file that declares no dense model.

    A run directory stands for its ``model.safetensors``. A missing or unreadable file, or
    a damaged dense description, is a WeightsError.
    """
    return _description(_weights_path(path))[0]


def save_dense_weights(
    model: nn.Module, path: str | os.PathLike, *, class_names: list[str] | tuple[str, ...]
) -> Path:
    """Write ``model`` (from :func:`create_dense_model`) as ``path`` (.safetensors) plus a
    JSON sidecar with its spec and class names (K names, the background not among them).

    The description is stored inside the file too; both are written atomically (a full
    disk or a missing permission is a StorageError and leaves any previous file as it was).
    """
    spec = getattr(model, "spec", None)
    if not isinstance(spec, DenseSpec):
        raise ConfigError("save_dense_weights saves models built by create_dense_model (.spec)")
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ConfigError(f"invalid path={str(path)!r}: dense weights are .safetensors files")
    names = list(class_names)
    if not all(isinstance(n, str) for n in names) or len(names) != spec.num_classes:
        raise ConfigError(
            f"invalid class_names={names!r}: expected {spec.num_classes} names (one per object "
            "class, without the background)"
        )
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {
        "format": DENSE_FORMAT,
        "version": DENSE_VERSION,
        "task": spec.task,
        "dense": spec.to_dict(),
        "class_names": names,
        SIDECAR_CHECKSUM: content_sha256(tensors),
    }
    data = save_safetensors_bytes(tensors, metadata={DENSE_FORMAT: json.dumps(meta, indent=2)})
    return write_weights(path, data, meta)


def load_dense_model(path: str | os.PathLike) -> nn.Module:
    """Rebuild a model written by :func:`save_dense_weights` from the file alone.

    The tensors must match the recorded sha256 and load strictly; ``.spec`` and
    ``.class_names`` are set. A classification weights file, or anything that is not a
    dense model's, is a WeightsError saying so.
    """
    p = _weights_path(path)
    meta, where = _description(p)
    if meta is None:
        hint = (
            "it is a classification model's weights: load it with resnetlab.load_model"
            if _is_classification(p)
            else "it has no resnetlab detection/segmentation description"
        )
        raise WeightsError(f"{p} is not a detection or segmentation model: {hint}")
    try:
        state_dict = load_file(p)
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f"cannot read {p}: {e} (a truncated or corrupt file?)") from None
    if content_sha256(state_dict) != meta[SIDECAR_CHECKSUM]:
        raise WeightsError(
            f"{p} is damaged: its tensors do not match the sha256 recorded in {where} (bytes "
            "changed on disk or in a copy, or the description belongs to other weights)"
        )
    spec = DenseSpec.from_dict(meta["dense"])
    model = create_dense_model(spec)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        raise WeightsError(f"{where} does not describe the tensors of {p}: {e}") from None
    model.class_names = list(meta["class_names"])
    model.meta = meta
    return model


def _is_classification(p: Path) -> bool:
    if p.suffix != ".safetensors":
        return True
    side = sidecar_path(p)
    try:
        if os.path.lexists(side):
            return read_json(side, "sidecar").get("format") == SIDECAR_FORMAT
        with safe_open(str(p), framework="pt") as f:
            return SIDECAR_FORMAT in (f.metadata() or {})
    except (ResnetlabError, SafetensorError, OSError, AttributeError):
        return False  # only the words of the error message depend on it
