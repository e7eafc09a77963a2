"""The training engine: one function, ``train(config)``, that turns a config into a run.

A run directory holds the resolved config (``config.yaml``), per-epoch metrics
(``metrics.jsonl`` and TensorBoard events), checkpoints, the final weights
(``model.safetensors`` + sidecar), ``curves.png``, ``confusion.png`` and ``report.md``.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import sys
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import TrainConfig, build_dataclass
from ..data import build_loaders
from ..data.build import DEFAULT_BATCH_SIZE, default_eval_split
from ..device import cpu_bf16_is_fast, keep_freed_host_memory, resolve_device
from ..errors import ResnetlabError
from ..models import create_model, save_weights
from ..models.weights import atomic_write, weights_meta
from . import checkpoint as ckpt
from . import distributed as dist
from .finetune import FineTuning, weights_card
from .metrics import evaluate
from .optim import build_optimizer, build_scheduler
from .report import plot_confusion, plot_curves, read_metrics, write_report

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
# Settings that may change on --resume without changing the run's meaning.
RESUMABLE_CHANGES = {"epochs", "max_iters", "device", "output", "keep_last", "save_every_steps",
                     "eval_every", "threads", "compile", "dist_timeout_s"}  # fmt: skip


class TrainingError(ResnetlabError, RuntimeError):
    """Training cannot go on (NaN loss, a refused resume, a run directory in the way)."""


@dataclass
class Precision:
    dtype: torch.dtype | None  # autocast dtype, None for fp32
    scaler: torch.amp.GradScaler | None

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]


def resolve_precision(name: str, device: torch.device) -> Precision:
    if name == "auto":
        if device.type == "cuda":
            name = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            name = "bf16" if cpu_bf16_is_fast() else "fp32"
    if name == "fp32":
        return Precision(None, None)
    if name == "fp16":
        if device.type != "cuda":
            raise TrainingError("precision=fp16 needs a CUDA device; use bf16 on CPU")
        return Precision(torch.float16, torch.amp.GradScaler("cuda"))
    return Precision(torch.bfloat16, None)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _write_config(path: Path, cfg: TrainConfig) -> None:
    import yaml

    text = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    try:
        atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    except OSError as e:
        raise TrainingError(f"could not write {path}: {e.strerror or e}") from None


def _check_resumable(old: dict[str, Any], cfg: TrainConfig, where: str) -> None:
    """Refuse a resume whose settings change the run (anything but RESUMABLE_CHANGES)."""
    diffs = _config_diffs(old, cfg.to_dict())
    refused = [d for d in diffs if d.split(":")[0].split(".")[0] not in RESUMABLE_CHANGES]
    if refused:
        raise TrainingError(
            f"--resume with settings that differ from {where}: "
            + "; ".join(refused)
            + ". Resume with the original settings (only "
            + ", ".join(sorted(RESUMABLE_CHANGES))
            + " may change), or start a new run with another --output"
        )


def _prepare_run_dir(cfg: TrainConfig, *, resume: bool, overwrite: bool) -> TrainConfig:
    """Create the run directory, or check it on resume; returns the config to run."""
    import yaml

    run_dir = Path(cfg.output)
    saved_path = run_dir / CONFIG_FILE
    if resume:
        if not saved_path.exists():
            raise TrainingError(f"nothing to resume in {run_dir}: no {CONFIG_FILE} there")
        try:
            saved = yaml.safe_load(saved_path.read_text())
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise TrainingError(f"cannot read {saved_path}: {e}") from None
        if not isinstance(saved, dict):
            raise TrainingError(f"{saved_path} does not hold a run config (a mapping)")
        _check_resumable(saved, cfg, f"the run in {run_dir}")
        _write_config(saved_path, cfg)
        return cfg
    if run_dir.exists() and _never_started(run_dir):
        # a start that failed (bad data, a missing file) or was killed before its first
        # checkpoint left only set-up files: nothing to lose, start again in place
        for entry in _SETUP_ENTRIES:
            path = run_dir / entry
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise TrainingError(
                f"{run_dir} already holds a run: pass --resume to continue it, --overwrite to "
                "replace it, or another --output"
            )
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_config(saved_path, cfg)
    return cfg


# What a run directory holds before its first checkpoint.
_SETUP_ENTRIES = (CONFIG_FILE, "data_scan.json", "tensorboard", "checkpoints")


def _never_started(run_dir: Path) -> bool:
    """True if ``run_dir`` holds set-up files only (no checkpoint, metrics or weights)."""
    names = {p.name for p in run_dir.iterdir()}
    if not names or not names <= set(_SETUP_ENTRIES) or CONFIG_FILE not in names:
        return False
    return not any((run_dir / "checkpoints").glob("*.pt"))


def _config_diffs(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict) and key != "model_args":
            out += _config_diffs(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def _mixer(cfg: TrainConfig, num_classes: int):
    """Mixup/CutMix on batches (torchvision transforms v2), or None."""
    from torchvision.transforms import v2

    ops = []
    if cfg.mixup_alpha > 0:
        ops.append(v2.MixUp(alpha=cfg.mixup_alpha, num_classes=num_classes))
    if cfg.cutmix_alpha > 0:
        ops.append(v2.CutMix(alpha=cfg.cutmix_alpha, num_classes=num_classes))
    if not ops:
        return None
    return ops[0] if len(ops) == 1 else v2.RandomChoice(ops)


def train(
    config: TrainConfig | dict[str, Any],
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Train a model as ``config`` says; returns the final metrics (also in ``report.md``).

    Under ``torchrun`` every process runs this same function: each trains on its shard of
    the data with DistributedDataParallel, rank 0 alone writes the run directory, and a
    group restarted by ``torchrun --max-restarts`` resumes from the last checkpoint.
    """
    cfg = config if isinstance(config, TrainConfig) else build_dataclass(TrainConfig, config)
    device = resolve_device(cfg.device)
    dinfo = dist.setup(device, cfg.dist_timeout_s)
    if dinfo.enabled and device.type == "cuda":
        device = torch.device("cuda", dinfo.local_rank)
    if dist.restarted(device) and (Path(cfg.output) / CONFIG_FILE).exists():
        resume = True  # a worker group restarted by torchrun continues the run
    try:
        return _train(cfg, dinfo, device, resume=resume, overwrite=overwrite, progress=progress)
    except TrainingError as e:
        if dinfo.enabled:
            raise TrainingError(f"rank {dinfo.rank}/{dinfo.world_size}: {e}") from None
        raise
    finally:
        dist.cleanup()


