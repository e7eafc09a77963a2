"""Time to accuracy: a training preset run end to end through the CLI, against its goal.

Runs ``python -m resnetlab train --config PRESET`` in a fresh process, then
``python -m resnetlab eval RUN --json`` (the figure a user gets; with the run's test-time-flip
setting, stated in the table), and reports that test top-1, the wall time with evaluation
excluded (process start, data loading and model set-up
included: the process's wall clock minus the trainer's own evaluation time), when the run
first reached the target accuracy, and the training throughput. Writes a table to
BENCHMARKS.md and a time-to-accuracy plot next to it (docs/figures/) with ``--write``; without
it, only prints (the plot goes into the run directory). KEY=VALUE overrides, anywhere on the
line, are passed to train.

    python benchmarks/time_to_accuracy.py configs/fashion_mnist_fast.yaml --target 93 --budget 300
    python benchmarks/time_to_accuracy.py configs/fashion_mnist_quality.yaml --target 95 --budget 1800
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    benchmark_parser,
    command,
    cpu_tier,
    markdown_table,
    parse_args,
    tier_key,
    write_section,
)

ROOT = Path(__file__).resolve().parent.parent


def run_preset(preset: Path, output: Path, overrides: list[str]) -> dict:
    cmd = [sys.executable, "-m", "resnetlab", "train", "--config", str(preset),
           "--output", str(output), "--overwrite", "--quiet", *overrides]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    summary = json.loads((output / "summary.json").read_text())
    rows = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    evaluated = subprocess.run([sys.executable, "-m", "resnetlab", "eval", str(output), "--json"],
                               check=True, capture_output=True, text=True)  # fmt: skip
    summary["eval"] = json.loads(evaluated.stdout)
    # What the process spent before the trainer's clock started (interpreter, imports).
    startup = wall - summary["wall_time_s"]
    return {"summary": summary, "rows": rows, "wall": wall, "startup": startup,
            "wall_no_eval": wall - summary["eval_time_s"]}  # fmt: skip


def plot(result: dict, target: float, budget: float, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if "test_top1" in r]
    xs = [result["startup"] + r["wall_s"] for r in rows]
    ys = [100 * r["test_top1"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(xs, ys, "o-", label="test top-1 after each epoch")
    ax.axhline(target, color="tab:green", ls="--", label=f"target {target:g}%")
    ax.axvline(budget, color="tab:red", ls=":", label=f"budget {budget:g} s")
    ax.set_xlabel("wall time, evaluation excluded (s)")
    ax.set_ylabel("test top-1 (%)")
    ax.set_ylim(max(min(ys) - 1, 0) if ys else 0, 100)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = benchmark_parser(__doc__)
    p.add_argument("preset", type=Path, help="a YAML preset under configs/")
    p.add_argument("--target", type=float, required=True, help="test top-1 goal, in percent")
    p.add_argument("--budget", type=float, required=True, help="wall-time goal, in seconds")
    p.add_argument("--output", type=Path, help="the run directory (default runs/<preset>)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="passed to train")
    a = parse_args(p, argv)
    if not a.preset.exists():
        p.error(f"no preset at {a.preset}; see configs/ for the presets")
    name = a.preset.stem
    output = a.output or ROOT / "runs" / name
    result = run_preset(a.preset, output, a.overrides)
    s = result["summary"]
    top1 = 100 * s["eval"]["top1"]
    tta = "flip" if s["eval"].get("tta_flip") else "none"
    reached = next((r for r in result["rows"] if r.get("test_top1", 0) * 100 >= a.target), None)
    to_target = f"{result['startup'] + reached['wall_s']:.0f} s (epoch {reached['epoch']})" if reached else "not reached"  # fmt: skip
    met = top1 >= a.target and result["wall_no_eval"] <= a.budget
    table = markdown_table(
        ["preset", "model", "epochs", "test top-1 % (resnetlab eval)", "TTA",
         "wall s (eval excluded)", "eval s", f"time to {a.target:g}%", "train img/s",
         "precision", "goal met"],
        [[name, s["model"], s["epochs"], f"{top1:.2f}", tta, result["wall_no_eval"],
          s["eval_time_s"], to_target, s["train_img_per_s"], s["precision"],
          f"{'yes' if met else 'no'} (>= {a.target:g}% in <= {a.budget:g} s)"]],
    )  # fmt: skip
    curve = ", ".join(f"{100 * r['test_top1']:.2f}" for r in result["rows"] if "test_top1" in r)
    # The committed figure is replaced only with the table, on --write; else it goes beside
    # the run.
    figures = ROOT / "docs" / "figures" if a.write else output
    key = f"time_to_accuracy_{name}_{tier_key()}"  # one section and plot per CPU tier
    figure = figures / f"{key}.png"
    plot(result, a.target, a.budget, figure, f"{name}: {s['model']} on {s['data']}")
    print(table)
    print(f"test top-1 after each epoch: {curve}")
    print(f"plot: {figure}" + ("" if a.write else " (--write records the table and the plot)"))
    body = (
        f"`{a.preset}` run end to end (`python -m resnetlab train --config {a.preset}`, a fresh "
        f"process: start-up {result['startup']:.1f} s, data loading and model set-up "
        f"included; the {s['eval_time_s']:.1f} s of evaluation excluded). Test top-1 after "
        f"each epoch: {curve}. Plot: docs/figures/{figure.name}.\n\n{table}"
    )
    if a.write:
        cmd = command("time_to_accuracy.py", argv)
        write_section(key, f"Time to accuracy: {name} ({cpu_tier()})", body, cmd)


if __name__ == "__main__":
    main()
