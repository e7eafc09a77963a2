"""Distributed training on one CPU: one process vs two torchrun ranks, at equal global batch.

Trains the same model on the same data for the same number of steps, side by side in one
run: (a) ``python -m resnetlab train`` with batch B; (b) ``torchrun --standalone
--nproc-per-node 2`` with batch B/2 per rank, so that every step sees the same B images.
Both run with the CLI defaults (threads, loader workers, data pipeline), without an
OMP_NUM_THREADS of the caller's, so they measure what a user gets. Three kinds of data:

- an image folder of small PNGs written from Fashion-MNIST (train/ + val/ layout), read
  the way the CLI chooses by default;
- the same folder streamed from disk (``data.in_memory=false``): DataLoader decoding;
- the built-in in-memory ``fashion-mnist``, trained for as many steps as the folder runs
  (a subset of an epoch) and evaluated on its test set.

Reports the steady-state throughput (``steady_img_per_s`` of summary.json, all ranks
together), its ratio two ranks / one process, the wall time of each run (start-up, data
loading and evaluation included), and the final top-1 of each. Each round uses its own
seed (0, 1, ...), so the spread of top-1 over rounds shows the run-to-run noise.

    python benchmarks/ddp_cpu.py                        # print the table
    python benchmarks/ddp_cpu.py --rounds 2 --write     # and record it in BENCHMARKS.md
    python benchmarks/ddp_cpu.py --kinds builtin --epochs 2 --batch 128
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import benchmark_parser, command, markdown_table, parse_args, write_section  # noqa: E402

KINDS = ("folder", "streamed", "builtin")
LABELS = {
    "folder": "image folder (CLI defaults)",
    "streamed": "image folder, streamed (data.in_memory=false)",
    "builtin": "fashion-mnist, built-in in memory",
}
CPU_FLAGS = ("amx_int8", "avx512_bf16", "avx2")


def write_folder(root: Path, n_train: int, n_val: int) -> None:
    """Fashion-MNIST's first ``n_train`` + ``n_val`` training images as PNGs in class folders."""
    from PIL import Image

    from resnetlab.data import load_split

    images, labels, info = load_split("fashion-mnist", "train")
    names = [name.replace("/", "-") for name in info.class_names]
    for split, lo, hi in (("train", 0, n_train), ("val", n_train, n_train + n_val)):
        for i in range(lo, hi):
            folder = root / split / names[int(labels[i])]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i, 0].numpy(), mode="L").save(folder / f"{i:05d}.png")


def run_train(ranks: int, args: list[str], output: Path) -> dict:
    """One training run (``ranks`` torchrun processes, or a plain process for 1)."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env.setdefault("PYTHONWARNINGS", "ignore")
    launch = [sys.executable, "-m", "resnetlab"]
    if ranks > 1:
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                  f"--nproc-per-node={ranks}", "-m", "resnetlab"]  # fmt: skip
    cmd = [*launch, "train", *args, "--output", str(output), "--overwrite", "--quiet"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"training failed ({' '.join(cmd)}):\n{proc.stderr[-3000:]}")
    summary = json.loads((output / "summary.json").read_text())
    # A run of one step has no steady state: its mean throughput stands in.
    summary["img_per_s"] = summary["steady_img_per_s"] or summary["train_img_per_s"]
    chosen = next((ln for ln in proc.stderr.splitlines() if ln.startswith("distributed on")), "")
    return {"summary": summary, "wall": wall, "chosen": chosen}


def cpu_name() -> str:
    """The CPU's model name and which of :data:`CPU_FLAGS` it has (as lscpu reports them)."""
    name, flags = "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    has = [f for f in CPU_FLAGS if f in flags]
    return f"{name} ({', '.join(has) or 'none of ' + ', '.join(CPU_FLAGS)})"


