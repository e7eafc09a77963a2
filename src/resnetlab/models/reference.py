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


class PaperFigure(NamedTuple):
    """One published size of one named net.

    ``quantity`` is "params" (all parameters), "weights" (conv and fc weights only: what
    the pre-activation and ResNeXt papers' rounded counts agree with; BN scales and shifts
    and the fc bias left out) or "gmacs" (billions of multiply-accumulates, native input).
    """

    model: str
    quantity: str
    value: float
    exact: bool
    source: str
    note: str = ""


_R15_T1 = "He et al. 2015, Table 1"
_R15_T6 = "He et al. 2015, Table 6"
_W = "the paper's count matches conv/fc weights (no BN)"

# The papers' own rounded figures, beside the exact counts of PUBLISHED.
PAPER_EXTRA: tuple[PaperFigure, ...] = (
    PaperFigure("resnet18", "gmacs", 1.8, False, _R15_T1),
    PaperFigure("resnet34", "gmacs", 3.6, False, _R15_T1),
    PaperFigure("resnet20", "params", 0.27e6, False, _R15_T6),
    PaperFigure("resnet32", "params", 0.46e6, False, _R15_T6),
    PaperFigure("resnet44", "params", 0.66e6, False, _R15_T6),
    PaperFigure("resnet56", "params", 0.85e6, False, _R15_T6),
    PaperFigure("resnet110", "params", 1.7e6, False, _R15_T6),
    PaperFigure("resnet1202", "params", 19.4e6, False, _R15_T6),
    PaperFigure("resnet164_v2", "weights", 1.7e6, False, _R16, _W),
    PaperFigure("resnet1001_v2", "weights", 10.2e6, False, _R16, _W),
    PaperFigure("resnext29_8x64d", "weights", 34.4e6, False, _X17, _W),
    PaperFigure("resnext29_16x64d", "weights", 68.1e6, False, _X17, _W),
)


def paper_figures() -> list[PaperFigure]:
    """Every published figure: those of PUBLISHED (params, GMACs) and PAPER_EXTRA."""
    out = []
    for name, pub in PUBLISHED.items():
        if pub.params is not None:
            out.append(PaperFigure(name, "params", pub.params, pub.exact, pub.source))
        if pub.gmacs is not None:
            # torchvision's GFLOPS are given to 3 decimals: exact up to that rounding.
            out.append(PaperFigure(name, "gmacs", pub.gmacs, False, pub.source))
    return out + list(PAPER_EXTRA)
