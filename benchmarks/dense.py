"""Backbones for detection and segmentation: ResNet, ResNeXt and pre-activation ResNet of
equal cost, trained with the same budget on the Fashion-MNIST scene set.

The ResNeXt paper (section 5.4) reports that on COCO detection (Faster R-CNN) ResNeXt-50
improves AP@0.5 by 2.1 points and AP by 1.0 point over ResNet-50 at the same complexity.
This runs the small-scale version on this CPU: for each task (FCOS detection,
DeepLabV3 segmentation at output stride 16), each backbone trains from scratch with the
task's preset (configs/scenes_<task>.yaml) for the same epochs on the same images, each in
a fresh ``resnetlab train`` process, one after the other. The backbones are 26-layer
bottleneck nets (stages of 2 units): ResNet-26, ResNeXt-26 32x4d and ResNet-26 v2, about
0.8 GMACs each at 128 px. Reports box mAP@[.5:.95] and mAP@.5, or mIoU and pixel accuracy,
on the scene set's val split (items from Fashion-MNIST's test set), training img/s and
time; with ``--write`` the table goes to BENCHMARKS.md and the ResNeXt runs' drawn
predictions to docs/figures/.

    python benchmarks/dense.py                          # 1,000 / 500 canvases, 3 epochs each
    python benchmarks/dense.py --write
    python benchmarks/dense.py --tasks segmentation --epochs 1 --train 200   # a quick look
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import benchmark_parser, command, markdown_table, parse_args, write_section  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FIGURES = ROOT / "docs" / "figures"
LAYERS = "model_args.layers=[2,2,2,2]"
# name shown, zoo model (its layers set to 2 per stage): equal-cost 26-layer bottleneck nets
BACKBONES = {
    "ResNet-26": "resnet50",
    "ResNeXt-26 32x4d": "resnext50_32x4d",
    "ResNet-26 v2 (pre-act)": "resnet50_v2",
}
HEADS = {"detection": "FCOS", "segmentation": "DeepLabV3, output stride 16"}


def backbone_cost(model: str) -> tuple[float, float]:
    """Params (M) and GMACs of the backbone alone at 128 x 128."""
    from resnetlab import create_model, model_info

    info = model_info(create_model(model, num_classes=0, layers=(2, 2, 2, 2)), (3, 128, 128))
    return info["params"] / 1e6, info["macs"] / 1e9


def train(output: Path, task: str, model: str, data: str, epochs: int, reuse: bool) -> dict:
    """A fresh training process; with ``reuse``, a finished run of the same settings in
    ``output`` (an interrupted benchmark's) is read instead."""
    done = output / "summary.json"
    if reuse and done.is_file():
        summary = json.loads(done.read_text())
        if (summary.get("data"), summary.get("epochs"), summary.get("model")) == (
            data,
            epochs,
            model,
        ):
            print(f"reusing {output}", flush=True)
            return summary
    cmd = [sys.executable, "-m", "resnetlab", "train", "--config",
           str(ROOT / "configs" / f"scenes_{task}.yaml"), "--model", model, LAYERS, "--data",
           data, "--epochs", str(epochs), "--output", str(output), "--overwrite", "--quiet"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(done.read_text())


def pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}"


def main(argv: list[str] | None = None) -> None:
    p = benchmark_parser(__doc__)
    p.add_argument("--tasks", nargs="+", default=list(HEADS), choices=list(HEADS))
    p.add_argument("--train", type=int, default=1000, help="training canvases (1000)")
    p.add_argument("--val", type=int, default=500, help="val canvases (500)")
    p.add_argument("--epochs", type=int, default=3, help="(3)")
    p.add_argument("--workdir", type=Path, help="where the runs go (a temp dir)")
    p.add_argument("--reuse", action="store_true",
                   help="read finished runs of the same settings in --workdir instead of "
                   "training them again (an interrupted benchmark continues)")  # fmt: skip
    a = parse_args(p, argv)
    work = a.workdir or Path(tempfile.mkdtemp(prefix="dense-"))
    data = f"fashion-mnist-scenes:train={a.train},val={a.val}"
    for task in a.tasks:
        rows, results = [], {}
        for label, model in BACKBONES.items():
            run = work / f"{task}-{model}"
            s = train(run, task, model, data, a.epochs, a.reuse)
            results[label] = (s, run)
            params, macs = backbone_cost(model)
            metrics = ([pct(s["test_map"]), pct(s["test_map50"])] if task == "detection"
                       else [pct(s["test_miou"]), pct(s["test_pixel_acc"])])  # fmt: skip
            rows.append([label, f"{params:.1f}", f"{macs:.2f}", *metrics,
                         s["train_img_per_s"], s["train_time_s"], s["precision"]])  # fmt: skip
            print(rows[-1], flush=True)
        names = (["box mAP %", "box mAP@.5 %"] if task == "detection"
                 else ["mIoU %", "pixel acc %"])  # fmt: skip
        table = markdown_table(["backbone", "params M", "GMACs @128", *names, "train img/s",
                                "train s", "precision"], rows)  # fmt: skip
        key = "test_map" if task == "detection" else "test_miou"
        base, next_ = results["ResNet-26"][0][key], results["ResNeXt-26 32x4d"][0][key]
        v2 = results["ResNet-26 v2 (pre-act)"][0][key]
        verdict = (
            f"{HEADS[task]}: ResNeXt-26 vs ResNet-26 **{100 * (next_ - base):+.1f} points** "
            f"{names[0].split(' %')[0]}, ResNet-26 v2 vs ResNet-26 {100 * (v2 - base):+.1f}."
        )
        print(table)
        print(verdict)
        if a.write:
            FIGURES.mkdir(parents=True, exist_ok=True)
            figure = FIGURES / f"dense_{task}.png"
            shutil.copyfile(results["ResNeXt-26 32x4d"][1] / "predictions.png", figure)
            body = (
                f"Each backbone trained from scratch with `configs/scenes_{task}.yaml` and "
                f"`--model M {LAYERS} --data {data} --epochs {a.epochs}`, each run a fresh "
                f"process, one after the other; metrics on the {a.val} val canvases (items from "
                f"Fashion-MNIST's test set)"
                + (", COCO mAP by torchmetrics/pycocotools" if task == "detection" else
                   ", mIoU over the 11 classes (background included)")
                + f".\n\n{table}\n\n{verdict}\n\nPredictions of the ResNeXt-26 run on val "
                f"canvases: ![{task}](docs/figures/dense_{task}.png)"
            )  # fmt: skip
            write_section(f"dense_{task}", f"{task.capitalize()} backbones on the scene set "
                          f"({HEADS[task]})", body, command("dense.py", argv))  # fmt: skip


if __name__ == "__main__":
    main()