def _train(
    cfg: TrainConfig,
    dinfo: dist.DistInfo,
    device: torch.device,
    *,
    resume: bool,
    overwrite: bool,
    progress: bool,
) -> dict[str, Any]:
    wall_start = time.perf_counter()  # data loading and model set-up count as wall time
    keep_freed_host_memory()  # no page faults on every step's activations (device.py)
    main = dinfo.is_main
    progress = progress and main
    # Rank 0 prepares (or checks) the run directory; the others learn the outcome.
    error = None
    if main:
        try:
            cfg = _prepare_run_dir(cfg, resume=resume, overwrite=overwrite)
            if resume:
                ckpt.remove_stale_temps(Path(cfg.output) / "checkpoints")
        except TrainingError as e:
            error = str(e)
    error = dist.broadcast_object(error)
    if error:
        raise TrainingError(error)
    run_dir = Path(cfg.output)
    # Ranks training side by side on one CPU take their share of its cores (distributed.py).
    threads, loader_workers = dist.cpu_resources(
        dinfo, device, threads=cfg.threads, num_workers=cfg.data.num_workers, announce=main
    )
    if threads:
        torch.set_num_threads(threads)
    precision = resolve_precision(cfg.precision, device)
    seed_everything(cfg.seed)

    d = cfg.data
    # Pretrained weights say how their images were prepared and how many channels they take.
    card = weights_card(cfg.weights) if cfg.weights else None
    in_chans = cfg.model_args.get("in_chans") or (card["in_chans"] if card else None)
    train_loader, eval_loader, info = build_loaders(
        d.spec,
        data_dir=d.data_dir,
        batch_size=d.batch_size,
        eval_batch_size=d.eval_batch_size,
        eval_split=d.eval_split,
        augment=d.augment,
        random_erasing=d.random_erasing,
        in_chans=in_chans,
        seed=cfg.seed,
        num_workers=loader_workers,
        rank=dinfo.rank,
        world_size=dinfo.world_size,
        device=device,
        channels_last=cfg.channels_last,
        val_fraction=d.val_fraction,
        skip_bad_images=d.skip_bad_images,
        image_size=d.image_size,
        pipeline=d.pipeline,
        in_memory=d.in_memory,
        memory_budget_mb=d.memory_budget_mb,
        preprocessing=card["preprocessing"] if card else None,
    )
    if main and info.plan:
        _record_data_scan(run_dir, info)
    if main and d.batch_size is None and train_loader.batch_size != DEFAULT_BATCH_SIZE:
        print(f"batch size {train_loader.batch_size}: {train_loader.dataset_size} training images "
              f"give {len(train_loader)} steps per epoch (data.batch_size overrides)",
              file=sys.stderr)  # fmt: skip
    model = _build_model(cfg, info, card, verbose=main).to(device)
    if cfg.sync_bn and dinfo.enabled:
        dist.convert_sync_batchnorm(model)
    finetune = FineTuning(model, cfg.finetune) if cfg.weights else None
    if main and finetune is not None:
        print(f"fine-tuning: {finetune.describe(0)}", file=sys.stderr)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(
        model, cfg.optim, backbone_lr_scale=cfg.finetune.backbone_lr_scale if finetune else 1.0
    )
    steps_per_epoch = len(train_loader)
    total_steps = cfg.max_iters or cfg.epochs * steps_per_epoch
    epochs = math.ceil(total_steps / steps_per_epoch)
    scheduler = build_scheduler(
        optimizer, cfg.schedule, steps_per_epoch=steps_per_epoch, total_steps=total_steps
    )
    ema = None
    if cfg.ema_decay > 0:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(
            model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True
        )
    forward: nn.Module = model
    if dinfo.enabled:
        from torch.nn.parallel import DistributedDataParallel

        # Gradients are averaged over ranks: with the per-rank batch B, the step is that of
        # one process with batch B x world_size (scale the lr with the global batch).
        forward = DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            # frozen parameters get no gradient: DDP must not wait for them
            find_unused_parameters=finetune is not None,
        )
    if cfg.compile:
        forward = torch.compile(forward)
    mixer = _mixer(cfg, info.num_classes)
    amp = torch.autocast(device.type, dtype=precision.dtype) if precision.dtype else nullcontext()

    step, epoch, start_batch, best, partial = 0, 0, 0, None, None
    if resume:
        found = ckpt.load_latest(run_dir / "checkpoints")
        if found is None:
            raise TrainingError(f"no readable checkpoint in {run_dir / 'checkpoints'} to resume")
        path, state = found
        if isinstance(state.get("config"), dict):
            _check_resumable(state["config"], cfg, f"the checkpoint {path}")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        if precision.scaler is not None and state.get("scaler") is not None:
            precision.scaler.load_state_dict(state["scaler"])
        step, epoch, start_batch = state["step"], state["epoch"], state["batch"]
        best = state.get("best")
        # Saved sums are global (reduced over ranks): rank 0 alone carries them on.
        partial = state.get("epoch_sums") if start_batch and main else None
        set_rng_state(state["rng"])
        if main:
            _truncate_metrics(run_dir / METRICS_FILE, epoch)
        if main:
            print(
                f"resuming from {path.name}: epoch {epoch + 1}, batch {start_batch}, step {step}",
                file=sys.stderr,
            )

    def state_dict(next_epoch: int, next_batch: int) -> dict[str, Any]:
        # Everything the rest of the run depends on. The data order and the augmentation
        # draws need no generator state here: the loaders derive them from fresh
        # generators seeded with (seed, epoch, batch), so the position (epoch, batch) *is*
        # that state. The global RNGs (torch: mixup/cutmix, stochastic depth; numpy;
        # python) are saved as they are after the last step. ``epoch_sums`` holds the
        # running train loss/accuracy sums of an unfinished epoch, so that its logged train
        # metrics are exact after a mid-epoch resume.
        return {
            "model": model.state_dict(),
            "model_meta": weights_meta(
                model, preprocessing=info.preprocessing(), class_names=info.class_names
            ),  # fmt: skip
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": precision.scaler.state_dict() if precision.scaler else None,
            "ema": ema.state_dict() if ema is not None else None,
            "step": step,
            "epoch": next_epoch,
            "batch": next_batch,
            "best": best,
            "rng": rng_state(),
            "epoch_sums": _global_sums(loss_sum, correct, seen) if next_batch else None,
            "config": cfg.to_dict(),
        }

    def save(state: dict[str, Any], *, best: bool = False) -> None:
        if not main:
            return
        try:
            if best:
                ckpt.save_best(state, run_dir / "checkpoints")
            else:
                ckpt.save_checkpoint(state, run_dir / "checkpoints", step, keep_last=cfg.keep_last)
        except ckpt.CheckpointError as e:
            raise TrainingError(f"training stopped at step {step}: {e}") from None

    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    writer = SummaryWriter(str(run_dir / "tensorboard")) if main else None
    train_time, eval_time, train_images = 0.0, 0.0, 0
    # The first step of a process pays for torch.compile's compilation (and allocator
    # warm-up): timed apart, so that the steady-state throughput can be told from it.
    first_step_s, first_step_images = None, 0
    last_eval: dict[str, Any] = {}
    try:
        while epoch < epochs and step < total_steps:
            train_loader.set_epoch(epoch)
            model.train()
            if finetune is not None:
                finetune.apply(model, epoch)
                if main and epoch == cfg.finetune.head_epochs > 0:
                    print(f"fine-tuning from epoch {epoch + 1}: {finetune.describe(epoch)}",
                          file=sys.stderr)  # fmt: skip
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), device=device, dtype=torch.long)
            seen, t0 = 0, time.perf_counter()
            if partial is not None:  # resuming mid-epoch: the sums of the batches before
                loss_sum = partial["loss_sum"].to(device)
                correct = partial["correct"].to(device)
                seen, partial = int(partial["seen"]), None
            batches = train_loader.iter_from(start_batch)
            bar = tqdm(
                batches,
                total=steps_per_epoch - start_batch,
                desc=f"epoch {epoch + 1}/{epochs}",
                disable=not progress,
                leave=False,
            )
            batch_idx = start_batch
            for images, labels in bar:
                targets = labels
                if mixer is not None:
                    images, targets = mixer(images, labels)
                with amp:
                    logits = forward(images)
                    loss = F.cross_entropy(
                        logits.float(), targets, label_smoothing=cfg.label_smoothing
                    )
                if not torch.isfinite(loss):
                    raise TrainingError(
                        f"the loss became {loss.item()} at step {step} (epoch {epoch + 1}): "
                        f"lower optim.lr (now {cfg.optim.lr}), add schedule.warmup_epochs or "
                        "optim.grad_clip; the last good checkpoint is kept"
                    )
                optimizer.zero_grad(set_to_none=True)
                if precision.scaler is not None:
                    precision.scaler.scale(loss).backward()
                    precision.scaler.unscale_(optimizer)
                else:
                    loss.backward()
                if cfg.optim.grad_clip > 0:
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
                if precision.scaler is not None:
                    precision.scaler.step(optimizer)
                    precision.scaler.update()
                else:
                    optimizer.step()
                scheduler.step()
                if ema is not None:
                    ema.update_parameters(model)
                step += 1
                batch_idx += 1
                n = labels.shape[0]
                if first_step_s is None:
                    first_step_s = time.perf_counter() - t0
                    first_step_images = n * dinfo.world_size  # train_images counts all ranks
                seen += n
                loss_sum += loss.detach() * n
                correct += (logits.argmax(1) == labels).sum()
                if progress and (batch_idx % 10 == 0 or batch_idx == steps_per_epoch):
                    elapsed = time.perf_counter() - t0
                    bar.set_postfix(
                        loss=f"{loss_sum.item() / seen:.3f}",
                        acc=f"{correct.item() / seen:.3f}",
                        lr=f"{scheduler.get_last_lr()[0]:.3g}",
                        img_s=f"{seen / elapsed:.0f}",
                    )
                if cfg.save_every_steps and step % cfg.save_every_steps == 0:
                    save(state_dict(epoch, batch_idx))
                if step >= total_steps:
                    break
            bar.close()
            epoch_time = time.perf_counter() - t0
            sums = _global_sums(loss_sum, correct, seen)
            seen = int(sums["seen"])
            train_time += epoch_time
            train_images += seen
            epoch += 1
            start_batch = 0
            row = {
                "epoch": epoch,
                "step": step,
                "train_loss": float(sums["loss_sum"]) / max(seen, 1),
                "train_acc": float(sums["correct"]) / max(seen, 1),
                "lr": scheduler.get_last_lr()[0],
                "epoch_time": epoch_time,
                "img_per_s": seen / epoch_time if epoch_time else None,
                # Wall time since the run (or this resume) started, evaluations excluded:
                # with test_top1, the time-to-accuracy curve.
                "wall_s": time.perf_counter() - wall_start - eval_time,
            }
            final = epoch >= epochs or step >= total_steps
            if cfg.eval_every and (epoch % cfg.eval_every == 0 or final):
                eval_model = ema.module if ema is not None else model
                eval_start = time.perf_counter()
                tally = evaluate(
                    eval_model, eval_loader, num_classes=info.num_classes, device=device,
                    autocast_dtype=precision.dtype, tta_flip=cfg.tta_flip,
                    reduce=dist.all_reduce_sum,
                )  # fmt: skip
                last_eval = tally.result(info.class_names)
                eval_time += time.perf_counter() - eval_start
                row.update(test_loss=last_eval["loss"], test_top1=last_eval["top1"],
                           test_top5=last_eval["top5"])  # fmt: skip
            if main:
                _log_row(run_dir, writer, row)
            if progress:
                shown = {k: round(v, 4) for k, v in row.items() if isinstance(v, float)}
                print(json.dumps({"epoch": epoch, "step": step, **shown}))
            is_best = "test_top1" in row and (best is None or row["test_top1"] > best)
            if is_best:
                best = row["test_top1"]
            state = state_dict(epoch, 0)
            save(state)
            if is_best:
                save(state, best=True)
    finally:
        if writer is not None:
            writer.close()

    summary = {
        "model": cfg.model,
        "data": cfg.data.spec,
        # What test_top1 was measured on: the split, and whether flipped images were averaged.
        "eval_split": cfg.data.eval_split or default_eval_split(cfg.data.spec),
        "tta_flip": cfg.tta_flip,
        "epochs": epoch,
        "steps": step,
        "test_top1": last_eval.get("top1"),
        "test_top5": last_eval.get("top5"),
        "test_loss": last_eval.get("loss"),
        "eval_n": last_eval.get("n"),
        "train_time_s": train_time,
        "wall_time_s": time.perf_counter() - wall_start,
        "eval_time_s": eval_time,
        "train_img_per_s": train_images / train_time if train_time else None,
        "first_step_s": first_step_s,
        "steady_img_per_s": (train_images - first_step_images) / (train_time - first_step_s)
        if first_step_s is not None
        and train_time > first_step_s
        and train_images > first_step_images
        else None,
        "device": str(device),
        "precision": precision.name,
        "threads": torch.get_num_threads(),
        "loader_workers": loader_workers,
        "rank": dinfo.rank,
        "world_size": dinfo.world_size,
        "global_batch_size": train_loader.batch_size * dinfo.world_size,
        "run_dir": str(run_dir),
    }
    if main:
        _finish_run(run_dir, cfg, ema.module if ema is not None else model, info, last_eval,
                    summary)  # fmt: skip
    return summary


