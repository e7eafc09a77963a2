"""Cardinality vs depth and width at equal complexity (Xie et al. 2017, Tables 2-4).

The ResNeXt paper's claim: with the number of multiply-accumulates held fixed, raising
the cardinality C (parallel paths, i.e. groups of the 3x3 conv) gives a lower error than
making the net deeper or its bottlenecks wider. Here, on a small scale: the ResNeXt-29
trunk (3 stages of 3 bottlenecks) at a quarter of its width (stem 16, planes 16/32/64),
whose C=1, d=16 form "ResNet-29 1x16d" sets the budget. Every variant's width per group
d is searched so that its MACs, measured with hooks on the built module, match
``budget`` times the baseline's:

* ResNet-D 1xd for other depths D (deeper and narrower, shallower and wider);
* ResNeXt-29 Cxd for C = 2, 4, 8 (more paths, each narrower).

All train with the same recipe (the paper's CIFAR one: Nesterov SGD, lr 0.1, weight decay
5e-4, lr x0.1 at 50% and 75%), data order and seed.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import ModelConfig, layers_for_depth
from ..engine.trainer import seed_everything
from ..models import count_params, create_model, get_config, model_info
from ..models.blocks import Bottleneck
from .common import (
    CHANCE_MARGIN,
    MARKS,
    ExperimentSettingsError,
    SubsetData,
    at_chance,
    build,
    chance_reason,
    claim_summary,
    engine_phrase,
    md_table,
    noise_band,
    noise_reason,
    pct,
    pyplot,
    subset_data,
    verdict_sentence,
)
from .runner import Experiment, Session, run
from .settings import CardinalityConfig

# The ResNeXt-29 trunk at a quarter width; C=1 and base_width=64 make it a plain bottleneck
# ResNet ("1x16d": 16 channels in the first stage's 3x3 conv).
BASE = ModelConfig(
    block="bottleneck",
    layers=(3, 3, 3),
    widths=(16, 32, 64),
    stem="cifar",
    stem_width=16,
    shortcut="B",
    groups=1,
    base_width=64,
    num_classes=10,
    zero_init_last=False,
)


def group_width(cfg: ModelConfig) -> int:
    """d: the channels of one group of the first stage's 3x3 conv."""
    return cfg.widths[0] * cfg.base_width // 64


def variant_key(cfg: ModelConfig) -> str:
    family = "resnext" if cfg.groups > 1 else "resnet"
    return f"{family}{cfg.depth}_{cfg.groups}x{group_width(cfg)}d"


def variant_label(cfg: ModelConfig) -> str:
    family = "ResNeXt" if cfg.groups > 1 else "ResNet"
    return f"{family}-{cfg.depth} {cfg.groups}×{group_width(cfg)}d"


@functools.lru_cache(maxsize=1024)
def measure_macs(cfg: ModelConfig, input_size: tuple[int, int, int]) -> int:
    """MACs of ``cfg`` for one image of ``input_size``, counted on the meta device."""
    with torch.device("meta"):
        model = create_model(cfg, in_chans=input_size[0])
    return model_info(model, input_size)["macs"]


def match_macs(
    cfg: ModelConfig, target: float, input_size: tuple[int, int, int]
) -> tuple[ModelConfig, int]:
    """``cfg`` with the ``base_width`` whose MACs come closest to ``target``.

    MACs never decrease with the width, so a bisection over integer widths finds it.
    """
    lo = max(1, math.ceil(64 / min(cfg.widths)))  # at least one channel per group everywhere
    hi = lo
    while measure_macs(cfg.replace(base_width=hi), input_size) < target:
        hi *= 2
        if hi > 1 << 16:
            raise ExperimentSettingsError(
                f"no width of {variant_key(cfg)} reaches {target:.3g} MACs"
            )
    while lo < hi:  # the smallest width with MACs >= target
        mid = (lo + hi) // 2
        if measure_macs(cfg.replace(base_width=mid), input_size) >= target:
            hi = mid
        else:
            lo = mid + 1
    options = [w for w in (lo - 1, lo) if w >= max(1, math.ceil(64 / min(cfg.widths)))]
    scored = [
        (abs(measure_macs(cfg.replace(base_width=w), input_size) - target), w) for w in options
    ]
    best = min(scored)[1]
    return cfg.replace(base_width=best), measure_macs(cfg.replace(base_width=best), input_size)


