"""Published sizes of the named nets, for side-by-side comparison with measured ones.

``exact`` entries are exact counts (torchvision's weight metadata; the CIFAR option-A nets,
which have a unique count); the others are the papers' rounded figures. MACs are
multiply-accumulates at the native input size, in billions.
"""

from __future__ import annotations

from typing import NamedTuple


class Published(NamedTuple):
    params: float | None
    gmacs: float | None
    exact: bool
    source: str


_TV = "torchvision weight metadata"
_R15 = "He et al. 2015"
_R16 = "He et al. 2016"
_X17 = "Xie et al. 2017"

PUBLISHED: dict[str, Published] = {
    "resnet18": Published(11_689_512, 1.814, True, _TV),
    "resnet34": Published(21_797_672, 3.664, True, _TV),
    "resnet50": Published(25_557_032, 4.089, True, _TV),
    "resnet101": Published(44_549_160, 7.801, True, _TV),
    "resnet152": Published(60_192_808, 11.514, True, _TV),
    "resnext50_32x4d": Published(25_028_904, 4.230, True, _TV),
    "resnext101_32x8d": Published(88_791_336, 16.414, True, _TV),
    "resnext101_64x4d": Published(83_455_272, 15.460, True, _TV),
    "wide_resnet50_2": Published(68_883_240, 11.398, True, _TV),
    "wide_resnet101_2": Published(126_886_696, 22.753, True, _TV),
    # The 2015 paper's Table 1 FLOPs (its stride-on-1x1 bottleneck).
    "resnet50_v1": Published(None, 3.8, False, _R15),
    "resnet101_v1": Published(None, 7.6, False, _R15),
    "resnet152_v1": Published(None, 11.3, False, _R15),
    "resnet20": Published(269_722, None, True, _R15),
    "resnet32": Published(464_154, None, True, _R15),
    "resnet44": Published(658_586, None, True, _R15),
    "resnet56": Published(853_018, None, True, _R15),
    "resnet110": Published(1_727_962, None, True, _R15),
    "resnet1202": Published(19_421_274, None, True, _R15),
    "resnet164_v2": Published(1.7e6, None, False, _R16),
    "resnet1001_v2": Published(10.2e6, None, False, _R16),
    "resnext29_8x64d": Published(34.4e6, None, False, _X17),
    "resnext29_16x64d": Published(68.1e6, None, False, _X17),
}
