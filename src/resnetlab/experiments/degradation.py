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
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..engine.trainer import seed_everything
from ..models import count_params
from .common import (
    CHANCE_MARGIN,
    MARKS,
    ExperimentSettingsError,
    Recipe,
    at_chance,
    build,
    chance_reason,
    cifar_config,
    md_table,
    noise_band,
    noise_reason,
    overall_verdict,
    pct,
    prepare_output,
    pyplot,
    record_run,
    resolve_plan,
    setup,
    subset_data,
    train_tracked,
    verdict_sentence,
    write_json,
)

FAMILIES = ("plain", "resnet")
# The paper's setting (64k iterations of batch 128, lr 0.1 /10 at 32k and 48k) on the whole
# training set; the training error is measured on a fixed 10k subset of it.
FULL = dict(
    iters=64000,
    train_size=None,
    train_eval_size=10000,
    test_size=None,
    eval_every=1000,
    zero_init=False,
)
# About 10 minutes on two free cores: a 10k-image subset, 200 iterations per net, residual
# branches zero-initialised (see above).
QUICK = dict(
    iters=200,
    train_size=10000,
    train_eval_size=2000,
    test_size=1000,
    eval_every=40,
    zero_init=True,
)


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

    def chance(a: str, b: str) -> bool:
        if at_chance(err[a], num_classes, chance_margin) and at_chance(
            err[b], num_classes, chance_margin
        ):
            reasons.append(chance_reason([a, b], [err[a], err[b]], num_classes))
            return True
        return False

    # The deeper plain net trains worse: decided by the difference of the two errors.
    plain_noise = noise_band(plain_hi, plain_lo, sample_size)
    if chance(f"plain{lo}", f"plain{hi}"):
        plain_status = "inconclusive"
    elif plain_noise is not None and abs(plain_hi - plain_lo) <= plain_noise:
        plain_status = "inconclusive"
        what = f"the difference between plain-{hi} and plain-{lo}"
        reasons.append(noise_reason(what, plain_hi - plain_lo, plain_noise, sample_size))
    else:
        plain_status = "held" if plain_degrades else "did not hold"
    # The deeper residual net does not: refuted only by an excess over the tolerance that
    # the sample could not produce by itself.
    res_noise = noise_band(res_hi, res_lo, sample_size)
    excess = res_hi - res_lo - tolerance
    if chance(f"resnet{lo}", f"resnet{hi}"):
        residual_status = "inconclusive"
    elif residual_ok:
        residual_status = "held"
    elif res_noise is not None and excess <= res_noise:
        residual_status = "inconclusive"
        what = f"how far ResNet-{hi} exceeds ResNet-{lo} beyond the tolerance"
        reasons.append(noise_reason(what, excess, res_noise, sample_size))
    else:
        residual_status = "did not hold"
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
            f", lr / 10 for the first {settings['warmup_iters']} iterations (warm-up)."
            if settings.get("warmup_iters")
            else "."
        ),
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


def run_degradation(
    output: str | os.PathLike = "runs/degradation",
    *,
    dataset: str = "fashion-mnist",
    depths: Sequence[int] = (20, 56),
    quick: bool = False,
    iters: int | None = None,
    train_size: int | None = None,
    train_eval_size: int | None = None,
    test_size: int | None = None,
    eval_every: int | None = None,
    batch_size: int = 128,
    lr: float = 0.1,
    weight_decay: float = 1e-4,
    warmup_iters: int = 0,
    zero_init: bool | None = None,
    seed: int = 0,
    tolerance: float = 0.01,
    data_dir: str | None = None,
    device: str = "auto",
    threads: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Train plain and residual CIFAR nets of ``depths`` alike; write ``results.json``,
    ``degradation.png`` and ``report.md`` to ``output``; return the results and the claim.

    ``results.json`` maps each model to ``{"train_error", "test_error", "curve": [...]}``
    (errors are fractions) and is rewritten at every evaluation, so an interrupted run
    loses nothing: running again with the same settings continues with the unfinished nets.
    ``zero_init`` (None: the setting's, on for quick and off for full) zero-initialises the
    residual branches' last BN.
    """
    depths = sorted({int(d) for d in depths})
    if len(depths) < 2:
        raise ExperimentSettingsError(
            f"depths={depths}: give at least two depths to compare (e.g. 20 56)"
        )
    configs = {f"{f}{d}": cifar_config(f, d) for f in FAMILIES for d in depths}  # checks depths
    chosen = dict(
        iters=iters,
        train_size=train_size,
        train_eval_size=train_eval_size,
        test_size=test_size,
        eval_every=eval_every,
        zero_init=zero_init,
    )
    plan, setting = resolve_plan(quick, FULL, QUICK, chosen)
    # Checked before anything is loaded or written.
    recipe = Recipe(
        iters=plan["iters"],
        lr=lr,
        weight_decay=weight_decay,
        warmup_iters=warmup_iters,
        eval_every=plan["eval_every"],
    )
    dev = setup(device, threads, seed)
    start = time.perf_counter()
    data = subset_data(
        dataset,
        data_dir=data_dir,
        train_size=plan["train_size"],
        train_eval_size=plan["train_eval_size"],
        test_size=plan["test_size"],
        batch_size=batch_size,
        seed=seed,
        device=dev,
    )
    settings = dict(
        dataset=dataset,
        depths=depths,
        quick=quick,
        iters=plan["iters"],
        eval_every=plan["eval_every"],
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        seed=seed,
        sizes=data.sizes,
        augmentation=data.augmentation,
        setting=setting,
        zero_init_last=plan["zero_init"],
    )
    if warmup_iters:
        settings["warmup_iters"] = warmup_iters
    out = Path(output)
    results = prepare_output(out, settings, overwrite=overwrite, results="results.json")
    title = f"{', '.join(configs)} on {dataset} ({plan['iters']} iterations)"
    for name, cfg in configs.items():
        if results.get(name, {}).get("complete"):
            continue
        seed_everything(seed)  # the same initialisation stream for every net
        model = build(cfg, data.info, zero_init_last=plan["zero_init"])
        entry = dict(depth=cfg.depth, params=count_params(model), complete=False)

        def save(curve: list[dict[str, Any]], entry: dict = entry, name: str = name) -> None:
            entry.update(
                train_error=curve[-1]["train_error"],
                test_error=curve[-1]["test_error"],
                curve=curve,
            )
            results[name] = entry
            write_json(out / "results.json", results)

        run = train_tracked(
            model, data, recipe, device=dev, progress=progress, desc=name, on_point=save
        )
        entry.update(run, complete=True)
        results[name] = entry
        write_json(out / "results.json", results)
    claim = check_degradation(
        results,
        depths,
        tolerance=tolerance,
        num_classes=data.info.num_classes,
        sample_size=data.train_eval.dataset_size,
    )
    meta = record_run(out, dev, time.perf_counter() - start, claim=claim)
    figure = plot_degradation(results, out / "degradation.png", title)
    report = _report(out, results, settings, claim, meta)
    summary = "\n".join(
        [
            f"{n}: train error {pct(r['train_error'])}, test error {pct(r['test_error'])}"
            for n, r in results.items()
        ]
        + claim["lines"]
        + [verdict_sentence(claim["verdict"], claim["reasons"]).replace("**", "")]
        + [f"report: {report}  figure: {figure}"]
    )
    return dict(
        results=results,
        claim=claim,
        report=str(report),
        figure=str(figure),
        summary=summary,
        output=str(out),
    )
