"""The ``resnetlab`` command line: it parses arguments and calls one library function each."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from .errors import ResnetlabError, TrainingInterrupted
from .formatting import dumps_json

EPILOGS = {
    "models": """examples:
  resnetlab models                 # every model with params and MACs
  resnetlab models 'resnext*'      # a shell-style pattern
  resnetlab models --json > models.json
  resnetlab models --paper         # measured vs the papers' tables, mismatches marked
  resnetlab models --paper 'resnet1*' --json""",
    "info": """examples:
  resnetlab info resnet50
  resnetlab info resnet56 --input-size 3 32 32 --json""",
    "weights": """examples:
  resnetlab weights                           # every named weight: accuracy, sizes, cached?
  resnetlab weights resnet50                  # the weights of one model
  resnetlab weights 'timm:*' --json
  resnetlab weights --download torchvision:resnet50.IMAGENET1K_V2   # prints the file's path
then: create_model("resnet50", weights="torchvision:resnet50.IMAGENET1K_V2"), or
  resnetlab train --weights NAME. Files go to $TORCH_HOME/hub/checkpoints (default
  ~/.cache/torch/hub/checkpoints), are checked against their sha256 and reused offline""",
    "train": """examples:
  resnetlab train --model resnet20 --data fashion-mnist --epochs 3 --output runs/r20
  resnetlab train --config configs/fashion_mnist_fast.yaml --output runs/fast
  resnetlab train --config configs/cifar_resnet_paper.yaml --model resnet56 optim.lr=0.05
  resnetlab train --resume runs/r20 --epochs 6      # continue, here with more epochs
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
every key, its type, default and allowed values: `resnetlab config`""",
    "config": """examples:
  resnetlab config                  # every key of a training config
  resnetlab config 'optim.*'        # a shell-style pattern on the key
  resnetlab config 'model_args.*'   # the model's own options
  resnetlab config --json
set keys in a YAML file (`resnetlab train --config FILE`) or as KEY=VALUE on the train
command line, e.g. resnetlab train --data mnist optim.lr=1e-3 max_iters=2e3""",
    "eval": """examples:
  resnetlab eval runs/r20                  # the run's own data, split, test-time flip, precision
  resnetlab eval runs/r20 --split val --no-tta-flip
  resnetlab eval runs/r20 --data imagefolder:more_photos --output eval-more
  resnetlab eval runs/r20/model.safetensors --data fashion-mnist --json
on the run's own data and split, top-1 equals its summary.json test_top1. Writes
eval-<split>.json and confusion-<split>.png beside the run (or in --output); a run directory
that is not writable gets nothing written unless --output is given""",
    "predict": """examples:
  resnetlab predict runs/r20 photos/ 'more/*.png' --topk 3
  resnetlab predict --weights runs/r20/model.safetensors cat.jpg --json
  resnetlab predict --model resnet50 --weights resnet50-tv.pth dog.jpg  # torchvision/timm
  resnetlab predict --model resnet18 dog.jpg   # random weights: only a smoke test
folders are searched recursively; exit status 1 when some file could not be read""",
    "export": """examples:
  resnetlab export runs/r20 --format onnx --output r20.onnx     # batch dimension free
  resnetlab export runs/r20 --format onnx --output r20-b1.onnx --static-batch
  resnetlab export runs/r20 --format openvino --output r20-ov/  # model.xml + model.bin
  resnetlab export runs/r20 --format torch-export --output r20.pt2
  resnetlab export runs/r50 --format torchvision --output r50.pth
  resnetlab export runs/r20/model.safetensors --format safetensors --output copy.safetensors
every export is read back and compared with PyTorch (relative error <= 1e-4) unless
--no-verify""",
    "serve": """examples:
  resnetlab serve runs/r20 --port 8000        # then open http://127.0.0.1:8000/ or /docs
  resnetlab serve runs/r20/model.safetensors --max-batch-size 64 --max-delay-ms 10
  resnetlab serve --model resnet18 --weights torchvision:resnet18.IMAGENET1K_V1
  curl -F files=@cat.jpg -F files=@dog.jpg 'http://127.0.0.1:8000/predict?topk=3'
  curl --data-binary @cat.jpg http://127.0.0.1:8000/predict     # a raw image body