def _global_sums(loss_sum: torch.Tensor, correct: torch.Tensor, seen: int) -> dict[str, Any]:
    """The running train loss/accuracy sums of all ranks together."""
    t = torch.stack([loss_sum.detach().double(), correct.double(),
                     torch.tensor(float(seen), device=loss_sum.device, dtype=torch.double)])  # fmt: skip
    dist.all_reduce_sum(t)
    t = t.cpu()
    return {"loss_sum": t[0].float(), "correct": t[1].long(), "seen": int(t[2])}


def _finish_run(
    run_dir: Path,
    cfg: TrainConfig,
    final_model: nn.Module,
    info: Any,
    last_eval: dict[str, Any],
    summary: dict[str, Any],
) -> None:
    """The run's final weights, plots, summary and report (rank 0)."""
    try:
        save_weights(final_model, run_dir / "model.safetensors",
                     preprocessing=info.preprocessing(), class_names=info.class_names)  # fmt: skip
    except OSError as e:
        raise TrainingError(
            f"could not write {run_dir / 'model.safetensors'}: {e.strerror or e}. The last "
            "checkpoint is intact; free space or fix permissions, then run again with --resume"
        ) from None
    rows = read_metrics(run_dir / METRICS_FILE)
    plot_curves(rows, run_dir / "curves.png", title=f"{cfg.model} on {cfg.data.spec}")
    if last_eval:
        plot_confusion(last_eval["confusion"], list(info.class_names), run_dir / "confusion.png")
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    report = getattr(final_model, "load_report", None)
    write_report(run_dir, summary, cfg.to_dict(), data_plan=info.plan, data_scan=info.scan,
                 weights_report=str(report) if cfg.weights and report else None)  # fmt: skip


