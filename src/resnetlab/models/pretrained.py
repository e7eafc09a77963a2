"""Named pretrained weights: one table of every ImageNet weight that fits a zoo model.

A name is ``SOURCE:WEIGHT``: ``torchvision:resnet50.IMAGENET1K_V2`` (torchvision's model and
``Weights`` enum member) or ``timm:resnet50.a1_in1k`` (timm's model and pretrained tag).
Each resolves to a :class:`PretrainedWeights` card: the zoo model it loads into, the official
URL, the checksum, the classes and the preprocessing the weights were evaluated with, and
the published top-1/top-5.

torchvision's facts (URL, transforms, metrics, class names) are read from torchvision's own
``Weights`` metadata when a name is resolved, so they cannot drift from it. timm is not a
runtime dependency: its facts are copied here from ``timm.models.get_pretrained_cfg`` (timm
1.0.31), and its accuracies from timm's ``results/results-imagenet.csv`` at the test size.

Only architectures that compute the same function as the zoo model are listed: timm's
``resnet*``/``resnext*``/``wide_resnet*`` are torchvision's nets, and timm's ``resnetv2_18``
... ``resnetv2_101`` are the zoo's ``*_v2`` nets (the same features bit for bit; timm's head
is a 1x1 conv where the zoo's is a linear layer, which differ only by float rounding).
timm's BiT nets (``resnetv2_50x1_bit`` ...) are left out: they use GroupNorm and
weight-standardized convs, not the BatchNorm pre-activation units of the 2016 paper, as are
the ``*d``/``*t`` variants (deep stems, average-pool shortcuts).
"""

from __future__ import annotations

import difflib
import fnmatch
import math
import re
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from .card import IMAGENET_MEAN, IMAGENET_STD, ModelCard, Preprocessing, WeightsSource
from .weights import WeightsError

__all__ = [
    "PRETRAINED",
    "PRETRAINED_COLUMNS",
    "PretrainedWeights",
    "download_pretrained",
    "is_pretrained_name",
    "list_pretrained",
    "pretrained_path",
    "pretrained_rows",
    "render_pretrained_table",
    "resolve_pretrained",
]

SOURCES = ("torchvision", "timm")
#: Where the accuracies of the timm entries come from.
TIMM_METRICS_SOURCE = (
    "timm results/results-imagenet.csv (huggingface/pytorch-image-models@4e5207c), "
    "ImageNet-1k val at the card's test size and crop"
)
# torch.hub's rule: the hex digits after the last "-" of a file name are a sha256 prefix.
_HASH_IN_FILENAME = re.compile(r"-([a-f0-9]*)\.")