def cardinality_variants(
    input_size: tuple[int, int, int],
    *,
    budget: float = 1.0,
    depths: Sequence[int] = (20, 56),
    cardinalities: Sequence[int] = (2, 4, 8),
    num_classes: int = 10,
) -> list[dict[str, Any]]:
    """The variants compared: each a dict with key, label, role, config, macs, params and
    the relative MAC difference to the budget (the baseline's MACs times ``budget``)."""
    if budget <= 0:
        raise ExperimentSettingsError(
            f"budget={budget}: expected a positive multiple of the baseline's MACs"
        )
    base = BASE.replace(num_classes=num_classes, in_chans=input_size[0])
    base_macs = measure_macs(base, input_size)
    target = budget * base_macs
    plan: list[tuple[str, ModelConfig]] = []
    for depth in sorted({29, *depths}):
        layers = layers_for_depth(depth, block="bottleneck", stem="cifar")
        if depth == 29:
            role = "baseline" if budget == 1 else "wider"
        else:
            role = "deeper" if depth > 29 else "shallower"
        plan.append((role, base.replace(layers=layers)))
    for c in sorted(set(cardinalities)):
        if c < 2:
            raise ExperimentSettingsError(
                f"cardinalities={list(cardinalities)}: expected values >= 2"
            )
        plan.append(("cardinality", base.replace(groups=c)))
    variants = []
    if budget != 1:
        variants.append(dict(role="reference (1x budget)", config=base, macs=base_macs))
    for role, cfg in plan:
        if role == "baseline":
            matched, macs = cfg, base_macs
        else:
            matched, macs = match_macs(cfg, target, input_size)
        variants.append(dict(role=role, config=matched, macs=macs))
    for v in variants:
        cfg = v["config"]
        with torch.device("meta"):
            v["params"] = count_params(create_model(cfg, in_chans=input_size[0]))
        v.update(key=variant_key(cfg), label=variant_label(cfg), macs_diff=v["macs"] / target - 1.0)
    return variants


def block_complexity() -> list[dict[str, Any]]:
    """The ResNeXt paper's Table 2: the conv2 bottleneck (256 -> 256 channels) at C x d =
    1x64, 2x40, 4x24, 8x14, 32x4 keeps ~70k parameters; and whole ResNeXt-50 nets so built."""
    rows = []
    for c, d in ((1, 64), (2, 40), (4, 24), (8, 14), (32, 4)):
        block = Bottleneck(256, 64, groups=c, base_width=d)
        conv_params = sum(
            m.weight.numel() for m in block.modules() if isinstance(m, torch.nn.Conv2d)
        )
        with torch.device("meta"):
            net = create_model(get_config("resnext50_32x4d", groups=c, base_width=d))
        info = model_info(net)
        rows.append(
            dict(
                cardinality=c,
                width=d,
                block_params=conv_params,
                width_of_3x3=c * d,
                net_params=info["params"],
                net_gmacs=info["macs"] / 1e9,
            )
        )
    return rows


def _versus(
    x: dict[str, Any], r: dict[str, Any], what: str, num_classes: int | None, margin: float
) -> dict[str, Any]:
    """Is C>1 net ``x`` better than C=1 net ``r`` (test error), and by more than twice the
    standard error of the difference (binomial, from the size of the test sample)? Neither
    when both are at chance or the difference is within that noise: inconclusive."""
    ex, er = x["test_error"], r["test_error"]
    n = x["test_n"]
    band = noise_band(ex, er, n) or 0.0
    se = band / 2
    held, significant = ex < er, abs(er - ex) > band
    if at_chance(ex, num_classes, margin) and at_chance(er, num_classes, margin):
        status = "inconclusive"
        reason = chance_reason([x["label"], r["label"]], [ex, er], num_classes)
    elif not significant:
        status = "inconclusive"
        reason = noise_reason(f"{what}: the difference", er - ex, band, n)
    else:
        status, reason = ("held" if held else "did not hold"), None
    line = (
        f"{MARKS[status]} {what}: {x['label']} {pct(ex)} vs {r['label']} {pct(er)} "
        f"test error ({status}; the difference "
        f"{'exceeds' if significant else 'is within'} two standard errors of the test sample, "
        f"{200 * se:.2f} points; the spread between seeds is not measured)"
    )
    return dict(
        held=status == "held",
        status=status,
        reason=reason,
        significant=significant,
        standard_error=se,
        line=line,
    )