def _build_model(
    cfg: TrainConfig, info: Any, card: dict[str, Any] | None, *, verbose: bool
) -> nn.Module:
    """The model of ``cfg`` for the data's classes and channels, from ``cfg.weights`` if set."""
    model_args = {k: v for k, v in cfg.model_args.items() if k != "in_chans"}
    if "weights" in model_args:
        raise TrainingError("model_args.weights: give pretrained weights as weights=SOURCE "
                            "(--weights SOURCE)")  # fmt: skip
    meta = card["meta"] if card else None
    if meta and meta.get("architecture") not in (None, "custom", cfg.model):
        raise TrainingError(
            f"{cfg.weights} holds a {meta['architecture']}, not a {cfg.model}: pass "
            f"--model {meta['architecture']} (and its model_args) to fine-tune it"
        )
    with warnings.catch_warnings():
        # the load report below says what a warning would (e.g. the head re-initialised)
        warnings.filterwarnings("ignore", message="classifier re-initialised")
        model = create_model(cfg.model, num_classes=info.num_classes,
                             in_chans=info.model_channels, weights=cfg.weights, **model_args)  # fmt: skip
    report = getattr(model, "load_report", None)
    if verbose and report is not None:
        print(str(report), file=sys.stderr)
        if report.reinitialized:
            print(f"new head: {info.num_classes} classes ({', '.join(info.class_names[:5])}"
                  f"{', ...' if info.num_classes > 5 else ''})", file=sys.stderr)  # fmt: skip
    return model


