"""The residual units of the ResNet family.

- ``BasicBlock`` and ``Bottleneck``: He et al. 2015, "Deep Residual Learning for Image
  Recognition" (Fig. 5). ``Bottleneck(groups, base_width)`` is also ResNeXt's aggregated
  transformation in its grouped-convolution form (Xie et al. 2017, Fig. 3c) and the wide
  ResNet bottleneck.
- ``PreActBasic`` and ``PreActBottleneck``: He et al. 2016, "Identity Mappings in Deep
  Residual Networks" (Fig. 1b / 4e): BN-ReLU-conv, no ReLU after the addition.

Shortcuts (2015 paper, section 3.3 and Table 3): option A pads with zeros and is
parameter-free, option B projects only where the shape changes, option C projects
everywhere; ``none`` removes the shortcut (the paper's "plain" nets).

Dilation (``dilation``, ``first_dilation``): a unit of a stage whose stride was replaced
by dilation (the atrous algorithm; ``ResNet(output_stride=...)``) runs every conv up to and
including the one that held the stride at the previous dilation, ``first_dilation``, and
every later conv at the new one. That makes the dilated net compute the strided net's
outputs at every position instead of every other one (torchvision's
``replace_stride_with_dilation`` and timm's ``output_stride`` place the dilation the same
way; for the stride-on-the-1x1 bottleneck the 3x3 comes after the stride and so takes the
new dilation).

Module names follow torchvision (v1 blocks) and timm ``resnetv2`` (pre-activation blocks)
so that their state dicts load key for key. Unlike torchvision, each ReLU call has its own
``nn.ReLU`` (``relu1``, ``relu2``, ...; no parameters, so the state dict is the same): a
module called at several places is one node with several outputs to graph-level tools, and
PT2E quantization then cannot fuse each conv + ReLU and add + ReLU on its own.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError


class ShortcutA(nn.Module):
    """Option A: subsample by ``stride`` and zero-pad the new channels (no parameters).

    The zeros are split evenly on both sides of the original channels, as in the widely
    used PyTorch CIFAR port of the paper's nets; this only matters when porting weights.
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int) -> None:
        super().__init__()
        if out_chs < in_chs:
            raise ConfigError(
                f"shortcut 'A' cannot reduce channels ({in_chs} -> {out_chs}); use shortcut 'B'"
            )
        self.stride = stride
        self.pad_before = (out_chs - in_chs) // 2
        self.pad_after = out_chs - in_chs - self.pad_before

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_before, self.pad_after))


