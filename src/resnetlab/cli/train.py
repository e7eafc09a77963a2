"""``train``: a model on a dataset, into a self-describing run directory."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from .common import CliError, add_command, add_device

EPILOG = """examples:
  resnetlab train --model resnet20 --data fashion-mnist --epochs 3 --output runs/r20
  resnetlab train --config configs/fashion_mnist_fast.yaml --output runs/fast
  resnetlab train --config configs/cifar_resnet_paper.yaml --model resnet56 optim.lr=0.05
  resnetlab train --resume runs/r20 --epochs 6      # continue, here with more epochs
  resnetlab train --model resnet20 --data fashion-mnist --budget 600 --epochs 50 \
      schedule.name=onecycle              # as many epochs as fit 10 minutes here
  resnetlab train --model resnet50 --weights torchvision:resnet50.IMAGENET1K_V2 \\
      --data imagefolder:photos --epochs 5 --freeze stage2 --backbone-lr-scale 0.1
  resnetlab train --model resnet8_pool --weights runs/pre --data imagefolder:few \\
      --head-epochs 2 --freeze-bn          # fine-tune a run of your own
  resnetlab train --task detection --model resnet18 --data fashion-mnist-scenes \\
      --config configs/scenes_detection.yaml --output runs/det   # FCOS on an FPN
  resnetlab train --task segmentation --head deeplabv3 --model resnext50_32x4d \\
      --data coco:my_set --config configs/scenes_segmentation.yaml --output runs/seg
image folders: small images (<= 64 px) train at their own size in memory with pad + crop +
  flip, larger ones with the ImageNet pipeline at 224 (the line printed at the start says
  which and why; data.pipeline, data.image_size, data.in_memory override)
overrides: KEY=VALUE with dotted keys, e.g. optim.lr=1e-3 schedule.name=onecycle
  data.batch_size=256 model_args.drop_path_rate=0.1 label_smoothing=0.1