endpoints: POST /predict, the Open Inference Protocol (KServe v2) under /v2 (health, model
metadata, infer with FP32 [N, C, H, W] or BYTES base64 images), GET /metrics (Prometheus),
GET / (a page to try the model), /docs (OpenAPI). Requests are batched: up to
--max-batch-size images, waiting at most --max-delay-ms; a full queue answers 503.
SIGTERM finishes the requests in flight, then exits with status 0""",
    "experiment": """examples:
  resnetlab experiment degradation --quick --output runs/degradation
  resnetlab experiment gradients --quick --output runs/gradients
  resnetlab experiment cardinality --quick --output runs/cardinality
  resnetlab experiment degradation --help     # the options of one experiment
each writes results.json, figures (PNG) and report.md to --output; running again with the
same settings continues an interrupted run. docs/reproduction.md shows what they gave""",
    "bench": """examples:
  resnetlab bench resnet50 --batch-size 16   # fp32, bf16, int8; torchvision, onnxruntime, openvino
  resnetlab bench resnet50 --batch-size 1 --precision fp32,int8 --iters 20
  resnetlab bench resnet20 --input-size 3 32 32 --compare onnxruntime,openvino --json
  resnetlab bench runs/r20 --precision int8 --compile      # a trained run; adds torch.compile rows
img/s and p50/p95 latency per batch; mem: peak RSS growth while the system ran; of peak:
2 x MACs x img/s over a matrix-product probe of the same kind in the same run (fp32, bf16,
int8; "-" where torch has no probe of that kind); prec: what each row computed in (OpenVINO's
default hint row: the precision it picked on this CPU, whose tier the title names).
int8 is calibrated on random inputs here (speed only): use optimize_for_inference with
your own images for accuracy""",
    "experiment degradation": """examples:
  resnetlab experiment degradation --quick --output runs/degradation  # ~10 min on 2 cores
  resnetlab experiment degradation --output runs/fig6     # the paper's 64k iterations (GPU)
  resnetlab experiment degradation --dataset cifar10 --depths 20 32 44 56 --output runs/c10
  resnetlab experiment degradation --quick --iters 400 --threads 1 --output runs/deg400
  resnetlab experiment degradation --quick --no-zero-init --output runs/deg-paper-init
writes DIR/results.json ({model: {"train_error", "test_error", "curve": [...]}}, errors as
fractions), DIR/degradation.png (plain left, residual right; dashed: training error, bold:
test error) and DIR/report.md saying whether the claim held, did not, or is inconclusive
(nets still at chance, or differences within the noise of the images measuring them)""",
    "experiment gradients": """examples:
  resnetlab experiment gradients --quick --output runs/gradients
  resnetlab experiment gradients --models plain110 resnet110 resnet110_v2 --steps 100
  resnetlab experiment gradients --deep-models --output runs/flow   # skip the 1000-layer nets
  resnetlab experiment gradients --models --deep-models resnet1202 --deep-steps 300 \\
      --output runs/1202                                    # only the 1202-layer net
writes DIR/results.json, DIR/gradients.png (per-layer gradient norms, log scale),
DIR/deep.png (loss of the 1000+-layer nets, memory with/without checkpointing), report.md""",
    "experiment cardinality": """examples:
  resnetlab experiment cardinality --quick --output runs/cardinality
  resnetlab experiment cardinality --budget 2 --output runs/card2x   # the paper's Table 4
  resnetlab experiment cardinality --cardinalities 2 4 8 16 --depths 20 56 --iters 5000