def _record_data_scan(run_dir: Path, info: Any) -> None:
    """Say how an image folder is read (one line, and its warnings) and keep the scan."""
    print(info.plan, file=sys.stderr)
    for warning in info.scan["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    text = json.dumps({"plan": info.plan, **info.scan}, indent=2)
    atomic_write(run_dir / "data_scan.json", lambda tmp: Path(tmp).write_text(text))


def _log_row(run_dir: Path, writer: Any, row: dict[str, Any]) -> None:
    try:
        with open(run_dir / METRICS_FILE, "a") as f:
            f.write(json.dumps(row) + "\n")
    except OSError as e:
        raise TrainingError(
            f"could not write {run_dir / METRICS_FILE}: {e.strerror or e}. The last checkpoint "
            "is intact; free space or fix permissions, then continue with --resume"
        ) from None
    for key, value in row.items():
        if key not in ("epoch", "step") and isinstance(value, (int, float)):
            writer.add_scalar(key, value, row["step"])
    writer.flush()


def _truncate_metrics(path: Path, epochs_done: int) -> None:
    """Drop metric rows of epochs after the checkpoint being resumed from.

    A line cut short by a crash while it was being appended is dropped too.
    """
    if not path.exists():
        return
    rows = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if (
            isinstance(row, dict)
            and isinstance(row.get("epoch"), int)
            and row["epoch"] <= epochs_done
        ):
            rows.append(row)
    text = "".join(json.dumps(r) + "\n" for r in rows)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
