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
import time
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
from ..models import create_model, save_weights
from ..models.weights import weights_meta
from . import checkpoint as ckpt
from .metrics import evaluate
from .optim import build_optimizer, build_scheduler
from .report import plot_confusion, plot_curves, read_metrics, write_report

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
# Settings that may change on --resume without changing the run's meaning.
RESUMABLE_CHANGES = {"epochs", "max_iters", "device", "output", "keep_last", "save_every_steps",
                     "eval_every", "threads", "compile"}  # fmt: skip


class TrainingError(RuntimeError):
    """Training cannot go on (NaN loss, a refused resume, a run directory in the way)."""


@dataclass
class Precision:
    dtype: torch.dtype | None  # autocast dtype, None for fp32
    scaler: torch.amp.GradScaler | None

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"device={name!r} asked for, but CUDA is not available here")
    return device


def cpu_has_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matmuls run natively instead of being emulated."""
    caps = torch.backends.cpu.get_cpu_capability()
    return caps in ("AVX512_BF16", "AMX") or "AMX" in caps or torch.cpu._is_avx512_bf16_supported()


def resolve_precision(name: str, device: torch.device) -> Precision:
    if name == "auto":
        if device.type == "cuda":
            name = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            name = "bf16" if cpu_has_bf16() else "fp32"
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


def _prepare_run_dir(cfg: TrainConfig, *, resume: bool, overwrite: bool) -> TrainConfig:
    """Create the run directory, or check it on resume; returns the config to run."""
    import yaml

    run_dir = Path(cfg.output)
    saved_path = run_dir / CONFIG_FILE
    if resume:
        if not saved_path.exists():
            raise TrainingError(f"nothing to resume in {run_dir}: no {CONFIG_FILE} there")
        saved = yaml.safe_load(saved_path.read_text())
        diffs = _config_diffs(saved, cfg.to_dict())
        refused = [d for d in diffs if d.split(":")[0].split(".")[0] not in RESUMABLE_CHANGES]
        if refused:
            raise TrainingError(
                f"--resume with settings that differ from the run in {run_dir}: "
                + "; ".join(refused)
                + ". Resume with the original settings (only epochs, max_iters, device and "
                "checkpoint options may change), or start a new run with another --output"
            )
        saved_path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return cfg
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise TrainingError(
                f"{run_dir} already holds a run: pass --resume to continue it, --overwrite to "
                "replace it, or another --output"
            )
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    saved_path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return cfg


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
    """Train a model as ``config`` says; returns the final metrics (also in ``report.md``)."""
    cfg = config if isinstance(config, TrainConfig) else build_dataclass(TrainConfig, config)
    cfg = _prepare_run_dir(cfg, resume=resume, overwrite=overwrite)
    run_dir = Path(cfg.output)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    seed_everything(cfg.seed)

    d = cfg.data
    in_chans = cfg.model_args.get("in_chans")
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
        num_workers=d.num_workers,
        device=device,
        channels_last=cfg.channels_last,
        val_fraction=d.val_fraction,
        skip_bad_images=d.skip_bad_images,
        image_size=d.image_size,
    )
    model_args = {k: v for k, v in cfg.model_args.items() if k != "in_chans"}
    model = create_model(
        cfg.model, num_classes=info.num_classes, in_chans=info.model_channels, **model_args
    ).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg.optim)
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
    forward = torch.compile(model) if cfg.compile else model
    mixer = _mixer(cfg, info.num_classes)
    amp = torch.autocast(device.type, dtype=precision.dtype) if precision.dtype else nullcontext()

    step, epoch, start_batch, best = 0, 0, 0, None
    if resume:
        found = ckpt.load_latest(run_dir / "checkpoints")
        if found is None:
            raise TrainingError(f"no readable checkpoint in {run_dir / 'checkpoints'} to resume")
        path, state = found
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        if precision.scaler is not None and state.get("scaler") is not None:
            precision.scaler.load_state_dict(state["scaler"])
        step, epoch, start_batch = state["step"], state["epoch"], state["batch"]
        best = state.get("best")
        set_rng_state(state["rng"])
        _truncate_metrics(run_dir / METRICS_FILE, epoch)
        if progress:
            print(f"resuming from {path.name}: epoch {epoch + 1}, batch {start_batch}, step {step}")

    def state_dict(next_epoch: int, next_batch: int) -> dict[str, Any]:
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
            "config": cfg.to_dict(),
        }

    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    writer = SummaryWriter(str(run_dir / "tensorboard"))
    train_time, train_images, wall_start = 0.0, 0, time.perf_counter()
    last_eval: dict[str, Any] = {}
    try:
        while epoch < epochs and step < total_steps:
            train_loader.set_epoch(epoch)
            model.train()
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), device=device, dtype=torch.long)
            seen, t0 = 0, time.perf_counter()
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
                    ckpt.save_checkpoint(
                        state_dict(epoch, batch_idx), run_dir / "checkpoints", step,
                        keep_last=cfg.keep_last,
                    )  # fmt: skip
                if step >= total_steps:
                    break
            bar.close()
            epoch_time = time.perf_counter() - t0
            train_time += epoch_time
            train_images += seen
            epoch += 1
            start_batch = 0
            row = {
                "epoch": epoch,
                "step": step,
                "train_loss": loss_sum.item() / max(seen, 1),
                "train_acc": correct.item() / max(seen, 1),
                "lr": scheduler.get_last_lr()[0],
                "epoch_time": epoch_time,
                "img_per_s": seen / epoch_time if epoch_time else None,
            }
            final = epoch >= epochs or step >= total_steps
            if cfg.eval_every and (epoch % cfg.eval_every == 0 or final):
                eval_model = ema.module if ema is not None else model
                tally = evaluate(
                    eval_model, eval_loader, num_classes=info.num_classes, device=device,
                    autocast_dtype=precision.dtype, tta_flip=cfg.tta_flip,
                )  # fmt: skip
                last_eval = tally.result(info.class_names)
                row.update(test_loss=last_eval["loss"], test_top1=last_eval["top1"],
                           test_top5=last_eval["top5"])  # fmt: skip
            _log_row(run_dir, writer, row)
            if progress:
                shown = {k: round(v, 4) for k, v in row.items() if isinstance(v, float)}
                print(json.dumps({"epoch": epoch, "step": step, **shown}))
            is_best = "test_top1" in row and (best is None or row["test_top1"] > best)
            if is_best:
                best = row["test_top1"]
            state = state_dict(epoch, 0)
            ckpt.save_checkpoint(state, run_dir / "checkpoints", step, keep_last=cfg.keep_last)
            if is_best:
                ckpt.save_best(state, run_dir / "checkpoints")
    finally:
        writer.close()

    final_model = ema.module if ema is not None else model
    save_weights(final_model, run_dir / "model.safetensors",
                 preprocessing=info.preprocessing(), class_names=info.class_names)  # fmt: skip
    rows = read_metrics(run_dir / METRICS_FILE)
    plot_curves(rows, run_dir / "curves.png", title=f"{cfg.model} on {cfg.data.spec}")
    if last_eval:
        plot_confusion(last_eval["confusion"], list(info.class_names), run_dir / "confusion.png")
    summary = {
        "model": cfg.model,
        "data": cfg.data.spec,
        "epochs": epoch,
        "steps": step,
        "test_top1": last_eval.get("top1"),
        "test_top5": last_eval.get("top5"),
        "test_loss": last_eval.get("loss"),
        "eval_n": last_eval.get("n"),
        "train_time_s": train_time,
        "wall_time_s": time.perf_counter() - wall_start,
        "train_img_per_s": train_images / train_time if train_time else None,
        "device": str(device),
        "precision": precision.name,
        "threads": torch.get_num_threads(),
        "run_dir": str(run_dir),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    write_report(run_dir, summary, cfg.to_dict())
    return summary


def _log_row(run_dir: Path, writer: Any, row: dict[str, Any]) -> None:
    with open(run_dir / METRICS_FILE, "a") as f:
        f.write(json.dumps(row) + "\n")
    for key, value in row.items():
        if key not in ("epoch", "step") and isinstance(value, (int, float)):
            writer.add_scalar(key, value, row["step"])
    writer.flush()


def _truncate_metrics(path: Path, epochs_done: int) -> None:
    """Drop metric rows of epochs after the checkpoint being resumed from."""
    rows = [r for r in read_metrics(path) if r["epoch"] <= epochs_done]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
