"""Transfer learning on real images: pretrain on five Fashion-MNIST classes, fine-tune on the
other five with a few labelled images each, against the same model from scratch.

Writes two image folders from Fashion-MNIST: ``source/`` with every training image of
classes 0-4 (T-shirt/top, Trouser, Pullover, Dress, Coat; 30,000) and their test images as
``val/``, and ``target/`` with the first ``--shots`` training images of each of classes 5-9
(Sandal, Shirt, Sneaker, Bag, Ankle boot) and all their test images (5,000) as ``val/``.
Pretrains ``--model`` on ``source`` (a run directory), then trains on ``target`` at equal
steps: from scratch, fine-tuned from the run (``--weights RUN``), and with the pretrained
backbone frozen (``--freeze backbone``, a linear probe). Each run is a fresh
``resnetlab train`` process; the seeds are repeated to show the spread.

    python benchmarks/transfer.py                         # 50 shots, 3 seeds
    python benchmarks/transfer.py --shots 10 --seeds 0 1 2 3 4 --write
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import benchmark_parser, command, markdown_table, parse_args, write_section  # noqa: E402

SOURCE, TARGET = range(5), range(5, 10)


def write_folders(root: Path, shots: int) -> tuple[Path, Path]:
    from PIL import Image

    from resnetlab.data import CATALOG, load_split

    names = [n.replace("/", "-") for n in CATALOG["fashion-mnist"].class_names]
    for split, source in (("train", "train"), ("val", "test")):
        images, labels, _ = load_split("fashion-mnist", source)
        taken = dict.fromkeys(TARGET, 0)
        for i in range(len(labels)):
            c = int(labels[i])
            if c in TARGET and split == "train":
                if taken[c] >= shots:
                    continue
                taken[c] += 1
            folder = root / ("source" if c in SOURCE else "target") / split / names[c]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i, 0].numpy(), mode="L").save(folder / f"{i:05d}.png")
    return root / "source", root / "target"


def train(output: Path, *args: str) -> dict:
    cmd = [sys.executable, "-m", "resnetlab", "train", "--output", str(output), "--overwrite",
           "--quiet", *args]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads((output / "summary.json").read_text())


def main(argv: list[str] | None = None) -> None:
    p = benchmark_parser(__doc__)
    p.add_argument("--model", default="resnet20", help="(resnet20)")
    p.add_argument("--pretrain-epochs", type=int, default=3, help="on the 30,000 images (3)")
    p.add_argument("--shots", type=int, default=50, help="labelled images per new class (50)")
    p.add_argument("--epochs", type=int, default=30, help="on the few images (30)")
    p.add_argument("--batch-size", type=int, default=25, help="on the few images (25)")
    p.add_argument("--finetune-lr", type=float, default=0.02, help="(0.02; scratch: 0.1)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--workdir", type=Path, help="where folders and runs go (a temp dir)")
    a = parse_args(p, argv)
    work = a.workdir or Path(tempfile.mkdtemp(prefix="transfer-"))
    source, target = write_folders(work, a.shots)
    pre = train(work / "pretrain", "--model", a.model, "--data", f"imagefolder:{source}",
                "--epochs", str(a.pretrain_epochs))  # fmt: skip
    common = ["--model", a.model, "--data", f"imagefolder:{target}", "--epochs", str(a.epochs),
              "--batch-size", str(a.batch_size)]  # fmt: skip
    weights = ["--weights", str(work / "pretrain"), "--lr", str(a.finetune_lr)]
    variants = {
        "from scratch (lr 0.1)": [],
        f"fine-tuned from the run (lr {a.finetune_lr:g})": weights,
        f"pretrained backbone frozen (lr {a.finetune_lr:g})": [*weights, "--freeze", "backbone"],
    }
    results: dict[str, list[float]] = {}
    for label, extra in variants.items():
        results[label] = [
            100
            * train(work / f"{label.split()[0]}-{seed}", *common, "--seed", str(seed), *extra)[
                "test_top1"
            ]  # fmt: skip
            for seed in a.seeds
        ]
    steps = a.epochs * (5 * a.shots // a.batch_size)
    rows = [
        [label, ", ".join(f"{v:.2f}" for v in accs), f"{statistics.mean(accs):.2f}",
         f"{statistics.stdev(accs):.2f}" if len(accs) > 1 else "–"]
        for label, accs in results.items()
    ]  # fmt: skip
    table = markdown_table(["on classes 5-9", "top-1 % per seed", "mean", "std"], rows)
    print(table)
    body = (
        f"Pretrained: `{a.model}` on Fashion-MNIST classes 0-4 (30,000 images, "
        f"{a.pretrain_epochs} epochs, `--data imagefolder:source`): {100 * pre['test_top1']:.2f}% "
        f"on their test images. Then classes 5-9 with {a.shots} labelled images per class, "
        f"{a.epochs} epochs at batch {a.batch_size} ({steps} steps, equal for every row), "
        f"top-1 on the 5,000 test images of classes 5-9, seeds {a.seeds}.\n\n{table}"
    )
    print(body.split("\n")[0])
    if a.write:
        cmd = command("transfer.py", argv)
        write_section("transfer", "Transfer: fine-tuning on a few images of new classes", body,
                      cmd)  # fmt: skip


if __name__ == "__main__":
    main()