def check_cardinality(
    results: dict[str, dict[str, Any]],
    *,
    num_classes: int | None = None,
    chance_margin: float = CHANCE_MARGIN,
) -> dict[str, Any]:
    """Did the best higher-cardinality net beat the best C=1 net (test error) at equal MACs?

    Held only when the margin exceeds twice the standard error of the difference, the
    least a difference must exceed to mean anything (differences between seeds and
    schedules can be larger still); within it, or with both nets at chance (accuracy
    within ``chance_margin`` of 1/``num_classes``, by default the classes of the results'
    configs), the check is inconclusive and ``reasons`` say why. ``equal_depth``: how the
    best C>1 net did against the C=1 net of its own depth (the ResNeXt paper's Table 3
    comparison).
    """
    compared = {
        k: r
        for k, r in results.items()
        if r.get("complete") and not r["role"].startswith("reference")
    }
    resnext = {k: r for k, r in compared.items() if r["groups"] > 1}
    resnet = {k: r for k, r in compared.items() if r["groups"] == 1}
    if not resnext or not resnet:
        raise ExperimentSettingsError(
            "the check needs finished results of both C=1 and C>1 variants"
        )
    if num_classes is None:
        num_classes = next(
            (r["config"]["num_classes"] for r in compared.values() if "config" in r), None
        )
    best_x = min(resnext, key=lambda k: resnext[k]["test_error"])
    best_r = min(resnet, key=lambda k: resnet[k]["test_error"])
    overall = _versus(
        resnext[best_x],
        resnet[best_r],
        "best higher-cardinality vs best C=1 net",
        num_classes,
        chance_margin,
    )
    lines = [overall["line"]]
    baseline = next((r for r in resnet.values() if r["role"] == "baseline"), None)
    equal_depth = None
    if baseline is not None and baseline is not resnet[best_r]:
        equal_depth = _versus(
            resnext[best_x],
            baseline,
            "at equal depth, vs the C=1 baseline",
            num_classes,
            chance_margin,
        )
        lines.append(equal_depth["line"])
    ranking = sorted(compared, key=lambda k: compared[k]["test_error"])
    return dict(
        held=overall["held"],
        verdict=overall["status"],
        reasons=[overall["reason"]] if overall["reason"] else [],
        significant=overall["significant"],
        best_resnext=best_x,
        best_resnet=best_r,
        standard_error=overall["standard_error"],
        equal_depth=equal_depth,
        ranking=ranking,
        lines=lines,
    )