@dataclass(frozen=True)
class PretrainedWeights:
    """The card of one named pretrained weight: where it lives and how it is to be fed.

    ``hash`` is the sha256 hex digest or a prefix of it (torchvision's file names carry the
    first 8 hex digits, the rule of ``torch.hub.download_url_to_file(hash_prefix=...)``).
    None means the table knows no hash: the download is then verified against the sha256
    that the server announces (the Hugging Face hub sends the LFS object's sha256 as
    ``X-Linked-Etag``/``ETag``), and the verified digest is recorded beside the cached file.

    ``preprocessing`` has the key layout of ``DataInfo.preprocessing()`` (mean, std,
    image_size, channels, in_chans, resize, crop, interpolation): resize the shorter side
    to ``resize``, center-crop ``image_size``. ``crop_pct`` is ``image_size / resize`` as
    published; ``train_image_size`` the crop the weights were trained at.
    ``metrics`` holds the published ImageNet-1k ``top1``/``top5`` (percent; None if unknown).
    """

    name: str
    model: str
    url: str
    hash: str | None
    filename: str
    num_classes: int
    preprocessing: dict[str, Any] = field(hash=False)
    train_image_size: int | None
    crop_pct: float
    metrics: dict[str, float | None] = field(hash=False)
    metrics_source: str | None = None
    license: str | None = None
    class_names: tuple[str, ...] | None = field(default=None, repr=False)

    @property
    def source(self) -> str:
        """``torchvision`` or ``timm``: also the key layout ``load_weights`` reads."""
        return self.name.split(":", 1)[0]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict of the card (without the class names)."""
        out = asdict(self)
        out.pop("class_names")
        out["source"] = self.source
        return out

    def model_card(self) -> ModelCard:
        """The :class:`~resnetlab.models.card.ModelCard` of the zoo model with these weights:
        its preprocessing (with the training crop), classes, source and published metrics."""
        from .zoo import get_config

        config = get_config(self.model).replace(num_classes=self.num_classes)
        prep = dict(self.preprocessing, train_image_size=self.train_image_size)
        return ModelCard(
            architecture=self.model,
            config=config.to_dict(),
            num_classes=self.num_classes,
            class_names=self.class_names,
            preprocessing=Preprocessing.from_dict(prep),
            source=WeightsSource(self.source, name=self.name, url=self.url, sha256=self.hash),
            metrics=dict(self.metrics),
            metrics_source=self.metrics_source,
        )


@dataclass(frozen=True)
class _FromTorchvision:
    """A torchvision weight, its card read from torchvision's ``Weights`` when resolved.

    ``train`` is the training crop, which torchvision's metadata does not state: 224 for
    the original recipe (the reference scripts' ``--train-crop-size`` default), 176 for the
    "new training recipe" its docs link to (``--train-crop-size 176 --val-resize-size 232``;
    timm's pretrained_cfg of the same files, ``*.tv2_in1k``, says 176 too).
    """

    model: str
    tag: str
    train: int

    @property
    def name(self) -> str:
        return f"torchvision:{self.model}.{self.tag}"


def _preprocessing(mean, std, size: int, resize: int, interpolation: str) -> dict[str, Any]:
    """The JSON form of a test-time :class:`Preprocessing` (checked as it is built)."""
    prep = Preprocessing(mean=mean, std=std, image_size=int(size), channels=3, in_chans=3,
                         resize=int(resize), interpolation=interpolation)  # fmt: skip
    return prep.to_dict()


# timm's IMAGENET_DEFAULT_MEAN/STD and IMAGENET_INCEPTION_MEAN/STD, as in its pretrained_cfg.
_IMAGENET = (IMAGENET_MEAN, IMAGENET_STD)
_INCEPTION = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def _timm(
    tag: str,
    model: str,
    train: int,
    test: int,
    crop_pct: float,
    interpolation: str,
    top1: float | None,
    top5: float | None,
    *,
    norm: tuple[tuple[float, ...], tuple[float, ...]] = _IMAGENET,
    license: str = "apache-2.0",
) -> PretrainedWeights:
    """A timm weight on the Hugging Face hub: ``test``/``crop_pct`` are the cfg's test_input_size
    and test_crop_pct (else input_size and crop_pct)."""
    return PretrainedWeights(
        name=f"timm:{tag}",
        model=model,
        url=f"https://huggingface.co/timm/{tag}/resolve/main/model.safetensors",
        hash=None,
        filename=f"timm_{tag}.safetensors",
        num_classes=1000,
        # timm's eval transform: resize the shorter side to floor(size / crop_pct), then crop.
        preprocessing=_preprocessing(*norm, test, math.floor(test / crop_pct), interpolation),
        train_image_size=train,
        crop_pct=crop_pct,
        metrics={"top1": top1, "top5": top5},
        metrics_source=TIMM_METRICS_SOURCE if top1 is not None else None,
        license=license,
    )


_BSD, _NC = "bsd-3-clause", "cc-by-nc-4.0"

_ENTRIES: tuple[PretrainedWeights | _FromTorchvision, ...] = (
    # torchvision: (zoo model = torchvision model, Weights member, training crop)
    _FromTorchvision("resnet18", "IMAGENET1K_V1", 224),
    _FromTorchvision("resnet34", "IMAGENET1K_V1", 224),
    _FromTorchvision("resnet50", "IMAGENET1K_V1", 224),
    _FromTorchvision("resnet50", "IMAGENET1K_V2", 176),
    _FromTorchvision("resnet101", "IMAGENET1K_V1", 224),
    _FromTorchvision("resnet101", "IMAGENET1K_V2", 176),
    _FromTorchvision("resnet152", "IMAGENET1K_V1", 224),
    _FromTorchvision("resnet152", "IMAGENET1K_V2", 176),
    _FromTorchvision("resnext50_32x4d", "IMAGENET1K_V1", 224),
    _FromTorchvision("resnext50_32x4d", "IMAGENET1K_V2", 176),
    _FromTorchvision("resnext101_32x8d", "IMAGENET1K_V1", 224),
    _FromTorchvision("resnext101_32x8d", "IMAGENET1K_V2", 176),
    _FromTorchvision("resnext101_64x4d", "IMAGENET1K_V1", 176),  # the new recipe (its docs)
    _FromTorchvision("wide_resnet50_2", "IMAGENET1K_V1", 224),
    _FromTorchvision("wide_resnet50_2", "IMAGENET1K_V2", 176),
    _FromTorchvision("wide_resnet101_2", "IMAGENET1K_V1", 224),
    _FromTorchvision("wide_resnet101_2", "IMAGENET1K_V2", 176),
    # timm: tag                                        zoo model           train, test, crop_pct, interpolation, top-1, top-5 (results csv)
    _timm("resnet18.a1_in1k",                          "resnet18",         224, 288, 1.0,   "bicubic",  73.164, 91.054),
    _timm("resnet18.a2_in1k",                          "resnet18",         224, 288, 1.0,   "bicubic",  72.364, 90.620),
    _timm("resnet18.a3_in1k",                          "resnet18",         160, 224, 0.95,  "bicubic",  68.250, 88.172),
    _timm("resnet18.fb_ssl_yfcc100m_ft_in1k",          "resnet18",         224, 224, 0.875, "bilinear", 72.636, 91.416, license=_NC),
    _timm("resnet18.fb_swsl_ig1b_ft_in1k",             "resnet18",         224, 224, 0.875, "bilinear", 73.286, 91.754, license=_NC),
    _timm("resnet18.gluon_in1k",                       "resnet18",         224, 224, 0.875, "bicubic",  70.844, 89.750),
    _timm("resnet18.tv_in1k",                          "resnet18",         224, 224, 0.875, "bilinear", 69.752, 89.082, license=_BSD),
    _timm("resnet34.a1_in1k",                          "resnet34",         224, 288, 1.0,   "bicubic",  77.930, 93.758),
    _timm("resnet34.a2_in1k",                          "resnet34",         224, 288, 1.0,   "bicubic",  77.150, 93.288),
    _timm("resnet34.a3_in1k",                          "resnet34",         160, 224, 0.95,  "bicubic",  72.996, 91.116),
    _timm("resnet34.bt_in1k",                          "resnet34",         224, 288, 0.95,  "bicubic",  76.506, 93.342),
    _timm("resnet34.gluon_in1k",                       "resnet34",         224, 224, 0.875, "bicubic",  74.574, 91.988),
    _timm("resnet34.ra4_e3600_r224_in1k",              "resnet34",         224, 288, 1.0,   "bicubic",  78.972, 94.454, norm=_INCEPTION),
    _timm("resnet34.tv_in1k",                          "resnet34",         224, 224, 0.875, "bilinear", 73.298, 91.422, license=_BSD),
    _timm("resnet50.a1_in1k",                          "resnet50",         224, 288, 1.0,   "bicubic",  81.240, 95.112),
    _timm("resnet50.a1h_in1k",                         "resnet50",         176, 224, 1.0,   "bicubic",  80.654, 95.312),
    _timm("resnet50.a2_in1k",                          "resnet50",         224, 288, 1.0,   "bicubic",  80.774, 94.978),
    _timm("resnet50.a3_in1k",                          "resnet50",         160, 224, 0.95,  "bicubic",  78.052, 93.780),
    _timm("resnet50.am_in1k",                          "resnet50",         224, 224, 0.875, "bicubic",  79.004, 94.392),
    _timm("resnet50.b1k_in1k",                         "resnet50",         224, 288, 1.0,   "bicubic",  80.708, 95.430),
    _timm("resnet50.b2k_in1k",                         "resnet50",         224, 288, 1.0,   "bicubic",  80.466, 95.306),
    _timm("resnet50.bt_in1k",                          "resnet50",         224, 288, 0.95,  "bicubic",  79.652, 94.908),
    _timm("resnet50.c1_in1k",                          "resnet50",         224, 288, 1.0,   "bicubic",  80.928, 95.554),
    _timm("resnet50.c2_in1k",                          "resnet50",         224, 288, 1.0,   "bicubic",  80.862, 95.530),
    _timm("resnet50.d_in1k",                           "resnet50",         224, 288, 1.0,   "bicubic",  81.012, 95.456),
    _timm("resnet50.fb_ssl_yfcc100m_ft_in1k",          "resnet50",         224, 224, 0.875, "bilinear", 79.252, 94.826, license=_NC),
    _timm("resnet50.fb_swsl_ig1b_ft_in1k",             "resnet50",         224, 224, 0.875, "bilinear", 81.146, 95.980, license=_NC),
    _timm("resnet50.gluon_in1k",                       "resnet50",         224, 224, 0.875, "bicubic",  77.580, 93.704),
    _timm("resnet50.ra_in1k",                          "resnet50",         224, 288, 0.95,  "bicubic",  79.864, 94.970),
    _timm("resnet50.ram_in1k",                         "resnet50",         224, 288, 0.95,  "bicubic",  79.982, 95.038),
    _timm("resnet50.tv2_in1k",                         "resnet50",         176, 224, 0.965, "bilinear", 80.846, 95.430, license=_BSD),
    _timm("resnet50.tv_in1k",                          "resnet50",         224, 224, 0.875, "bilinear", 76.156, 92.866, license=_BSD),
    _timm("resnet101.a1_in1k",                         "resnet101",        224, 288, 1.0,   "bicubic",  82.326, 95.630),
    _timm("resnet101.a1h_in1k",                        "resnet101",        224, 288, 1.0,   "bicubic",  82.796, 96.324),
    _timm("resnet101.a2_in1k",                         "resnet101",        224, 288, 1.0,   "bicubic",  82.218, 95.740),
    _timm("resnet101.a3_in1k",                         "resnet101",        160, 224, 0.95,  "bicubic",  79.836, 94.608),
    _timm("resnet101.gluon_in1k",                      "resnet101",        224, 224, 0.875, "bicubic",  79.306, 94.538),
    _timm("resnet101.tv2_in1k",                        "resnet101",        176, 224, 0.965, "bilinear", 81.906, 95.768, license=_BSD),
    _timm("resnet101.tv_in1k",                         "resnet101",        224, 224, 0.875, "bilinear", 77.404, 93.552, license=_BSD),
    _timm("resnet152.a1_in1k",                         "resnet152",        224, 288, 1.0,   "bicubic",  82.742, 95.734),
    _timm("resnet152.a1h_in1k",                        "resnet152",        224, 288, 1.0,   "bicubic",  83.494, 96.522),
    _timm("resnet152.a2_in1k",                         "resnet152",        224, 288, 1.0,   "bicubic",  82.614, 95.748),
    _timm("resnet152.a3_in1k",                         "resnet152",        160, 224, 0.95,  "bicubic",  80.548, 95.004),
    _timm("resnet152.gluon_in1k",                      "resnet152",        224, 224, 0.875, "bicubic",  79.712, 94.720),
    _timm("resnet152.tv2_in1k",                        "resnet152",        176, 224, 0.965, "bilinear", 82.294, 96.000, license=_BSD),
    _timm("resnet152.tv_in1k",                         "resnet152",        224, 224, 0.875, "bilinear", 78.330, 94.046, license=_BSD),
    _timm("resnext50_32x4d.a1_in1k",                   "resnext50_32x4d",  224, 288, 1.0,   "bicubic",  81.480, 95.152),
    _timm("resnext50_32x4d.a1h_in1k",                  "resnext50_32x4d",  224, 288, 1.0,   "bicubic",  82.016, 95.934),
    _timm("resnext50_32x4d.a2_in1k",                   "resnext50_32x4d",  224, 288, 1.0,   "bicubic",  81.304, 95.114),
    _timm("resnext50_32x4d.a3_in1k",                   "resnext50_32x4d",  160, 224, 0.95,  "bicubic",  79.258, 94.308),
    _timm("resnext50_32x4d.fb_ssl_yfcc100m_ft_in1k",   "resnext50_32x4d",  224, 224, 0.875, "bilinear", 80.316, 95.386, license=_NC),
    _timm("resnext50_32x4d.fb_swsl_ig1b_ft_in1k",      "resnext50_32x4d",  224, 224, 0.875, "bilinear", 82.162, 96.224, license=_NC),
    _timm("resnext50_32x4d.gluon_in1k",                "resnext50_32x4d",  224, 224, 0.875, "bicubic",  79.354, 94.424),
    _timm("resnext50_32x4d.ra_in1k",                   "resnext50_32x4d",  224, 288, 0.95,  "bicubic",  80.720, 95.344),
    _timm("resnext50_32x4d.tv2_in1k",                  "resnext50_32x4d",  176, 224, 0.965, "bilinear", 81.190, 95.344, license=_BSD),
    _timm("resnext50_32x4d.tv_in1k",                   "resnext50_32x4d",  224, 224, 0.875, "bilinear", 77.632, 93.674, license=_BSD),
    _timm("resnext101_32x4d.fb_ssl_yfcc100m_ft_in1k",  "resnext101_32x4d", 224, 224, 0.875, "bilinear", 80.936, 95.732, license=_NC),
    _timm("resnext101_32x4d.fb_swsl_ig1b_ft_in1k",     "resnext101_32x4d", 224, 224, 0.875, "bilinear", 83.268, 96.760, license=_NC),
    _timm("resnext101_32x4d.gluon_in1k",               "resnext101_32x4d", 224, 224, 0.875, "bicubic",  80.336, 94.908),
    _timm("resnext101_32x8d.fb_ssl_yfcc100m_ft_in1k",  "resnext101_32x8d", 224, 224, 0.875, "bilinear", 81.620, 96.036, license=_NC),
    _timm("resnext101_32x8d.fb_swsl_ig1b_ft_in1k",     "resnext101_32x8d", 224, 224, 0.875, "bilinear", 84.276, 97.188, license=_NC),
    _timm("resnext101_32x8d.fb_wsl_ig1b_ft_in1k",      "resnext101_32x8d", 224, 224, 0.875, "bilinear", 82.720, 96.624, license=_NC),
    _timm("resnext101_32x8d.tv2_in1k",                 "resnext101_32x8d", 176, 224, 0.965, "bilinear", 82.832, 96.234, license=_BSD),
    _timm("resnext101_32x8d.tv_in1k",                  "resnext101_32x8d", 224, 224, 0.875, "bilinear", 79.308, 94.530, license=_BSD),
    _timm("resnext101_64x4d.c1_in1k",                  "resnext101_64x4d", 224, 288, 1.0,   "bicubic",  83.158, 96.370),
    _timm("resnext101_64x4d.gluon_in1k",               "resnext101_64x4d", 224, 224, 0.875, "bicubic",  80.640, 95.000),
    _timm("resnext101_64x4d.tv_in1k",                  "resnext101_64x4d", 224, 224, 0.875, "bilinear", 82.978, 96.252, license=_BSD),
    _timm("wide_resnet50_2.racm_in1k",                 "wide_resnet50_2",  224, 288, 0.95,  "bicubic",  82.260, 96.062),
    _timm("wide_resnet50_2.tv2_in1k",                  "wide_resnet50_2",  176, 224, 0.965, "bilinear", 81.612, 95.766, license=_BSD),
    _timm("wide_resnet50_2.tv_in1k",                   "wide_resnet50_2",  224, 224, 0.875, "bilinear", 78.486, 94.084, license=_BSD),
    _timm("wide_resnet101_2.tv2_in1k",                 "wide_resnet101_2", 176, 224, 0.965, "bilinear", 82.514, 96.012, license=_BSD),
    _timm("wide_resnet101_2.tv_in1k",                  "wide_resnet101_2", 224, 224, 0.875, "bilinear", 78.862, 94.312, license=_BSD),
    _timm("resnetv2_18.ra4_e3600_r224_in1k",           "resnet18_v2",      224, 288, 1.0,   "bicubic",  75.364, 92.692, norm=_INCEPTION),
    _timm("resnetv2_34.ra4_e3600_r224_in1k",           "resnet34_v2",      224, 288, 1.0,   "bicubic",  79.070, 94.560, norm=_INCEPTION),
    _timm("resnetv2_50.a1h_in1k",                      "resnet50_v2",      224, 288, 1.0,   "bicubic",  81.406, 95.712, norm=_INCEPTION),
    _timm("resnetv2_101.a1h_in1k",                     "resnet101_v2",     224, 288, 1.0,   "bicubic",  83.002, 96.444, norm=_INCEPTION),
)  # fmt: skip

#: Every named weight, by name. Tests and extensions may add cards to it.
PRETRAINED: dict[str, PretrainedWeights | _FromTorchvision] = {e.name: e for e in _ENTRIES}


@cache
def _torchvision_card(entry: _FromTorchvision) -> PretrainedWeights:
    from torchvision.models import get_model_weights  # only when a torchvision name is used

    weights = get_model_weights(entry.model)[entry.tag]
    tf = weights.transforms()
    size, resize = int(tf.crop_size[0]), int(tf.resize_size[0])
    metrics = weights.meta["_metrics"]["ImageNet-1K"]
    filename = Path(weights.url).name
    found = _HASH_IN_FILENAME.search(filename)
    return PretrainedWeights(
        name=entry.name,
        model=entry.model,
        url=weights.url,
        hash=(found.group(1) or None) if found else None,
        filename=filename,
        num_classes=len(weights.meta["categories"]),
        preprocessing=_preprocessing(tf.mean, tf.std, size, resize, tf.interpolation.value),
        train_image_size=entry.train,
        crop_pct=round(size / resize, 4),
        metrics={"top1": metrics.get("acc@1"), "top5": metrics.get("acc@5")},
        metrics_source=f"torchvision {type(weights).__name__}.{entry.tag}.meta",
        license=_BSD,
        class_names=tuple(weights.meta["categories"]),
    )


def is_pretrained_name(source: object) -> bool:
    """Whether ``source`` is a name of this table's kind (``torchvision:...``, ``timm:...``)."""
    return isinstance(source, str) and source.split(":", 1)[0] in SOURCES and ":" in source


def resolve_pretrained(name: str | PretrainedWeights) -> PretrainedWeights:
    """The card of a named weight; an unknown name raises :class:`WeightsError` with the
    closest names."""
    if isinstance(name, PretrainedWeights):
        return name
    entry = PRETRAINED.get(name)
    if entry is None:
        close = difflib.get_close_matches(name, list(PRETRAINED), n=4, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise WeightsError(
            f"unknown pretrained weights {name!r}{hint} (`resnetlab weights` lists all "
            f"{len(PRETRAINED)})"
        )
    return _torchvision_card(entry) if isinstance(entry, _FromTorchvision) else entry


def list_pretrained(pattern: str = "*") -> list[PretrainedWeights]:
    """The cards whose name, or whose model's name, matches a shell-style ``pattern``
    (``'timm:*'``, ``'resnet50'``, ``'*IMAGENET1K_V2'``)."""
    return [resolve_pretrained(name) for name, entry in PRETRAINED.items()
            if fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(entry.model, pattern)]  # fmt: skip


def pretrained_path(name: str | PretrainedWeights) -> Path:
    """Where the weights live in the torch hub cache (whether or not they are there yet)."""
    from .hub import cache_path

    return cache_path(resolve_pretrained(name).filename)


def download_pretrained(name: str | PretrainedWeights, *, progress: bool = True) -> Path:
    """The verified local file of a named weight, downloaded into the torch hub cache
    (``$TORCH_HOME/hub/checkpoints``) unless it is there already."""
    from .hub import download

    card = resolve_pretrained(name)
    return download(card.url, card.filename, sha256=card.hash, progress=progress)


def pretrained_rows(cards: list[PretrainedWeights]) -> list[dict[str, Any]]:
    """One JSON-able row per card: the card, its test resize/crop, and whether (and where)
    it is in the cache."""
    rows = []
    for card in cards:
        prep, path = card.preprocessing, pretrained_path(card)
        rows.append(
            dict(card.to_dict(), top1=card.metrics.get("top1"), top5=card.metrics.get("top5"),
                 test=f"{prep['resize']}/{prep['image_size']}",
                 interpolation=prep["interpolation"], cached=path.exists(), path=str(path))
        )  # fmt: skip
    return rows


#: The columns of the ``resnetlab weights`` table: (row key, header).
PRETRAINED_COLUMNS = [
    ("name", "name"),
    ("model", "model"),
    ("top1", "top-1"),
    ("top5", "top-5"),
    ("train_image_size", "train"),
    ("test", "test resize/crop"),
    ("interpolation", "interpolation"),
    ("cached", "cached"),
]


def render_pretrained_table(rows: list[dict[str, Any]]) -> str:
    """The rows of :func:`pretrained_rows` as a plain-text table ("–": not published)."""
    from .summary import render_table

    shown = [dict(r, top1="–" if r["top1"] is None else f"{r['top1']:.2f}",
                  top5="–" if r["top5"] is None else f"{r['top5']:.2f}",
                  train_image_size=r["train_image_size"] or "–",
                  cached="yes" if r["cached"] else "no") for r in rows]  # fmt: skip
    return render_table(shown, PRETRAINED_COLUMNS)