def main(argv: list[str] | None = None) -> None:
    p = benchmark_parser(__doc__)
    p.add_argument("--model", default="resnet20", help="model name (resnet20)")
    p.add_argument("--model-args", default="{depth: 8}", help="model_args ({depth: 8})")
    p.add_argument("--batch", type=int, default=64, help="global batch B: B/ranks per rank (64)")
    p.add_argument("--epochs", type=int, default=3, help="epochs of the image folder (3)")
    p.add_argument("--train-images", type=int, default=2000)
    p.add_argument("--val-images", type=int, default=500)
    p.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds, seeds 0.. (2)")
    p.add_argument("--ranks", type=int, default=2, help="torchrun processes (2)")
    a = parse_args(p, argv)
    if a.batch % a.ranks:
        p.error(f"--batch {a.batch} does not split over {a.ranks} ranks; use a multiple")
    steps = a.epochs * (a.train_images // a.batch)
    results: dict[tuple[str, int], list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "fashion-png"
        write_folder(folder, a.train_images, a.val_images)
        common = ["--model", a.model, f"model_args={a.model_args}"]
        data = {
            "folder": ["--data", f"imagefolder:{folder}", "--epochs", str(a.epochs)],
            "streamed": ["--data", f"imagefolder:{folder}", "--epochs", str(a.epochs),
                         "data.in_memory=false"],
            "builtin": ["--data", "fashion-mnist", "--max-iters", str(steps)],
        }  # fmt: skip
        for r in range(a.rounds):
            for kind in a.kinds:
                for ranks in (1, a.ranks):
                    args = [*common, *data[kind], "--seed", str(r),
                            "--batch-size", str(a.batch // ranks)]  # fmt: skip
                    res = run_train(ranks, args, Path(tmp) / f"{kind}-{ranks}")
                    results.setdefault((kind, ranks), []).append(res)
                    s = res["summary"]
                    print(f"round {r + 1}, {kind}, {ranks} process(es): "
                          f"{s['img_per_s']:.0f} img/s, top-1 {100 * s['test_top1']:.1f}%,"
                          f" {s['threads']} thread(s), {s.get('loader_workers')} worker(s), "
                          f"{res['wall']:.0f} s")  # fmt: skip

    def speed(kind: str, ranks: int) -> float:
        return statistics.median(x["summary"]["img_per_s"] for x in results[kind, ranks])

    def top1(kind: str, ranks: int) -> str:
        return " / ".join(f"{100 * x['summary']['test_top1']:.1f}" for x in results[kind, ranks])

    def setting(kind: str, ranks: int) -> str:
        s = results[kind, ranks][0]["summary"]
        return f"{s['threads']} x {s.get('loader_workers', '?')}"

    two = a.ranks
    rows = []
    for kind in a.kinds:
        one_s, two_s = speed(kind, 1), speed(kind, two)
        wall = [statistics.median(x["wall"] for x in results[kind, n]) for n in (1, two)]
        rows.append([LABELS[kind], one_s, two_s, f"{two_s / one_s:.2f}x",
                     f"{wall[0]:.0f} / {wall[1]:.0f}", top1(kind, 1), top1(kind, two),
                     f"{setting(kind, 1)} / {setting(kind, two)}"])  # fmt: skip
    headers = ["data", "1 process img/s", f"{two} ranks img/s", f"{two} ranks / 1",
               "wall s (1 / 2)", "top-1 % 1 process", f"top-1 % {two} ranks",
               "threads x workers (1 / each rank)"]  # fmt: skip
    table = markdown_table(headers, rows)
    chosen = next((x["chosen"] for k in a.kinds for x in results[k, two] if x["chosen"]), "")
    print(table)
    ratios = ", ".join(f"{r[3]} ({r[0]})" for r in rows)
    body = (
        f"{a.model} model_args={a.model_args}, global batch {a.batch} ({a.batch // two} per "
        f"rank under `torchrun --standalone --nproc-per-node {two}`), CLI defaults otherwise; "
        f"the folder: {a.train_images} train / {a.val_images} val Fashion-MNIST PNGs, "
        f"{a.epochs} epochs; the built-in set: the same {steps} steps, test set of 10,000. "
        f"img/s: steady state (after the first step), all ranks together, median of "
        f"{a.rounds} alternating rounds; top-1: each round (seeds "
        f"{', '.join(str(r) for r in range(a.rounds))}). Threads x workers: summary.json's "
        f"`threads` and `loader_workers` (the workers the data layer is given; in-memory "
        f"loaders decode nothing per step and start none). The ranks chose: `{chosen}`. "
        f"Goal: {two} ranks >= 0.8x one process; got {ratios}. CPU: {cpu_name()}.\n\n{table}"
    )
    if a.write:
        write_section("ddp_cpu", "Distributed training on CPU: one process vs torchrun ranks",
                      body, command("ddp_cpu.py", argv))  # fmt: skip


if __name__ == "__main__":
    main()
