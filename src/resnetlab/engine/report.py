"""Plots and the run report: curves.png, confusion.png, report.md."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..io import atomic_write_text


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# The right-hand panel of curves.png for the headline metrics of the dense tasks (in %).
METRIC_LABELS = {"test_map": "box mAP@[.5:.95]", "test_miou": "mIoU"}


def plot_curves(
    rows: list[dict[str, Any]],
    path: Path,
    title: str = "",
    eval_split: str = "test",
    metric: str = "test_top1",
) -> Path:
    """Train and evaluation loss, and top-1 error (%) against epoch; for another headline
    ``metric`` (``test_map``, ``test_miou``) that metric (%) instead of the error.

    The ``test_*`` metrics are those of the evaluation split, named in the legend as it is
    (``val`` for an image folder without a ``test/``).
    """
    plt = _pyplot()
    fig, (ax_loss, ax_err) = plt.subplots(1, 2, figsize=(10, 4))
    epochs = [r["epoch"] for r in rows]

    def points(key: str, scale) -> list[tuple[Any, float]]:
        return [(e, scale(r[key])) for e, r in zip(epochs, rows, strict=True)
                if r.get(key) is not None]  # fmt: skip

    for key, label, style in (("train_loss", "train", "--"), ("test_loss", eval_split, "-")):
        pts = points(key, float)
        if pts:
            ax_loss.plot(*zip(*pts, strict=True), style, marker="o", label=label)
    if metric == "test_top1":
        curves = (("train_acc", "train", "--"), ("test_top1", eval_split, "-"))
        scale, ylabel, panel = (lambda v: 100 * (1 - v)), "error (%)", "top-1 error"
    else:
        curves = ((metric, eval_split, "-"),)
        label = METRIC_LABELS.get(metric, metric)
        scale, ylabel, panel = (lambda v: 100 * v), f"{label} (%)", label
    for key, label, style in curves:
        pts = points(key, scale)
        if pts:
            ax_err.plot(*zip(*pts, strict=True), style, marker="o", label=label)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_err.set(xlabel="epoch", ylabel=ylabel, title=panel)
    for ax in (ax_loss, ax_err):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_confusion(confusion: list[list[int]], class_names: list[str], path: Path) -> Path:
    plt = _pyplot()
    import numpy as np

    conf = np.asarray(confusion, dtype=float)
    norm = conf / np.maximum(conf.sum(1, keepdims=True), 1)
    n = len(class_names)
    size = max(5, min(20, 0.5 * n + 2))
    fig, ax = plt.subplots(figsize=(size, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    if n <= 30:
        ax.set_xticks(range(n), class_names, rotation=90)
        ax.set_yticks(range(n), class_names)
        for i in range(n):
            for j in range(n):
                if conf[i, j]:
                    color = "white" if norm[i, j] > 0.5 else "black"
                    ax.text(
                        j, i, int(conf[i, j]), ha="center", va="center", fontsize=7, color=color
                    )
    ax.set(xlabel="predicted", ylabel="true", title="confusion matrix (row-normalised)")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def data_section(plan: str | None, scan: dict[str, Any]) -> list[str]:
    """report.md's "Data" section for an image folder: what was chosen, class counts,
    sizes, skipped files, warnings."""
    lines = ["## Data", ""]
    if plan:
        lines += [plan, ""]
    splits = list(scan["counts"])
    lines += ["| class | " + " | ".join(splits) + " |", "|---|" + "---:|" * len(splits)]
    for name in scan["classes"]:
        lines.append(
            f"| {name} | " + " | ".join(str(scan["counts"][s][name]) for s in splits) + " |"
        )
    lines += ["", f"Image sizes (longer side, {scan['sampled']} headers read):", ""]
    lines += ["| side | images |", "|---|---:|"]
    lines += [f"| {b} | {n} |" for b, n in scan["size_histogram"].items()]
    modes = ", ".join(f"{m} {n}" for m, n in scan["modes"].items())
    lines += ["", f"Modes: {modes}. Most common sizes: "
              + ", ".join(f"{k} ({v})" for k, v in list(scan["sizes"].items())[:5]) + "."]  # fmt: skip
    skipped = [f"{path}: {why}" for path, why in scan["unreadable"]]
    skipped += [f"{path}: no image extension" for path in scan["non_image_examples"]]
    if skipped:
        lines += ["", f"Skipped files ({len(scan['unreadable'])} unreadable, "
                  f"{scan['non_images']} without an image extension), e.g.:", ""]  # fmt: skip
        lines += [f"- {line}" for line in skipped[:10]]
    if scan["warnings"]:
        lines += ["", "Warnings:", ""] + [f"- {w}" for w in scan["warnings"]]
    return [*lines, ""]


def evaluation_line(summary: dict[str, Any]) -> str:
    """One sentence saying what the run's test metrics were measured on."""
    n = summary.get("eval_n")
    size = f" (n={n})" if n is not None else ""
    flip = "with" if summary.get("tta_flip") else "without"
    return f"Evaluated on the {summary['eval_split']} split{size}, {flip} test-time flip."


def write_report(
    run_dir: Path,
    summary: dict[str, Any],
    config: dict[str, Any],
    *,
    data_plan: str | None = None,
    data_scan: dict[str, Any] | None = None,
    weights_report: str | None = None,
) -> Path:
    import yaml

    lines = [f"# Run report: {config['model']} on {config['data']['spec']}", ""]
    if summary.get("eval_split"):
        lines += [evaluation_line(summary), ""]
    lines += ["| metric | value |", "|---|---|"]
    for key, value in summary.items():
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        lines.append(f"| {key} | {shown} |")
    lines += ["", "![curves](curves.png)", ""]
    if (run_dir / "predictions.png").exists():  # dense tasks: val images drawn
        lines += ["![predictions](predictions.png)", ""]
    if data_scan:
        lines += data_section(data_plan, data_scan)
    if weights_report:
        lines += ["## Weights", "", f"Started from `{config.get('weights')}`:", "", "```",
                  weights_report, "```", ""]  # fmt: skip
    lines += ["## Config", "", "```yaml"]
    lines += [yaml.safe_dump(config, sort_keys=False).rstrip(), "```", ""]
    path = run_dir / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path
