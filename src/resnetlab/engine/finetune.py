"""Fine-tuning from pretrained weights: what to freeze, when, and how the data is prepared.

The options (``finetune.*`` in :class:`~resnetlab.config.FinetuneConfig`) follow the usual
transfer-learning recipe (Kornblith et al. 2019, "Do Better ImageNet Models Transfer
Better?"; torchvision's and timm's fine-tuning scripts): a new head for the new classes,
optionally a frozen stem or first stages, a lower learning rate for the pretrained
backbone, a few epochs that train the head alone before the backbone joins, and frozen
BatchNorm statistics for datasets too small to estimate them. Frozen parts keep their BN
layers in eval mode, so their running statistics stay those of the pretraining.
"""

from __future__ import annotations

import re
from typing import Any

from torch import nn

from ..config import FinetuneConfig, ModelConfig
from ..errors import ConfigError
from ..models import is_pretrained_name, read_weights, resolve_pretrained
from ..models.card import default_preprocessing
from ..models.weights import described_card

__all__ = ["FineTuning", "weights_card"]

# torchvision's convention for ImageNet weights that do not describe their preprocessing:
# that of an ImageNet-stem net (ImageNet statistics, resize 256, center crop 224, bilinear).
IMAGENET_PREPROCESSING = default_preprocessing(ModelConfig(stem="imagenet"))


def weights_card(source: str) -> dict[str, Any]:
    """What the weights say about themselves: ``preprocessing`` (the JSON form of the
    card's :class:`~resnetlab.models.Preprocessing`), ``in_chans``, ``meta``.

    Named weights (``torchvision:resnet50.IMAGENET1K_V2``) answer from their card; resnetlab
    weights (a run directory, ``.safetensors``, a checkpoint) from their sidecar; a plain
    torchvision/timm state dict is taken to be ImageNet-trained with torchvision's
    preprocessing.
    """
    if is_pretrained_name(source):
        card = resolve_pretrained(source).model_card()
        return {"preprocessing": card.preprocessing.to_dict(), "in_chans": 3, "meta": None}
    wf = read_weights(source)
    card = described_card(wf)
    prep = (card.preprocessing if card is not None else None) or IMAGENET_PREPROCESSING
    stem = wf.state_dict.get("conv1.weight", wf.state_dict.get("stem.conv.weight"))
    in_chans = int(stem.shape[1]) if stem is not None and stem.ndim == 4 else 3
    return {"preprocessing": prep.to_dict(), "in_chans": in_chans, "meta": wf.meta}


class FineTuning:
    """Applies ``cfg`` to a :class:`~resnetlab.models.ResNet` at the start of every epoch.

    Everything is a function of the epoch, so a resumed run freezes exactly what the
    uninterrupted one did.
    """

    def __init__(self, model: nn.Module, cfg: FinetuneConfig) -> None:
        self.cfg = cfg
        stages = list(model.stage_names)
        # the backbone's modules that hold a state (parameters or BN statistics)
        parts = [(n, m) for n, m in model.named_children()
                 if n != "fc" and any(True for _ in m.state_dict())]  # fmt: skip
        stem = [(n, m) for n, m in parts if n not in (*stages, "norm")]
        match = re.fullmatch(r"stage(\d+)", cfg.freeze)
        if match and not 1 <= int(match[1]) <= len(stages):
            raise ConfigError(
                f"finetune.freeze={cfg.freeze!r}: {model.name} has {len(stages)} stages; use "
                f"none, stem, stage1 ... stage{len(stages)} or backbone"
            )
        self.backbone = parts
        if cfg.freeze == "backbone":
            self.frozen = parts
        elif cfg.freeze == "stem":
            self.frozen = stem
        elif match:
            self.frozen = stem + [(s, getattr(model, s)) for s in stages[: int(match[1])]]
        else:
            self.frozen = []

    def frozen_at(self, epoch: int) -> list[tuple[str, nn.Module]]:
        """The (name, module) pairs frozen during ``epoch`` (0-based)."""
        return self.backbone if epoch < self.cfg.head_epochs else self.frozen

    def apply(self, model: nn.Module, epoch: int) -> None:
        """Set ``requires_grad`` and BN modes for ``epoch``; call after ``model.train()``."""
        frozen = self.frozen_at(epoch)
        ids = {id(p) for _, m in frozen for p in m.parameters()}
        for p in model.parameters():
            p.requires_grad_(id(p) not in ids)
        for _, m in frozen:
            m.eval()
        if self.cfg.freeze_bn:
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()

    def describe(self, epoch: int) -> str:
        """One line: what is frozen in ``epoch`` and the other options in force."""
        frozen = self.frozen_at(epoch)
        parts = ["frozen: " + (", ".join(n for n, _ in frozen) or "nothing")]
        if self.cfg.backbone_lr_scale != 1:
            parts.append(f"backbone lr x{self.cfg.backbone_lr_scale:g}")
        if self.cfg.freeze_bn:
            parts.append("BN statistics frozen")
        return "; ".join(parts)