def plot_cardinality(results: dict[str, dict[str, Any]], path: Path, title: str = "") -> Path:
    plt = pyplot()
    fig, (ax_bar, ax_curve) = plt.subplots(1, 2, figsize=(13, 4.6))
    done = {k: r for k, r in results.items() if r.get("complete")}
    names = list(done)
    xs = range(len(names))
    colors = [
        "tab:gray"
        if r["role"].startswith("reference")
        else ("tab:blue" if r["groups"] == 1 else "tab:red")
        for r in done.values()
    ]
    ax_bar.bar(
        xs,
        [100 * done[n]["test_error"] for n in names],
        color=colors,
        alpha=0.85,
        label="test error",
    )
    ax_bar.scatter(
        xs,
        [100 * done[n]["train_error"] for n in names],
        color="black",
        marker="_",
        s=300,
        label="training error",
        zorder=3,
    )
    for x, n in zip(xs, names, strict=True):
        r = done[n]
        ax_bar.text(
            x,
            100 * r["test_error"],
            f"{r['macs'] / 1e6:.1f}M MACs\n{r['params'] / 1e3:.0f}k params",
            ha="center",
            va="bottom",
            fontsize=7,
        )
    ax_bar.set_xticks(
        list(xs), [done[n]["label"] for n in names], rotation=25, ha="right", fontsize=8
    )
    if names:
        ax_bar.set_ylim(0, 1.25 * max(100 * done[n]["test_error"] for n in names))
    ax_bar.set(ylabel="error (%)", title="final error (blue: C=1, red: C>1)")
    ax_bar.grid(alpha=0.3, axis="y")
    ax_bar.legend(fontsize=8)
    for n in names:
        curve = done[n]["curve"]
        ls = "-" if done[n]["groups"] > 1 else "--"
        ax_curve.plot(
            [p["iter"] for p in curve],
            [100 * p["test_error"] for p in curve],
            ls,
            lw=1.6,
            label=done[n]["label"],
        )
    ax_curve.set(xlabel="iterations", ylabel="test error (%)", title="test error while training")
    late = [100 * p["test_error"] for n in names for p in done[n]["curve"][1:]]
    if late:
        ax_curve.set_ylim(0, min(100.0, 1.15 * max(late)))
    ax_curve.grid(alpha=0.3)
    ax_curve.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _report(out: Path, results: dict, settings: dict, claim: dict | None, meta: dict) -> Path:
    lines = [
        "# Cardinality vs depth and width at equal complexity (Xie et al. 2017)",
        "",
        f"{settings['setting']} on `{settings['dataset']}`"
        f": {settings['iters']} iterations of batch {settings['batch_size']}, Nesterov SGD "
        f"lr {settings['lr']}, weight decay {settings['weight_decay']}, lr x0.1 at 50% and "
        f"75%{engine_phrase(settings)}, {settings['augmentation']}, seed {settings['seed']} "
        "for every net. Training images: "
        f"{settings['sizes']['train']}; training error on {settings['sizes']['train_eval']} "
        f"of them, test error on {settings['sizes']['test']} test images.",
        f"Budget: {settings['budget']} x the MACs of ResNet-29 1×16d (the ResNeXt-29 trunk at "
        "a quarter width); every other variant's width per group is searched to match it.",
        "",
    ]
    rows = []
    for r in results.values():
        rows.append(
            [
                r["label"],
                r["role"],
                f"{r['macs'] / 1e6:.2f}M",
                f"{100 * r['macs_diff']:+.1f}%",
                f"{r['params']:,}",
                pct(r.get("train_error")),
                pct(r.get("test_error")),
                f"{r.get('wall_time_s', 0):.0f} s" + ("" if r.get("complete") else " (unfinished)"),
            ]
        )
    header = ["model", "role", "MACs", "vs budget", "params", "train error", "test error", "time"]
    lines += md_table(header, rows)
    lines += ["", "## The claim", ""]
    if claim is None:
        lines.append("Not checked: some variants have no results yet.")
    else:
        lines += [verdict_sentence(claim["verdict"], claim["reasons"]), ""]
        lines += [f"- {line}" for line in claim["lines"]]
        ranked = ", ".join(results[k]["label"] for k in claim["ranking"])
        lines.append(f"- ranking by test error (best first): {ranked}")
    lines += [
        "",
        "![cardinality](cardinality.png)",
        "",
        "## Equal complexity in the paper's own template (Table 2)",
        "",
        "The conv2 bottleneck (256 channels in and out) at the paper's C×d pairs, and the "
        "ResNeXt-50 built from them (224x224, measured):",
        "",
    ]
    rows = [
        [
            f"{b['cardinality']}×{b['width']}d",
            b["width_of_3x3"],
            f"{b['block_params']:,}",
            f"{b['net_params'] / 1e6:.2f}M",
            f"{b['net_gmacs']:.2f}",
        ]
        for b in settings["block_table"]
    ]
    lines += md_table(
        ["C×d", "3x3 width", "block conv params (paper: ~70k)", "ResNeXt-50 params", "GMACs"], rows
    )
    lines += ["", "## Machine", ""]
    lines += [f"- {k}: {v}" for k, v in meta["machine"].items()]
    lines.append(f"- total time: {meta['time_s']:.0f} s")
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class CardinalityData:
    data: SubsetData
    variants: list[dict[str, Any]]