class BatchNormAct2d(nn.BatchNorm2d):
    """BatchNorm followed by ReLU in one module: the pre-activation of a v2 unit.

    Keeping it a ``BatchNorm2d`` subclass gives it the plain BN state-dict keys, the same
    as timm's ``BatchNormAct2d``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(super().forward(x), inplace=True)


def conv3x3(
    in_chs: int, out_chs: int, stride: int = 1, groups: int = 1, dilation: int = 1
) -> nn.Conv2d:
    # padding = dilation keeps the size of a stride-1 output equal to its input's.
    return nn.Conv2d(
        in_chs, out_chs, 3, stride, padding=dilation, dilation=dilation, groups=groups, bias=False
    )


def conv1x1(in_chs: int, out_chs: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_chs, out_chs, 1, stride, bias=False)


def make_shortcut(
    kind: str, in_chs: int, out_chs: int, stride: int, *, preact: bool, dilated: bool = False
) -> nn.Module | None:
    """The shortcut of a unit, or ``None`` for the identity (and for ``kind == "none"``).

    Projections are 1x1 convs; v1 units follow them with BN (torchvision's
    ``downsample.0/1``), pre-activation units feed them the shared pre-activation and use
    no BN of their own (timm's ``downsample.conv``).
    ``dilated``: the unit's stride was replaced by dilation. It keeps the projection it
    would have with its stride, so one set of weights fits every output stride.
    """
    changes_shape = stride != 1 or dilated or in_chs != out_chs
    if kind == "none" or (kind in ("A", "B") and not changes_shape):
        return None
    if kind == "A":
        return ShortcutA(in_chs, out_chs, stride)
    if preact:
        return nn.Sequential(OrderedDict(conv=conv1x1(in_chs, out_chs, stride)))
    return nn.Sequential(conv1x1(in_chs, out_chs, stride), nn.BatchNorm2d(out_chs))


def drop_path(rate: float) -> nn.Module:
    """Stochastic depth (Huang et al. 2016) on the residual branch, per sample."""
    if rate <= 0:
        return nn.Identity()
    # Imported here: torchvision.ops pulls in torch._dynamo, seconds of start-up time.
    from torchvision.ops import StochasticDepth

    return StochasticDepth(rate, mode="row")


class BasicBlock(nn.Module):
    """Two 3x3 convs (2015 paper, Fig. 5 left); the stride sits on the first."""

    expansion = 1

    def __init__(
        self,
        in_chs: int,
        planes: int,
        stride: int = 1,
        *,
        shortcut: str = "B",
        drop_path_rate: float = 0.0,
        dilation: int = 1,
        first_dilation: int | None = None,
    ) -> None:
        super().__init__()
        first_dilation = first_dilation or dilation
        dilated = first_dilation != dilation
        out_chs = planes * self.expansion
        self.residual = shortcut != "none"
        self.conv1 = conv3x3(in_chs, planes, stride, dilation=first_dilation)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, out_chs, dilation=dilation)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.relu2 = nn.ReLU(inplace=True)
        self.downsample = make_shortcut(
            shortcut, in_chs, out_chs, stride, preact=False, dilated=dilated
        )
        self.drop_path = drop_path(drop_path_rate)

    def zero_init_last(self) -> None:
        # Goyal et al. 2017, section 5.1: gamma = 0 in the branch's last BN makes every
        # unit start as the identity, which eases optimisation early in training. A plain
        # net has no identity to fall back to, so it keeps its gamma.
        if self.residual:
            nn.init.zeros_(self.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.drop_path(self.bn2(self.conv2(out)))
        if self.residual:
            out = out + (x if self.downsample is None else self.downsample(x))
        return self.relu2(out)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (2015 paper, Fig. 5 right), grouped for ResNeXt.

    ``stride_on="1x1"`` is the 2015 paper's placement (the first 1x1 conv subsamples);
    ``"3x3"`` is "ResNet v1.5" (torchvision, timm, the ResNeXt paper): the 1x1 conv does
    not throw away three quarters of its input, which costs more MACs and gains about
    0.5% top-1 on ImageNet.
    ``width = floor(planes * base_width / 64) * groups`` (the ResNeXt "template" rule).
    """

    expansion = 4

    def __init__(
        self,
        in_chs: int,
        planes: int,
        stride: int = 1,
        *,
        groups: int = 1,
        base_width: int = 64,
        stride_on: str = "3x3",
        shortcut: str = "B",
        drop_path_rate: float = 0.0,
        dilation: int = 1,
        first_dilation: int | None = None,
    ) -> None:
        super().__init__()
        first_dilation = first_dilation or dilation
        dilated = first_dilation != dilation
        width = planes * base_width // 64 * groups
        out_chs = planes * self.expansion
        stride_1x1, stride_3x3 = (stride, 1) if stride_on == "1x1" else (1, stride)
        # The 3x3 holds the stride (v1.5) or comes after it (v1): see the module's doc.
        dilation_3x3 = dilation if stride_on == "1x1" else first_dilation
        self.residual = shortcut != "none"
        self.conv1 = conv1x1(in_chs, width, stride_1x1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride_3x3, groups, dilation_3x3)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, out_chs)
        self.bn3 = nn.BatchNorm2d(out_chs)
        self.relu1 = nn.ReLU(inplace=True)
        self.relu2 = nn.ReLU(inplace=True)
        self.relu3 = nn.ReLU(inplace=True)
        self.downsample = make_shortcut(
            shortcut, in_chs, out_chs, stride, preact=False, dilated=dilated
        )
        self.drop_path = drop_path(drop_path_rate)

    def zero_init_last(self) -> None:
        # See BasicBlock.zero_init_last (Goyal et al. 2017, section 5.1).
        if self.residual:
            nn.init.zeros_(self.bn3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.drop_path(self.bn3(self.conv3(out)))
        if self.residual:
            out = out + (x if self.downsample is None else self.downsample(x))
        return self.relu3(out)


class PreActBasic(nn.Module):
    """Pre-activation basic unit (2016 paper, Fig. 4e with two 3x3 convs).

    When the unit changes shape, its first BN-ReLU is shared by the branch and the
    projection; an identity shortcut adds the raw input, so the signal path from any unit
    to any later one is a pure sum (the paper's eq. 4).
    """

    expansion = 1

    def __init__(
        self,
        in_chs: int,
        planes: int,
        stride: int = 1,
        *,
        shortcut: str = "B",
        drop_path_rate: float = 0.0,
        dilation: int = 1,
        first_dilation: int | None = None,
    ) -> None:
        super().__init__()
        first_dilation = first_dilation or dilation
        dilated = first_dilation != dilation
        out_chs = planes * self.expansion
        self.residual = shortcut != "none"
        self.downsample = make_shortcut(
            shortcut, in_chs, out_chs, stride, preact=True, dilated=dilated
        )
        self.norm1 = BatchNormAct2d(in_chs)
        self.conv1 = conv3x3(in_chs, planes, stride, dilation=first_dilation)
        self.norm2 = BatchNormAct2d(planes)
        self.conv2 = conv3x3(planes, out_chs, dilation=dilation)
        self.drop_path = drop_path(drop_path_rate)

    def zero_init_last(self) -> None:
        # A pre-activation branch ends in a conv, not a BN: zero that conv instead, which
        # likewise starts the unit as the identity.
        if self.residual:
            nn.init.zeros_(self.conv2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_pre = self.norm1(x)
        out = self.drop_path(self.conv2(self.norm2(self.conv1(x_pre))))
        if not self.residual:
            return out
        return out + (x if self.downsample is None else self.downsample(x_pre))


class PreActBottleneck(nn.Module):
    """Pre-activation bottleneck unit (2016 paper, Fig. 1b), grouped for ResNeXt."""

    expansion = 4

    def __init__(
        self,
        in_chs: int,
        planes: int,
        stride: int = 1,
        *,
        groups: int = 1,
        base_width: int = 64,
        stride_on: str = "3x3",
        shortcut: str = "B",
        drop_path_rate: float = 0.0,
        dilation: int = 1,
        first_dilation: int | None = None,
    ) -> None:
        super().__init__()
        first_dilation = first_dilation or dilation
        dilated = first_dilation != dilation
        width = planes * base_width // 64 * groups
        out_chs = planes * self.expansion
        stride_1x1, stride_3x3 = (stride, 1) if stride_on == "1x1" else (1, stride)
        dilation_3x3 = dilation if stride_on == "1x1" else first_dilation  # as in Bottleneck
        self.residual = shortcut != "none"
        self.downsample = make_shortcut(
            shortcut, in_chs, out_chs, stride, preact=True, dilated=dilated
        )
        self.norm1 = BatchNormAct2d(in_chs)
        self.conv1 = conv1x1(in_chs, width, stride_1x1)
        self.norm2 = BatchNormAct2d(width)
        self.conv2 = conv3x3(width, width, stride_3x3, groups, dilation_3x3)
        self.norm3 = BatchNormAct2d(width)
        self.conv3 = conv1x1(width, out_chs)
        self.drop_path = drop_path(drop_path_rate)

    def zero_init_last(self) -> None:
        # See PreActBasic.zero_init_last.
        if self.residual:
            nn.init.zeros_(self.conv3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_pre = self.norm1(x)
        out = self.conv2(self.norm2(self.conv1(x_pre)))
        out = self.drop_path(self.conv3(self.norm3(out)))
        if not self.residual:
            return out
        return out + (x if self.downsample is None else self.downsample(x_pre))


BLOCK_TYPES: dict[str, type[nn.Module]] = {
    "basic": BasicBlock,
    "bottleneck": Bottleneck,
    "preact_basic": PreActBasic,
    "preact_bottleneck": PreActBottleneck,
}