every key, its type, default and allowed values: `resnetlab config`"""

if TYPE_CHECKING:
    from ..config import TrainConfig

# The headline metric of each task's summary and how `train` names it.
HEADLINES = (("test_top1", "top-1"), ("test_map", "box mAP"), ("test_miou", "mIoU"))


def add_train_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "train", cmd_train,
                    "Train a model on a dataset; writes a self-describing run dir.", EPILOG)  # fmt: skip
    p.add_argument("--config", help="a YAML preset (see configs/; its keys: `resnetlab config`)")
    p.add_argument("--task", help="classification (default) | detection | segmentation: "
                   "the model is then the backbone")  # fmt: skip
    p.add_argument("--head", help="detection: fasterrcnn (default) | maskrcnn | retinanet | "
                   "fcos; segmentation: deeplabv3 (default) | fcn")  # fmt: skip
    p.add_argument("--output-stride", type=int, metavar="S",
                   help="segmentation: 8 | 16 (default) | 32, dilation instead of stride")  # fmt: skip
    p.add_argument("--model", help="model name (default: the preset's, else resnet20)")
    p.add_argument("--data", help="fashion-mnist | mnist | cifar10 | cifar100 | "
                   "imagefolder:PATH | synthetic; detection/segmentation: coco:PATH | "
                   "fashion-mnist-scenes")  # fmt: skip
    p.add_argument("--data-dir", help="where datasets live (default $RESNETLAB_DATA or "
                   "~/.cache/resnetlab)")  # fmt: skip
    p.add_argument("--epochs", type=int, help="passes over the training set (10)")
    p.add_argument("--batch-size", type=int,
                   help="images per step (default: 128, less on a small training set)")  # fmt: skip
    p.add_argument("--lr", type=float, help="peak learning rate, optim.lr (0.1)")
    p.add_argument("--seed", type=int, help="seed of the weights and the data order (0)")
    p.add_argument("--max-iters", type=int, help="stop after this many iterations")
    p.add_argument("--budget", type=float, metavar="SECONDS",
                   help="train for about this long, set-up included and evaluation excluded: "
                   "the schedule's length is planned from the measured speed, and --epochs "
                   "is then the most it trains (budget_s)")  # fmt: skip
    add_device(p)
    p.add_argument("--precision", help="auto | fp32 | bf16 | fp16")
    p.add_argument("--output", help="the run directory (default runs/default)")
    p.add_argument("--save-every-steps", type=int, help="also checkpoint every N steps")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR")
    p.add_argument("--overwrite", action="store_true", help="replace a run in --output")
    p.add_argument("--skip-bad-images", action="store_true",
                   help="skip unreadable images in an image folder (counted) instead of failing")  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_finetune_options(p)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")


def _add_finetune_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", metavar="SOURCE",
                   help="start from pretrained weights: a file, a run directory, or a name "
                   "from `resnetlab weights` (e.g. torchvision:resnet50.IMAGENET1K_V2); the "
                   "head is replaced for the data's classes")  # fmt: skip
    p.add_argument("--freeze", metavar="PART",
                   help="with --weights: none | stem | stageN (stem + stages 1..N) | backbone")  # fmt: skip
    p.add_argument("--backbone-lr-scale", type=float, metavar="F",
                   help="with --weights: the backbone's lr is F x the head's (1)")  # fmt: skip
    p.add_argument("--head-epochs", type=int, metavar="N",
                   help="with --weights: train the head alone for the first N epochs (0)")  # fmt: skip
    p.add_argument("--freeze-bn", action="store_true",
                   help="with --weights: keep BatchNorm statistics as pretrained (tiny data)")  # fmt: skip


def cmd_train(args: argparse.Namespace) -> int:
    from ..engine import train

    summary = train(
        _train_config(args),
        resume=bool(args.resume),
        overwrite=args.overwrite,
        progress=not args.quiet,
        epoch_lines=True,  # --quiet drops the progress, not the per-epoch metric lines
    )
    if summary["rank"] != 0:
        return 0
    speed = summary["train_img_per_s"]
    print(
        f"done: {summary['model']} on {summary['data']}, {summary['epochs']} epochs in "
        f"{summary['train_time_s']:.0f} s"
        + (f" ({speed:.0f} img/s), " if speed else ", ")
        + _headline(summary)
        + f"\nreport: {summary['run_dir']}/report.md  plot: {summary['run_dir']}/curves.png"
    )
    return 0


def _train_config(args: argparse.Namespace) -> TrainConfig:
    """The resolved config: the preset (or the resumed run's), the options, the overrides."""
    from ..config import load_train_config

    preset = args.config
    output = args.output
    if args.resume:
        if args.config:
            raise CliError("--resume takes the run's own config.yaml; drop --config")
        preset, output = f"{args.resume}/config.yaml", args.resume
        if not Path(preset).is_file():
            raise CliError(
                f"nothing to resume in {args.resume}: no config.yaml of a run there (a run "
                "directory is what `resnetlab train --output DIR` made)"
            )
    dense = {"head": args.head, "output_stride": args.output_stride}
    data = {"spec": args.data, "data_dir": args.data_dir, "batch_size": args.batch_size,
            "skip_bad_images": True if args.skip_bad_images else None}  # fmt: skip
    finetune = {"freeze": args.freeze, "backbone_lr_scale": args.backbone_lr_scale,
                "head_epochs": args.head_epochs, "freeze_bn": True if args.freeze_bn else None}  # fmt: skip
    return load_train_config(
        preset,
        args.overrides,
        task=args.task,
        model=args.model,
        epochs=args.epochs,
        seed=args.seed,
        device=args.device,
        precision=args.precision,
        max_iters=args.max_iters,
        budget_s=args.budget,
        save_every_steps=args.save_every_steps,
        output=output,
        data={k: v for k, v in data.items() if v is not None},
        optim={"lr": args.lr} if args.lr is not None else {},
        weights=args.weights,
        finetune={k: v for k, v in finetune.items() if v is not None},
        dense={k: v for k, v in dense.items() if v is not None},
    )


def _headline(summary: dict) -> str:
    for key, name in HEADLINES:
        if summary.get(key) is not None:
            return f"{summary['eval_split']} {name} {100 * summary[key]:.2f}%"
    return "no evaluation"
