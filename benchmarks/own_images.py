"""A folder of your own small images against the built-in loader, on the same images.

Writes Fashion-MNIST's first ``--train`` training and ``--val`` test images as PNG files in
``DIR/train/<class>/`` and ``DIR/val/<class>/``, then trains, side by side in one run,
``resnetlab train --model resnet20 --data imagefolder:DIR --epochs 30`` with no other option
(the folder chooses its own pipeline) and the same model on the same images through the
built-in in-memory loader (``--data fashion-mnist:train=N,test=M``), each in a fresh
process. Reports test top-1 on the same held-out images, training img/s and their ratio
(goal: the folder >= 0.8x the built-in loader's img/s, accuracy within 1 point). A last
row times a few steps of the ImageNet pipeline at 224 px (what a folder got before it chose
its own), for its img/s only.

    python benchmarks/own_images.py                       # 2,000 / 500 images, 30 epochs
    python benchmarks/own_images.py --seeds 0 1 --write   # two seeds, record in BENCHMARKS.md
    python benchmarks/own_images.py --epochs 3 --train 500 --val 200   # a quick look
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import benchmark_parser, command, markdown_table, parse_args, write_section  # noqa: E402


def write_folder(root: Path, n_train: int, n_val: int) -> Path:
    """Fashion-MNIST's first images as 28x28 gray PNGs in ImageFolder layout."""
    from PIL import Image

    from resnetlab.data import CATALOG, load_split

    names = [n.replace("/", "-") for n in CATALOG["fashion-mnist"].class_names]
    for split, source, n in (("train", "train", n_train), ("val", "test", n_val)):
        images, labels, _ = load_split("fashion-mnist", source)
        for i in range(n):
            folder = root / split / names[int(labels[i])]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i, 0].numpy(), mode="L").save(folder / f"{i:05d}.png")
    return root


def train(output: Path, *args: str) -> dict:
    cmd = [sys.executable, "-m", "resnetlab", "train", "--output", str(output), "--overwrite",
           "--quiet", *args]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    summary = json.loads((output / "summary.json").read_text())
    plan = next((line for line in proc.stderr.splitlines() if line.startswith("image folder:")), "")
    return {**summary, "process_s": time.perf_counter() - start, "plan": plan}


def main(argv: list[str] | None = None) -> None:
    p = benchmark_parser(__doc__)
    p.add_argument("--train", type=int, default=2000, help="training images (2000)")
    p.add_argument("--val", type=int, default=500, help="held-out images (500)")
    p.add_argument("--epochs", type=int, default=30, help="(30)")
    p.add_argument("--model", default="resnet20", help="(resnet20)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="one pair of runs each")
    p.add_argument("--workdir", type=Path, help="where the folder and runs go (a temp dir)")
    a = parse_args(p, argv)
    work = a.workdir or Path(tempfile.mkdtemp(prefix="own-images-"))
    folder = write_folder(work / "images", a.train, a.val)
    builtin = f"fashion-mnist:train={a.train},test={a.val}"
    runs: dict[str, list[dict]] = {"folder": [], "builtin": []}
    for seed in a.seeds:
        common = ["--model", a.model, "--epochs", str(a.epochs)]
        if seed:
            common += ["--seed", str(seed)]
        runs["folder"].append(
            train(work / f"folder-{seed}", *common, "--data", f"imagefolder:{folder}")
        )
        runs["builtin"].append(train(work / f"builtin-{seed}", *common, "--data", builtin))
    old = train(work / "imagenet-pipeline", "--model", a.model, "--data", f"imagefolder:{folder}",
                "--max-iters", "4", "data.pipeline=imagenet", "eval_every=0")  # fmt: skip

    def mean(kind: str, key: str) -> float:
        return statistics.mean(r[key] for r in runs[kind])

    rows = []
    for kind, label in (("folder", f"imagefolder:DIR ({a.train:,} + {a.val:,} PNGs)"),
                        ("builtin", builtin)):  # fmt: skip
        accs = ", ".join(f"{100 * r['test_top1']:.2f}" for r in runs[kind])
        rows.append([label, accs, f"{100 * mean(kind, 'test_top1'):.2f}",
                     mean(kind, "train_img_per_s"), mean(kind, "process_s"),
                     runs[kind][0]["precision"]])  # fmt: skip
    rows.append(["imagefolder:DIR, data.pipeline=imagenet (224 px), 4 steps", "–", "–",
                 old["train_img_per_s"], old["process_s"], old["precision"]])  # fmt: skip
    table = markdown_table(
        ["data", "top-1 % per seed", "mean top-1 %", "train img/s", "process s", "precision"],
        rows,
    )
    speed = mean("folder", "train_img_per_s") / mean("builtin", "train_img_per_s")
    gap = 100 * (mean("folder", "test_top1") - mean("builtin", "test_top1"))
    verdict = (
        f"Folder vs built-in loader: **{speed:.2f}x the img/s** (goal >= 0.8x), accuracy "
        f"**{gap:+.2f} points** (goal within 1). The ImageNet pipeline a folder used to get ran "
        f"at {old['train_img_per_s'] / mean('folder', 'train_img_per_s'):.2f}x the chosen "
        f"pipeline's img/s. The folder run printed: `{runs['folder'][0]['plan']}`"
    )
    print(table)
    print(verdict)
    if a.write:
        body = (
            f"`resnetlab train --model {a.model} --epochs {a.epochs} --data imagefolder:DIR` with "
            f"no other option, against `--data {builtin}` (the same images through the built-in "
            f"loader), seeds {a.seeds}, each run a fresh process, one after the other. Top-1 on "
            f"the same {a.val} held-out images (Fashion-MNIST's first test images).\n\n"
            f"{table}\n\n{verdict}"
        )
        cmd = command("own_images.py", argv)
        write_section("own_images", "Your own images: a folder against the built-in loader",
                      body, cmd)  # fmt: skip


if __name__ == "__main__":
    main()
