"""The degradation problem: deeper plain nets train worse, deeper residual nets do not.

He et al. 2015, section 4.2 and Figure 6: on CIFAR-10, plain-56 has a *higher training
error* than plain-20 throughout training (so it is an optimisation difficulty, not
overfitting), while ResNet-56 trains to a lower error than ResNet-20. Every net here gets
the same recipe, data order and seed, so the only difference is the shortcut.

The full setting follows the paper: no zero-init of the residual branches' last BN. The
quick one zero-initialises it (Goyal et al. 2017): each residual unit then starts as the
identity the paper's section 3.1 argues a solver can fall back to. Without it, 200
iterations are spent mostly on ResNet-56's start, when its 27 branches add up to large
outputs (docs/reproduction.md). A plain net has no branch to zero and keeps its init.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..engine.trainer import seed_everything
from ..models import count_params
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
    overall_verdict,
    pct,
    pyplot,
    subset_data,
    verdict_sentence,
)
from .runner import Experiment, Session, run
from .settings import FAMILIES, DegradationConfig


def model_names(depths: Sequence[int]) -> list[str]:
    return [f"{family}{d}" for family in FAMILIES for d in sorted(depths)]


def check_degradation(
    results: dict[str, dict[str, Any]],
    depths: Sequence[int] | None = None,
    *,
    tolerance: float = 0.01,
    num_classes: int | None = None,
    sample_size: int | None = None,
    chance_margin: float = CHANCE_MARGIN,
) -> dict[str, Any]:
    """Did the paper's claim hold? Compares the final training errors of the shallowest and
    the deepest net of each family.

    Two parts: the deeper plain net trains worse (higher training error) and the deeper
    residual net does not (its training error at most ``tolerance`` above the shallower
    one's). Each part is "held", "did not hold" or "inconclusive": inconclusive when both of
    its nets are at chance (accuracy within ``chance_margin`` of 1/``num_classes``), or when
    the difference that decides it is within two standard errors of the ``sample_size``
    images the training errors were measured on. ``verdict`` is "held" (both held),
    "inconclusive" (a part is, ``reasons`` say why), "did not hold" or "held only in
    part"; ``held`` is true for "held" alone.
    """
    if depths is None:
        depths = sorted(int(m.group(1)) for k in results if (m := re.fullmatch(r"plain(\d+)", k)))
    if len(set(depths)) < 2:
        raise ExperimentSettingsError(
            f"depths={list(depths)}: the claim compares at least two depths"
        )
    lo, hi = min(depths), max(depths)
    missing = [n for n in (f"{f}{d}" for f in FAMILIES for d in (lo, hi)) if n not in results]
    if missing:
        raise ExperimentSettingsError(f"no results for {', '.join(missing)}: run them first")
    err = {k: results[k]["train_error"] for k in (f"{f}{d}" for f in FAMILIES for d in (lo, hi))}
    plain_lo, plain_hi = err[f"plain{lo}"], err[f"plain{hi}"]
    res_lo, res_hi = err[f"resnet{lo}"], err[f"resnet{hi}"]
    plain_degrades = plain_hi > plain_lo
    residual_ok = res_hi <= res_lo + tolerance
    reasons: list[str] = []
    judge = _Judge(err, num_classes, chance_margin, sample_size, reasons)
    # The deeper plain net trains worse: decided by the difference of the two errors.
    plain_status, plain_noise = judge.plain(lo, hi)
    # The deeper residual net does not: refuted only by an excess over the tolerance that
    # the sample could not produce by itself.
    residual_status, res_noise = judge.residual(lo, hi, tolerance)
    verdict = overall_verdict([plain_status, residual_status])
    lines = [
        f"{MARKS[plain_status]} the deeper plain net trains worse: plain-{hi} "
        f"{pct(plain_hi)} vs plain-{lo} {pct(plain_lo)} final training error "
        f"({plain_status})",
        f"{MARKS[residual_status]} the deeper residual net does not: ResNet-{hi} "
        f"{pct(res_hi)} vs ResNet-{lo} {pct(res_lo)} (allowed: up to "
        f"{100 * tolerance:.1f} points above; {residual_status})",
    ]
    return {
        "held": verdict == "held",
        "verdict": verdict,
        "reasons": reasons,
        "plain_degrades": plain_degrades,
        "residual_no_degradation": residual_ok,
        "plain_status": plain_status,
        "residual_status": residual_status,
        "shallow": lo,
        "deep": hi,
        "tolerance": tolerance,
        "num_classes": num_classes,
        "sample_size": sample_size,
        "noise": {"plain": plain_noise, "residual": res_noise},
        "train_errors": err,
        "lines": lines,
    }


class _Judge:
    """The status of each part of the claim from the final training errors ``err``; why a
    part is inconclusive goes to ``reasons``."""

    def __init__(self, err: dict[str, float], num_classes: int | None, margin: float,
                 sample_size: int | None, reasons: list[str]) -> None:  # fmt: skip
        self.err, self.num_classes, self.margin = err, num_classes, margin
        self.sample_size, self.reasons = sample_size, reasons

    def chance(self, a: str, b: str) -> bool:
        err, n, margin = self.err, self.num_classes, self.margin
        if at_chance(err[a], n, margin) and at_chance(err[b], n, margin):
            self.reasons.append(chance_reason([a, b], [err[a], err[b]], n))
            return True
        return False

    def plain(self, lo: int, hi: int) -> tuple[str, float | None]:
        e_lo, e_hi = self.err[f"plain{lo}"], self.err[f"plain{hi}"]
        noise = noise_band(e_hi, e_lo, self.sample_size)
        if self.chance(f"plain{lo}", f"plain{hi}"):
            return "inconclusive", noise
        if noise is not None and abs(e_hi - e_lo) <= noise:
            what = f"the difference between plain-{hi} and plain-{lo}"
            self.reasons.append(noise_reason(what, e_hi - e_lo, noise, self.sample_size))
            return "inconclusive", noise
        return ("held" if e_hi > e_lo else "did not hold"), noise

    def residual(self, lo: int, hi: int, tolerance: float) -> tuple[str, float | None]:
        e_lo, e_hi = self.err[f"resnet{lo}"], self.err[f"resnet{hi}"]
        noise = noise_band(e_hi, e_lo, self.sample_size)
        excess = e_hi - e_lo - tolerance
        if self.chance(f"resnet{lo}", f"resnet{hi}"):
            return "inconclusive", noise
        if e_hi <= e_lo + tolerance:
            return "held", noise
        if noise is not None and excess <= noise:
            what = f"how far ResNet-{hi} exceeds ResNet-{lo} beyond the tolerance"
            self.reasons.append(noise_reason(what, excess, noise, self.sample_size))
            return "inconclusive", noise
        return "did not hold", noise


def plot_degradation(results: dict[str, dict[str, Any]], path: Path, title: str = "") -> Path:
    """The paper's Figure 6: plain nets left, residual nets right; training error thin and
    dashed, test error bold, against iterations."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    colors = ["tab:orange", "tab:blue", "tab:green", "tab:red", "tab:purple", "tab:brown"]
    top = 0.0
    for ax, family, label in zip(axes, FAMILIES, ("plain", "ResNet"), strict=True):
        names = sorted(
            (k for k in results if re.fullmatch(rf"{family}\d+", k)),
            key=lambda k: int(k[len(family) :]),
        )
        for i, name in enumerate(names):
            curve = results[name]["curve"]
            if not curve:
                continue
            color = colors[i % len(colors)]
            its = [p["iter"] for p in curve]
            depth = name[len(family) :]
            ax.plot(its, [100 * p["train_error"] for p in curve], "--", lw=1, color=color)
            ax.plot(
                its,
                [100 * p["test_error"] for p in curve],
                "-",
                lw=2.2,
                color=color,
                label=f"{label}-{depth}",
            )
            # Scale to the interesting part, not to the ~90% error of the untrained net.
            late = [p for p in curve if p["iter"] >= 0.1 * its[-1]] or curve
            top = max(top, *(100 * max(p["train_error"], p["test_error"]) for p in late))
        ax.set(xlabel="iterations", title=f"{label} nets")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(title="bold: test, dashed: train", fontsize=9, title_fontsize=8)
    axes[0].set_ylabel("error (%)")
    axes[0].set_ylim(0, min(100.0, 1.15 * top) if top else 100.0)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _report(
    out: Path, results: dict[str, Any], settings: dict[str, Any], claim: dict | None, meta: dict
) -> Path:
    lines = [
        "# Degradation: plain vs residual nets (He et al. 2015, Figure 6)",
        "",
        f"{settings['setting']} on `{settings['dataset']}`: "
        f"{settings['iters']} iterations of batch {settings['batch_size']}, SGD momentum 0.9, "
        f"weight decay {settings['weight_decay']}, lr {settings['lr']} divided by 10 at 50% "
        f"and 75% of the iterations (the paper: 32k and 48k of 64k), {settings['augmentation']}, "
        f"seed {settings['seed']} for every net, "
        + (
            "the residual branches' last BN zero-initialised (plain nets have none to zero)"
            if settings["zero_init_last"]
            else "no zero-init of the last BN"
        )
        + (
            f", lr / 10 for the first {settings['warmup_iters']} iterations (warm-up)"
            if settings.get("warmup_iters")
            else ""
        )
        + engine_phrase(settings)
        + ".",
        f"Training images: {settings['sizes']['train']}; training error measured on a fixed "
        f"subset of {settings['sizes']['train_eval']} of them (eval mode, no augmentation); "
        f"test error on {settings['sizes']['test']} test images; every "
        f"{settings['eval_every']} iterations.",
        "",
    ]
    rows = []
    for name, r in results.items():
        first = r.get("losses", [])[:10]
        rows.append(
            [
                name,
                r["depth"],
                f"{r['params']:,}",
                f"{sum(first) / len(first):.2f}" if first else "-",
                pct(r["train_error"]),
                pct(r["test_error"]),
                f"{r.get('wall_time_s', 0):.0f} s" + ("" if r.get("complete") else " (unfinished)"),
            ]
        )
    header = ["model", "depth", "params", "loss, first 10 iterations", "final train error",
              "final test error", "time"]  # fmt: skip
    lines += md_table(header, rows)
    lines += ["", "## The claim", ""]
    if claim is None:
        lines.append("Not checked: some nets have no results yet.")
    else:
        lines += [verdict_sentence(claim["verdict"], claim["reasons"]), ""]
        lines += [f"- {line}" for line in claim["lines"]]
        gains = []
        for d in settings["depths"]:
            plain, res = results.get(f"plain{d}"), results.get(f"resnet{d}")
            if plain and res:
                gains.append(f"depth {d}: {100 * (plain['train_error'] - res['train_error']):+.2f}")
        lines.append(
            "- what the shortcuts gain (plain minus ResNet final training error, points): "
            + ", ".join(gains)
        )
    lines += ["", "![degradation](degradation.png)", "", "## Machine", ""]
    lines += [f"- {k}: {v}" for k, v in meta["machine"].items()]
    lines.append(f"- total time: {meta['time_s']:.0f} s")
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


class Degradation(Experiment):
    name = "degradation"
    config = DegradationConfig

    def load(self, cfg: DegradationConfig, device: torch.device) -> SubsetData:
        return subset_data(cfg.dataset, data_dir=cfg.data_dir, train_size=cfg.train_size,
                           train_eval_size=cfg.train_eval_size, test_size=cfg.test_size,
                           batch_size=cfg.batch_size, seed=cfg.seed, device=device,
                           channels_last=cfg.channels_last)  # fmt: skip

    def settings(self, cfg: DegradationConfig, data: SubsetData) -> dict[str, Any]:
        settings = dict(
            dataset=cfg.dataset, depths=list(cfg.depths), quick=cfg.quick, iters=cfg.iters,
            eval_every=cfg.eval_every, batch_size=cfg.batch_size, lr=cfg.lr,
            weight_decay=cfg.weight_decay, seed=cfg.seed, sizes=data.sizes,
            augmentation=data.augmentation, setting=cfg.setting_name, zero_init_last=cfg.zero_init,
        )  # fmt: skip
        if cfg.warmup_iters:
            settings["warmup_iters"] = cfg.warmup_iters
        return {**settings, **cfg.engine_settings()}

    def execute(self, session: Session, data: SubsetData) -> None:
        cfg = session.cfg
        recipe = session.recipe(iters=cfg.iters, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                warmup_iters=cfg.warmup_iters, eval_every=cfg.eval_every)  # fmt: skip
        for name, mcfg in cfg.model_configs().items():
            if session.results.get(name, {}).get("complete"):
                continue
            seed_everything(cfg.seed)  # the same initialisation stream for every net
            model = build(mcfg, data.info, zero_init_last=cfg.zero_init)
            entry = dict(depth=mcfg.depth, params=count_params(model), complete=False)
            run = session.train(name, model, data, recipe, entry)
            entry.update(run, complete=True)
            session.results[name] = entry
            session.save()

    def conclude(self, session: Session, data: SubsetData) -> dict[str, Any]:
        claim = check_degradation(session.results, session.cfg.depths,
                                  tolerance=session.cfg.tolerance,
                                  num_classes=data.info.num_classes,
                                  sample_size=data.train_eval.dataset_size)  # fmt: skip
        return {"claim": claim}

    def finish(
        self, session: Session, data: SubsetData, found: dict[str, Any], meta: dict[str, Any]
    ) -> dict[str, Any]:
        cfg, results, claim, out = session.cfg, session.results, found["claim"], session.out
        title = f"{', '.join(cfg.model_configs())} on {cfg.dataset} ({cfg.iters} iterations)"
        figure = plot_degradation(results, out / "degradation.png", title)
        report = _report(out, results, session.settings, claim, meta)
        summary = claim_summary(
            [
                f"{n}: train error {pct(r['train_error'])}, test error {pct(r['test_error'])}"
                for n, r in results.items()
            ],
            claim,
            report,
            figure,
        )
        return dict(report=str(report), figure=str(figure), summary=summary)


DEGRADATION = Degradation()


def run_degradation(
    output: str | os.PathLike = "runs/degradation",
    *,
    overwrite: bool = False,
    progress: bool = True,
    **options: Any,
) -> dict[str, Any]:
    """Train plain and residual CIFAR nets of ``depths`` alike; write ``results.json``,
    ``degradation.png`` and ``report.md`` to ``output``; return the results and the claim.

    ``options`` are :class:`DegradationConfig`'s fields (``quick=True``: its quick preset;
    None: the preset's value) and ``overrides`` (``KEY=VALUE`` strings). ``results.json``
    maps each model to ``{"train_error", "test_error", "curve": [...]}`` (errors are
    fractions) and is rewritten at every evaluation, so an interrupted run loses nothing:
    running again with the same settings continues with the unfinished nets.
    """
    return run(DEGRADATION, output, overwrite=overwrite, progress=progress, **options)