writes DIR/results.json, DIR/cardinality.png (errors of equal-MACs variants) and report.md
with the table of MACs, params and errors""",
}


class CliError(ResnetlabError):
    """A user error: printed as one line, exit status 2."""


def cmd_models(args: argparse.Namespace) -> int:
    from .models import list_models
    from .models.summary import models_table, render_models_table

    names = list_models(args.pattern)
    if not names:
        raise CliError(f"no model matches {args.pattern!r}; try `resnetlab models` for all")
    rows = models_table(names, progress=not args.json and sys.stderr.isatty())
    if args.json:
        print(dumps_json(rows, indent=2))
    else:
        print(render_models_table(rows))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .models import model_info
    from .models.summary import info_table

    info = model_info(args.model, tuple(args.input_size) if args.input_size else None)
    if args.json:
        print(dumps_json(info, indent=2))
    else:
        c, h, w = info["input_size"]
        print(f"{info['name']} ({info['family']}, depth {info['depth']}), input {c}x{h}x{w}")
        print(info_table(info))
    return 0


def cmd_weights(args: argparse.Namespace) -> int:
    from .models import download_pretrained, list_pretrained
    from .models.pretrained import pretrained_rows, render_pretrained_table

    if args.download:
        print(download_pretrained(args.download, progress=sys.stderr.isatty()))
        return 0
    rows = pretrained_rows(list_pretrained(args.pattern))
    if not rows:
        raise CliError(f"no named weights match {args.pattern!r}; `resnetlab weights` lists all")
    print(dumps_json(rows, indent=2) if args.json else render_pretrained_table(rows))
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from .config import config_keys
    from .formatting import render_table

    rows = config_keys(args.pattern)
    if not rows:
        raise CliError(f"no config key matches {args.pattern!r}; `resnetlab config` lists all")
    columns = [("key", "key"), ("type", "type"), ("default", "default"), ("allowed", "allowed")]
    print(dumps_json(rows, indent=2) if args.json else render_table(rows, columns))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .config import load_train_config
    from .engine import train

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
    cfg = load_train_config(
        preset,
        args.overrides,
        task=args.task,
        model=args.model,
        epochs=args.epochs,
        seed=args.seed,
        device=args.device,
        precision=args.precision,
        max_iters=args.max_iters,
        save_every_steps=args.save_every_steps,
        output=output,
        data={k: v for k, v in data.items() if v is not None},
        optim={"lr": args.lr} if args.lr is not None else {},
        weights=args.weights,
        finetune={k: v for k, v in finetune.items() if v is not None},
        dense={k: v for k, v in dense.items() if v is not None},
    )
    summary = train(
        cfg,
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


# The headline metric of each task's summary and how `train` names it.
HEADLINES = (("test_top1", "top-1"), ("test_map", "box mAP"), ("test_miou", "mIoU"))


def _headline(summary: dict) -> str:
    for key, name in HEADLINES:
        if summary.get(key) is not None:
            return f"{summary['eval_split']} {name} {100 * summary[key]:.2f}%"
    return "no evaluation"


def cmd_eval(args: argparse.Namespace) -> int:
    from .engine import evaluate_source, format_result

    result = evaluate_source(
        args.source,
        args.data,
        split=args.split,
        data_dir=args.data_dir,
        batch_size=args.batch_size,
        device=args.device,
        precision=args.precision,
        output=args.output,
        tta_flip=args.tta_flip,
        progress=not args.json,
    )
    if args.json:
        # the measured values exactly as summary.json has them (float32 noise only removed)
        print(dumps_json({k: v for k, v in result.items() if k != "confusion"}, digits=None))
    else:
        print(format_result(result))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .inference import run_predict

    return run_predict(
        args.inputs,
        weights=args.weights,
        model=args.model,
        topk=args.topk,
        as_json=args.json,
        batch_size=args.batch_size,
        device=args.device,
        output=args.output,
        score_threshold=args.score_threshold,
    )


def cmd_serve(args: argparse.Namespace) -> int:
    from .inference.serve import ServeConfig, run_serve

    config = ServeConfig(
        max_batch_size=args.max_batch_size,
        max_delay_ms=args.max_delay_ms,
        max_queue=args.max_queue,
        max_upload_mb=args.max_upload_mb,
        timeout_s=args.timeout_s,
    )
    return run_serve(args.source, model=args.model, weights=args.weights, host=args.host,
                     port=args.port, device=args.device, config=config)  # fmt: skip


def cmd_export(args: argparse.Namespace) -> int:
    from .inference import export_model, format_export_result

    result = export_model(
        args.source,
        args.format,
        args.output,
        dynamic_batch=False if args.static_batch else (True if args.dynamic_batch else None),
        verify=not args.no_verify,
        opset=args.opset,
    )
    print(format_export_result(result))
    return 0


def cmd_models_paper(args: argparse.Namespace) -> int:
    """`models --paper`: every published figure beside the measured one; else `models`."""
    if not args.paper:
        return cmd_models(args)
    from .models.summary import paper_table, render_paper_table

    rows = paper_table(args.pattern, progress=not args.json and sys.stderr.isatty())
    if not rows:
        raise CliError(
            f"no published figure for a model matching {args.pattern!r}; "
            "`resnetlab models --paper` lists them all"
        )
    print(dumps_json(rows, indent=2) if args.json else render_paper_table(rows))
    return 0


def cmd_experiment(args: argparse.Namespace) -> int:
    from .experiments import run_experiment

    options = {k: v for k, v in vars(args).items()
               if k not in ("command", "experiment", "func") and v is not None}  # fmt: skip
    result = run_experiment(args.experiment, **options)
    print(result["summary"])
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .inference import bench_model, format_bench

    rows = bench_model(
        args.model,
        batch_size=args.batch_size,
        precisions=[p for p in args.precision.split(",") if p],
        compare=[c for c in args.compare.split(",") if c and c != "none"],
        input_size=tuple(args.input_size) if args.input_size else None,
        iters=args.iters,
        warmup=args.warmup,
        rounds=args.rounds,
        compile=args.compile,
        threads=args.threads,
        progress=None if args.quiet or args.json else lambda m: print(m, file=sys.stderr),
    )
    print(dumps_json([r.to_dict() for r in rows], indent=2) if args.json else format_bench(rows))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="resnetlab",
        description="The ResNet family (ResNet, pre-activation ResNet, ResNeXt) for PyTorch.",
        epilog="Run `resnetlab COMMAND --help` for a command's options and examples.",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"resnetlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, func: Callable, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name,
            help=help,
            description=help,
            epilog=EPILOGS.get(name),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.set_defaults(func=func)
        return p

    p = add("models", cmd_models, "List the models with params and MACs (measured).")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style name pattern")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p = add("info", cmd_info, "Per-stage params and MACs of one model.")
    p.add_argument("model", help="a model name (see `resnetlab models`)")
    p.add_argument("--input-size", type=int, nargs=3, metavar=("C", "H", "W"),
                   help="input shape (default: the model's native one)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p = add("weights", cmd_weights, "List the named pretrained weights, or download one.")
    p.add_argument("pattern", nargs="?", default="*",
                   help="shell-style pattern on the weight's or the model's name")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--download", metavar="NAME", help="fetch NAME into the cache; print its path")

    p = add("train", cmd_train, "Train a model on a dataset; writes a self-describing run dir.")
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
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--precision", help="auto | fp32 | bf16 | fp16")
    p.add_argument("--output", help="the run directory (default runs/default)")
    p.add_argument("--save-every-steps", type=int, help="also checkpoint every N steps")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR")
    p.add_argument("--overwrite", action="store_true", help="replace a run in --output")
    p.add_argument("--skip-bad-images", action="store_true",
                   help="skip unreadable images in an image folder (counted) instead of failing")  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bars")
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
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")

    p = add("config", cmd_config, "List every training config key (for --config files and "
            "KEY=VALUE overrides): type, default, allowed values.")  # fmt: skip
    p.add_argument("pattern", nargs="?", default="*", help="shell-style pattern on the key")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p = add("eval", cmd_eval, "Evaluate a run directory or weights file on a dataset.")
    p.add_argument("source", help="a run directory or a .safetensors file")
    p.add_argument("--data", help="dataset spec, as for train (default: the run's own data; "
                   "needed for a weights file without the run's config.yaml beside it)")  # fmt: skip
    p.add_argument("--data-dir", help="where datasets live (default: the run's)")
    p.add_argument("--split", choices=["train", "val", "test"],
                   help="default: the split the run was evaluated on")  # fmt: skip
    p.add_argument("--tta-flip", action=argparse.BooleanOptionalAction, default=None,
                   help="average with the flipped image (default: as the run did)")  # fmt: skip
    p.add_argument("--batch-size", type=int, help="default: the run's eval batch size, else 256")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N (default: the run's)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"],
                   help="default: the run's (fp32 for a weights file alone)")  # fmt: skip
    p.add_argument("--output", help="where to write confusion-<split>.png and eval-<split>.json")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = add("predict", cmd_predict, "Classify image files (a detection or segmentation model "
            "draws its boxes and masks on them) with a run directory or weights.")  # fmt: skip
    p.usage = (
        "%(prog)s (RUN_DIR | --weights FILE | --model NAME) INPUTS... [--topk K] [--json] "
        "[--batch-size B] [--device DEVICE] [--output DIR] [--score-threshold S]"
    )
    p.add_argument("inputs", nargs="+", metavar="INPUTS",
                   help="image files, folders (searched recursively) or glob patterns; "
                   "first a run directory unless --weights or --model is given")  # fmt: skip
    p.add_argument("--weights", metavar="FILE", help="resnetlab .safetensors (or, with "
                   "--model, a torchvision/timm state dict)")  # fmt: skip
    p.add_argument("--model", metavar="NAME", help="a model name, for weights that do not "
                   "name their architecture (alone: random weights)")  # fmt: skip
    p.add_argument("--topk", type=int, default=5, metavar="K", help="classes per image (5)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--batch-size", type=int, default=32, metavar="B", help="images per batch")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--output", metavar="DIR", help="detection/segmentation: where the drawn "
                   "images go (predictions/)")  # fmt: skip
    p.add_argument("--score-threshold", type=float, default=0.5, metavar="S",
                   help="detection: draw and list boxes scoring at least S (0.5)")  # fmt: skip

    p = add("serve", cmd_serve, "Serve a model over HTTP (JSON, KServe v2, Prometheus).")
    p.add_argument("source", nargs="?", metavar="SOURCE",
                   help="a run directory or a .safetensors file (or use --model)")  # fmt: skip
    p.add_argument("--model", metavar="NAME", help="a model name, for weights that do not "
                   "name their architecture (alone: random weights)")  # fmt: skip
    p.add_argument("--weights", metavar="FILE", help="with --model: a torchvision/timm state "
                   "dict or a named weight, e.g. torchvision:resnet18.IMAGENET1K_V1")  # fmt: skip
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (8000)")
    p.add_argument("--max-batch-size", type=int, default=32, metavar="B",
                   help="images per model call at most (32; 1 turns batching off)")  # fmt: skip
    p.add_argument("--max-delay-ms", type=float, default=5.0, metavar="MS",
                   help="how long the first image waits for others to join its batch (5)")  # fmt: skip
    p.add_argument("--max-queue", type=int, default=256, metavar="N",
                   help="images waiting at most; more get 503 with Retry-After (256)")  # fmt: skip
    p.add_argument("--max-upload-mb", type=float, default=20.0, metavar="MB",
                   help="largest request body; larger gets 413 (20)")  # fmt: skip
    p.add_argument("--timeout-s", type=float, default=30.0, metavar="S",
                   help="a request waiting longer for the model gets 504 (30)")  # fmt: skip
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")

    p = add("export", cmd_export,
            "Write a model as safetensors, torchvision, ONNX, .pt2 or OpenVINO IR.")  # fmt: skip
    p.add_argument("source", help="a run directory or a resnetlab .safetensors file")
    p.add_argument("--format", required=True, metavar="FORMAT",
                   help="safetensors | torchvision | onnx | torch-export | openvino")  # fmt: skip
    p.add_argument("--output", required=True, metavar="PATH",
                   help="the file to write (openvino: a folder or a .xml path)")  # fmt: skip
    batch = p.add_mutually_exclusive_group()
    batch.add_argument("--static-batch", action="store_true",
                       help="fix the batch dimension at 1 (onnx, torch-export, openvino; "
                       "default: free)")  # fmt: skip
    batch.add_argument("--dynamic-batch", action="store_true",
                       help="a free batch dimension: the default, kept for older command "
                       "lines")  # fmt: skip
    p.add_argument("--no-verify", action="store_true", help="skip reading it back and comparing")
    p.add_argument("--opset", type=int, metavar="N", help="ONNX opset (default 17)")
    # `models --paper`: the same command, with the papers' figures beside the measured ones.
    p = sub.choices["models"]
    p.add_argument("--paper", action="store_true",
                   help="every published figure beside the measured one, mismatches marked")  # fmt: skip
    p.set_defaults(func=cmd_models_paper)

    p = add("experiment", cmd_experiment, "Reproduce the papers' experiments (results, "
            "figures and a report in --output).")  # fmt: skip
    experiments = p.add_subparsers(dest="experiment", metavar="EXPERIMENT", required=True)

    def add_experiment(name: str, help: str) -> argparse.ArgumentParser:
        e = experiments.add_parser(
            name,
            help=help,
            description=help,
            epilog=EPILOGS.get(f"experiment {name}"),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        e.add_argument("--output", metavar="DIR", help=f"results directory (runs/{name})")
        e.add_argument("--dataset", metavar="SPEC", help="fashion-mnist (default) | mnist | "
                       "cifar10 | cifar100 | synthetic[:OPTIONS]")  # fmt: skip
        e.add_argument("--data-dir", help="where datasets live (as for train)")
        e.add_argument("--quick", action="store_true",
                       help="the short setting (minutes on a CPU) instead of the full one")  # fmt: skip
        e.add_argument("--seed", type=int, help="the seed of every net (0)")
        e.add_argument("--device", help="auto | cpu | cuda | cuda:N")
        e.add_argument("--threads", type=int, help="CPU threads for torch")
        e.add_argument("--overwrite", action="store_true",
                       help="replace results of other settings in --output")  # fmt: skip
        e.add_argument("--quiet", dest="progress", action="store_false", help="no progress bars")
        return e

    e = add_experiment("degradation", "Plain vs residual nets of two depths, same recipe "
                       "(He et al. 2015, Figure 6).")  # fmt: skip
    e.add_argument("--depths", type=int, nargs="+", metavar="D",
                   help="CIFAR depths 6n+2 (default 20 56)")  # fmt: skip
    e.add_argument("--iters", type=int, help="iterations per net (full 64000, quick 200)")
    e.add_argument("--train-size", type=int, metavar="N",
                   help="training images, a seeded subset (full: all, quick: 10000)")  # fmt: skip
    e.add_argument("--eval-every", type=int, metavar="K", help="iterations between points")
    e.add_argument("--batch-size", type=int, help="images per step (128)")
    e.add_argument("--lr", type=float,
                   help="learning rate (0.1, /10 at 50%% and 75%% of the iterations)")  # fmt: skip
    e.add_argument("--warmup-iters", type=int, metavar="N",
                   help="lr / 10 for the first N iterations, as the paper did for 110+ layers "
                   "(0)")  # fmt: skip
    e.add_argument("--zero-init", action=argparse.BooleanOptionalAction,
                   help="zero-init the residual branches' last BN, so each residual unit "
                   "starts as the identity (quick: on; full: off, as in the paper)")  # fmt: skip
    e.add_argument("--tolerance", type=float,
                   help="how far (fraction) the deeper ResNet's training error may exceed "
                   "the shallower one's and still count as no degradation (0.01)")  # fmt: skip

    e = add_experiment("gradients", "Per-layer gradient norms of plain vs residual nets; "
                       "1000+-layer nets trained, with and without checkpointing.")  # fmt: skip
    e.add_argument("--models", nargs="*", metavar="NAME",
                   help="nets of equal depth (plain56 resnet56 resnet56_v2): zoo names or "
                   "plainD / resnetD / resnetD_v2 for a CIFAR depth D = 6n+2 (none: only the "
                   "1000+-layer nets)")  # fmt: skip
    e.add_argument("--steps", type=int, metavar="K",
                   help="training steps between the two measurements (full 200, quick 50)")  # fmt: skip
    e.add_argument("--batch-size", type=int, help="images per step (full 128, quick 64)")
    e.add_argument("--lr", type=float, help="learning rate (0.1)")
    e.add_argument("--deep-models", nargs="*", metavar="NAME",
                   help="very deep nets to train (resnet1001_v2 resnet1202; none: skip)")  # fmt: skip
    e.add_argument("--deep-steps", type=int, help="their steps (full 300, quick 50)")
    e.add_argument("--deep-batch-size", type=int, help="their images per step (16)")
    e.add_argument("--deep-image-size", type=int, help="resize to this (full: 28, quick: 16)")
    e.add_argument("--deep-train-size", type=int, help="their training images (1024 / 512)")
    e.add_argument(
        "--deep-lr",
        type=float,
        help="their learning rate (0.01; a tenth of it for the first 10%% of steps)",
    )
    e.add_argument("--no-memory", dest="memory", action="store_false",
                   help="skip measuring memory with and without checkpointing")  # fmt: skip

    e = add_experiment("cardinality", "Cardinality vs depth and width at equal MACs "
                       "(Xie et al. 2017, Tables 3-4), on a small scale.")  # fmt: skip
    e.add_argument("--budget", type=float,
                   help="MACs as a multiple of ResNet-29 1x16d's (1; 2 is the paper's Table 4)")  # fmt: skip
    e.add_argument("--depths", type=int, nargs="+", metavar="D",
                   help="C=1 nets of other depths 9n+2 (20 56)")  # fmt: skip
    e.add_argument("--cardinalities", type=int, nargs="+", metavar="C",
                   help="ResNeXt-29 cardinalities (2 4 8)")  # fmt: skip
    e.add_argument("--iters", type=int, help="iterations per net (full 20000, quick 60)")
    e.add_argument("--train-size", type=int, metavar="N",
                   help="training images, a seeded subset (full: all, quick: 10000)")  # fmt: skip
    e.add_argument("--eval-every", type=int, metavar="K", help="iterations between points")
    e.add_argument("--batch-size", type=int, help="images per step (128)")
    e.add_argument("--lr", type=float,
                   help="learning rate (0.1, Nesterov, x0.1 at 50%% and 75%%)")  # fmt: skip

    p = add("bench", cmd_bench, "Inference speed of a model: resnetlab fp32/bf16/int8 vs "
            "torchvision, onnxruntime and OpenVINO, side by side.")  # fmt: skip
    p.add_argument("model", help="a model name, a run directory or a resnetlab .safetensors")
    p.add_argument("--batch-size", type=int, default=16, metavar="B", help="images per batch (16)")
    p.add_argument("--precision", default="fp32,bf16,int8", metavar="LIST",
                   help="resnetlab precisions to time, comma-separated (fp32,bf16,int8)")  # fmt: skip
    p.add_argument("--compare", default="eager,torchvision,onnxruntime,openvino", metavar="LIST",
                   help="baselines, comma-separated: eager (the model as it is), torchvision, "
                   "onnxruntime, openvino (default: all four; none)")  # fmt: skip
    p.add_argument("--input-size", type=int, nargs=3, metavar=("C", "H", "W"),
                   help="input shape (default: the model's native one)")  # fmt: skip
    p.add_argument("--iters", type=int, default=10, metavar="N", help="timed batches (10)")
    p.add_argument("--warmup", type=int, default=2, metavar="N", help="untimed batches first (2)")
    p.add_argument("--rounds", type=int, default=1, metavar="R",
                   help="alternate the systems R times (1)")  # fmt: skip
    p.add_argument("--compile", action="store_true", help="add torch.compile variants")
    p.add_argument("--threads", type=int, metavar="N",
                   help="intra-op threads for torch and onnxruntime (default: torch's)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return parser


def parse_with_overrides(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None = None
) -> argparse.Namespace:
    """Parse ``argv``; KEY=VALUE overrides may come before, between or after options.

    argparse leaves the ones after an option group unparsed: they are collected here into
    ``overrides`` when the command takes them.
    """
    args, extra = parser.parse_known_args(argv)
    if extra:
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parse_with_overrides(parser, argv)
    try:
        return args.func(args)
    except TrainingInterrupted as e:
        print(f"resnetlab {args.command}: {e}", file=sys.stderr)
        return 130
    except ResnetlabError as e:
        # a problem with the input or the machine, said on one line; anything else is a bug
        # and keeps its traceback
        print(f"resnetlab {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"resnetlab {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