class Cardinality(Experiment):
    name = "cardinality"
    config = CardinalityConfig

    def load(self, cfg: CardinalityConfig, device: torch.device) -> CardinalityData:
        data = subset_data(cfg.dataset, data_dir=cfg.data_dir, train_size=cfg.train_size,
                           train_eval_size=cfg.train_eval_size, test_size=cfg.test_size,
                           batch_size=cfg.batch_size, seed=cfg.seed, device=device,
                           channels_last=cfg.channels_last)  # fmt: skip
        info = data.info
        input_size = (info.model_channels, info.image_size, info.image_size)
        variants = cardinality_variants(input_size, budget=cfg.budget, depths=cfg.depths,
                                        cardinalities=cfg.cardinalities,
                                        num_classes=info.num_classes)  # fmt: skip
        return CardinalityData(data, variants)

    def settings(self, cfg: CardinalityConfig, data: CardinalityData) -> dict[str, Any]:
        return dict(
            dataset=cfg.dataset, budget=cfg.budget, depths=sorted(cfg.depths),
            cardinalities=sorted(cfg.cardinalities), quick=cfg.quick, iters=cfg.iters,
            eval_every=cfg.eval_every, batch_size=cfg.batch_size, lr=cfg.lr,
            weight_decay=cfg.weight_decay, seed=cfg.seed, sizes=data.data.sizes,
            augmentation=data.data.augmentation, setting=cfg.setting_name,
            **cfg.engine_settings(),
        )  # fmt: skip

    def execute(self, session: Session, data: CardinalityData) -> None:
        cfg, subsets = session.cfg, data.data
        recipe = session.recipe(iters=cfg.iters, lr=cfg.lr, nesterov=True,
                                weight_decay=cfg.weight_decay, eval_every=cfg.eval_every)  # fmt: skip
        for v in data.variants:
            key, mcfg = v["key"], v["config"]
            if session.results.get(key, {}).get("complete"):
                continue
            seed_everything(cfg.seed)
            model = build(mcfg, subsets.info)
            entry = dict(
                label=v["label"], role=v["role"], groups=mcfg.groups, width=group_width(mcfg),
                depth=mcfg.depth, macs=v["macs"], macs_diff=v["macs_diff"], params=v["params"],
                config=mcfg.to_dict(), test_n=subsets.test.dataset_size, complete=False,
            )  # fmt: skip
            run = session.train(key, model, subsets, recipe, entry)
            run.pop("losses")
            entry.update(run, complete=True)
            session.results[key] = entry
            session.save()

    def conclude(self, session: Session, data: CardinalityData) -> dict[str, Any]:
        claim = check_cardinality(session.results, num_classes=data.data.info.num_classes)
        return {"claim": claim}

    def finish(
        self, session: Session, data: CardinalityData, found: dict[str, Any], meta: dict[str, Any]
    ) -> dict[str, Any]:
        cfg, results, claim, out = session.cfg, session.results, found["claim"], session.out
        session.settings["block_table"] = block_complexity()
        title = f"equal-MACs variants on {cfg.dataset} ({cfg.iters} iterations)"
        figure = plot_cardinality(results, out / "cardinality.png", title)
        report = _report(out, results, session.settings, claim, meta)
        summary = claim_summary(
            [
                f"{r['label']} ({r['macs'] / 1e6:.1f}M MACs, {100 * r['macs_diff']:+.1f}%): "
                f"test error {pct(r['test_error'])}"
                for r in results.values()
            ],
            claim,
            report,
            figure,
        )
        return dict(report=str(report), figure=str(figure), summary=summary)


CARDINALITY = Cardinality()


def run_cardinality(
    output: str | os.PathLike = "runs/cardinality",
    *,
    overwrite: bool = False,
    progress: bool = True,
    **options: Any,
) -> dict[str, Any]:
    """Train the matched-MACs variants of :func:`cardinality_variants`; write
    ``results.json`` (after every evaluation), ``cardinality.png`` and ``report.md``.

    ``options`` are :class:`CardinalityConfig`'s fields (``quick=True``: its quick preset;
    None: the preset's value) and ``overrides`` (``KEY=VALUE`` strings).
    """
    return run(CARDINALITY, output, overwrite=overwrite, progress=progress, **options)
