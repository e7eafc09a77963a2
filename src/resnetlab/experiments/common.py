"""What the paper experiments share: models by name, data subsets, a tracked training loop.

The loop is deliberately small: it reuses the engine's optimizer, schedule and evaluation
and adds what the engine's epoch-level trainer does not record, the error on a fixed
subset of training images and on test images every ``eval_every`` iterations (the curves of
the ResNet paper's Figures 1 and 6).
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig, OptimConfig, ScheduleConfig
from ..data import CATALOG, DataInfo, InMemoryLoader, load_split, parse_data_spec
from ..device import keep_freed_host_memory, resolve_device
from ..engine.metrics import evaluate
from ..engine.optim import build_optimizer, build_scheduler
from ..engine.trainer import seed_everything
from ..errors import ResnetlabError
from ..formatting import dumps_json
from ..io import atomic_write_text
from ..models import create_model, get_config, list_models

# Names beyond the zoo: ``plainD``, ``resnetD`` and ``resnetD_v2`` at any CIFAR depth D = 6n+2,
# built from the zoo entry of the same family with ``depth=D``.
_FAMILY_TEMPLATES = {"plain": "plain20", "resnet": "resnet20", "resnet_v2": "resnet110_v2"}
_DEPTH_NAME = re.compile(r"^(plain|resnet)(\d+)(_v2)?$")


class ExperimentError(ResnetlabError, RuntimeError):
    """An experiment cannot run as asked (settings that clash with earlier results, ...)."""


class ExperimentSettingsError(ExperimentError, ValueError):
    """An experiment's setting is invalid (a size, a count, a depth): the message says which."""


def resolve_model(name: str) -> ModelConfig:
    """The config of a zoo model, or of ``plainD`` / ``resnetD`` / ``resnetD_v2`` (CIFAR, D=6n+2).

    Unknown names and impossible depths raise a ``ValueError`` that says what is allowed.
    """
    if name in list_models():
        return get_config(name)
    match = _DEPTH_NAME.match(name)
    if match is None:
        return get_config(name)  # raises "unknown model ... did you mean ..."
    family = match.group(1) + (match.group(3) or "")
    return get_config(_FAMILY_TEMPLATES[family], depth=int(match.group(2)))


def cifar_config(family: str, depth: int) -> ModelConfig:
    """A CIFAR net of the 2015 paper's section 4.2 (``plain`` or ``resnet``) at any 6n+2 depth."""
    return get_config(_FAMILY_TEMPLATES[family], depth=depth)


def build(cfg: ModelConfig, info: DataInfo, **overrides: Any) -> nn.Module:
    """``cfg`` for ``info``'s classes and channels (``overrides``: other ModelConfig fields)."""
    return create_model(
        cfg, num_classes=info.num_classes, in_chans=info.model_channels, **overrides
    )


# --------------------------------------------------------------------------------------
# Data: seeded subsets of an in-memory dataset.


@dataclass
class SubsetData:
    """Loaders over subsets of one dataset: training (augmented), a fixed subset of the
    training images (not augmented, for the training error) and test images."""

    train: InMemoryLoader
    train_eval: InMemoryLoader
    test: InMemoryLoader
    info: DataInfo

    @property
    def augmentation(self) -> str:
        t = self.train
        if t.augment == "none":
            return "no augmentation"
        flip = " + horizontal flip" if t.augment == "standard" and t.hflip else ""
        return f"random crop (padding {t.crop_padding}){flip}"

    @property
    def sizes(self) -> dict[str, int]:
        return {
            "train": self.train.dataset_size,
            "train_eval": self.train_eval.dataset_size,
            "test": self.test.dataset_size,
        }


def _take(images: torch.Tensor, labels: torch.Tensor, n: int | None, seed: int, what: str):
    total = labels.shape[0]
    if n is None or n >= total:
        return images, labels
    if n < 1:
        raise ExperimentSettingsError(
            f"{what}={n}: expected a positive number of images (or none: all)"
        )
    idx = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:n]
    return images[idx], labels[idx]


def subset_data(
    spec: str,
    *,
    data_dir: str | None = None,
    train_size: int | None = None,
    train_eval_size: int | None = 2000,
    test_size: int | None = None,
    batch_size: int = 128,
    eval_batch_size: int = 500,
    image_size: int | None = None,
    augment: str = "standard",
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> SubsetData:
    """Seeded random subsets of an in-memory dataset (``None``: the whole split).

    The training-error subset is drawn from the training subset, so it measures how well
    the net fits the images it trains on. ``image_size`` resizes (bilinear).
    """
    parsed = parse_data_spec(spec)
    images, labels, info = load_split(spec, "train", data_dir=data_dir, seed=seed)
    test_images, test_labels, _ = load_split(spec, "test", data_dir=data_dir, seed=seed)
    if image_size is not None:
        info = replace(info, image_size=image_size)
    images, labels = _take(images, labels, train_size, seed, "train_size")
    if batch_size > labels.shape[0]:
        raise ExperimentSettingsError(
            f"batch_size={batch_size} is larger than the training subset ({labels.shape[0]} "
            "images): lower the batch size or use more images"
        )
    eval_images, eval_labels = _take(images, labels, train_eval_size, seed + 1, "train_eval_size")
    test_images, test_labels = _take(test_images, test_labels, test_size, seed + 2, "test_size")
    hflip, padding = False, 4
    if parsed.kind == "builtin":
        hflip = CATALOG[parsed.name].hflip
        padding = CATALOG[parsed.name].crop_padding
    # NHWC: oneDNN's CPU convolutions and cuDNN's tensor cores prefer it (train_tracked
    # moves the model to it too).
    common = dict(device=device, seed=seed, channels_last=True)
    return SubsetData(
        train=InMemoryLoader(
            images,
            labels,
            info,
            batch_size=batch_size,
            train=True,
            augment=augment,
            hflip=hflip,
            crop_padding=padding,
            **common,
        ),
        train_eval=InMemoryLoader(
            eval_images, eval_labels, info, batch_size=eval_batch_size, train=False, **common
        ),
        test=InMemoryLoader(
            test_images, test_labels, info, batch_size=eval_batch_size, train=False, **common
        ),
        info=info,
    )


# --------------------------------------------------------------------------------------
# Training with curves.


@dataclass(frozen=True)
class Recipe:
    """SGD with momentum and a step schedule: lr x ``gamma`` at each of ``milestones``
    (fractions of ``iters``; the ResNet paper's 32k and 48k of 64k are 0.5 and 0.75)."""

    iters: int
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    milestones: tuple[float, ...] = (0.5, 0.75)
    gamma: float = 0.1
    warmup_iters: int = 0  # constant lr / 10 first (the paper's ResNet-110 warm-up)
    eval_every: int = 0  # 0: evaluate once, at the end

    def __post_init__(self) -> None:
        if not isinstance(self.iters, int) or self.iters < 1:
            raise ExperimentSettingsError(
                f"iters={self.iters!r}: expected a positive number of iterations"
            )
        if self.eval_every < 0:
            raise ExperimentSettingsError(
                f"eval_every={self.eval_every!r}: expected an integer >= 0"
            )

    def optim(self) -> OptimConfig:
        return OptimConfig(
            lr=self.lr,
            momentum=self.momentum,
            nesterov=self.nesterov,
            weight_decay=self.weight_decay,
        )

    def schedule(self) -> ScheduleConfig:
        steps = tuple(sorted({max(1, round(f * self.iters)) for f in self.milestones}))
        return ScheduleConfig(
            name="multistep",
            milestones=steps,
            milestone_unit="iter",
            gamma=self.gamma,
            constant_warmup_iters=self.warmup_iters,
        )


def _finite(value: float) -> float | None:
    return value if value == value and abs(value) != float("inf") else None


def measure_errors(model: nn.Module, data: SubsetData, device: torch.device) -> dict[str, Any]:
    """Top-1 error and loss on the training-error subset and on the test subset."""
    n = data.info.num_classes
    train = evaluate(model, data.train_eval, num_classes=n, device=device).result()
    test = evaluate(model, data.test, num_classes=n, device=device).result()
    return {
        "train_error": 1.0 - train["top1"],
        "test_error": 1.0 - test["top1"],
        "train_loss": _finite(train["loss"]),
        "test_loss": _finite(test["loss"]),
    }


def train_tracked(
    model: nn.Module,
    data: SubsetData,
    recipe: Recipe,
    *,
    device: torch.device,
    progress: bool = True,
    desc: str = "train",
    on_point: Callable[[list[dict[str, Any]]], None] | None = None,
) -> dict[str, Any]:
    """Train ``model`` for ``recipe.iters`` iterations, evaluating every ``recipe.eval_every``.

    Each point of the returned ``curve`` holds the iteration, the errors and losses of
    :func:`measure_errors`, ``batch_error`` (the running error on the augmented training
    batches since the previous point, the paper's "training error") and the lr.
    ``losses`` has the training loss of every iteration. ``on_point(curve)`` is called after
    each point, e.g. to save partial results. A loss that is not finite stops training; the
    result then says ``diverged_at``.
    """
    from tqdm import tqdm

    model.to(device, memory_format=torch.channels_last).train()
    optimizer = build_optimizer(model, recipe.optim())
    scheduler = build_scheduler(
        optimizer, recipe.schedule(), steps_per_epoch=len(data.train), total_steps=recipe.iters
    )
    curve: list[dict[str, Any]] = []
    losses: list[float] = []
    wrong = torch.zeros((), dtype=torch.long, device=device)
    seen = 0

    def point(step: int) -> None:
        nonlocal wrong, seen
        row = {"iter": step, **measure_errors(model, data, device)}
        row["batch_error"] = wrong.item() / seen if seen else None
        row["lr"] = optimizer.param_groups[0]["lr"]
        wrong.zero_()
        seen = 0
        curve.append(row)
        if on_point is not None:
            on_point(curve)

    start = time.perf_counter()
    train_time = 0.0
    if recipe.eval_every:
        point(0)
    step, epoch, diverged = 0, 0, None
    # (disable=None: no bar off a terminal, where it would be only redraws)
    bar = tqdm(total=recipe.iters, desc=desc, unit="it", disable=None if progress else True,
               leave=False)  # fmt: skip
    try:
        while step < recipe.iters and diverged is None:
            data.train.set_epoch(epoch)
            t0 = time.perf_counter()
            for images, labels in data.train:
                logits = model(images)
                loss = F.cross_entropy(logits, labels)
                if not torch.isfinite(loss):
                    diverged = step
                    break
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                step += 1
                losses.append(loss.item())
                wrong += (logits.argmax(1) != labels).sum()
                seen += labels.shape[0]
                bar.update()
                if step % 10 == 0:
                    bar.set_postfix(
                        loss=f"{loss.item():.3f}", lr=f"{scheduler.get_last_lr()[0]:.3g}"
                    )
                if recipe.eval_every and step % recipe.eval_every == 0 and step < recipe.iters:
                    train_time += time.perf_counter() - t0
                    point(step)
                    t0 = time.perf_counter()
                if step >= recipe.iters:
                    break
            train_time += time.perf_counter() - t0
            epoch += 1
    finally:
        bar.close()
    point(step)
    last = curve[-1]
    return {
        "train_error": last["train_error"],
        "test_error": last["test_error"],
        "curve": curve,
        "losses": losses,
        "iters": step,
        "diverged_at": diverged,
        "train_time_s": train_time,
        "wall_time_s": time.perf_counter() - start,
        "img_per_s": step * data.train.batch_size / train_time if train_time else None,
    }


# --------------------------------------------------------------------------------------
# Bookkeeping: settings, machine, files.


def setup(device: str = "auto", threads: int | None = None, seed: int = 0) -> torch.device:
    if threads is not None:
        if threads < 1:
            raise ExperimentSettingsError(
                f"threads={threads}: expected a positive number of threads"
            )
        torch.set_num_threads(threads)
    keep_freed_host_memory()  # no page faults on every step's activations (device.py)
    seed_everything(seed)
    return resolve_device(device)


def machine_info(device: torch.device) -> dict[str, Any]:
    """What ran the experiment: CPU model and cores, threads, torch, the GPU if any."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": str(device),
        "platform": platform.platform(terse=True),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def record_run(out: Path, device: torch.device, elapsed: float, **extra: Any) -> dict[str, Any]:
    """Add the machine and the time to ``settings.json``; a run that continues an interrupted
    one adds its time to the earlier parts'. Returns the machine and the total time."""
    saved = read_json(out / "settings.json") or {}
    meta = dict(machine=machine_info(device), time_s=saved.get("time_s", 0.0) + elapsed)
    write_json(out / "settings.json", {**saved, **meta, **extra}, exact=True)
    return meta


def write_json(path: Path, data: Any, *, exact: bool = False) -> None:
    """Write ``data`` as JSON atomically: a crash leaves the previous file intact.

    Measurements are rounded to six significant digits (float32 noise is not data);
    ``exact`` keeps every digit, for settings that a later run compares with its own.
    """
    atomic_write_text(path, json.dumps(data, indent=2) if exact else dumps_json(data, indent=2))


def read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


def prepare_output(
    output: str | os.PathLike, settings: dict[str, Any], *, overwrite: bool, results: str
) -> dict[str, Any]:
    """Create ``output`` and return the results already there for the same settings.

    A directory holding results of other settings is an error unless ``overwrite``; with
    the same settings, finished entries are kept and only the rest runs (so an interrupted
    experiment continues where it stopped).
    """
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    settings_path, results_path = out / "settings.json", out / results
    saved = read_json(settings_path)
    if saved is not None and saved.get("settings") != settings and not overwrite:
        changed = sorted(
            k
            for k in set(saved.get("settings", {})) | set(settings)
            if saved.get("settings", {}).get(k) != settings.get(k)
        )
        raise ExperimentError(
            f"{out} holds results of other settings (differing: {', '.join(changed)}); pass "
            "--overwrite to replace them, or choose another --output"
        )
    if overwrite or saved is None:
        results_path.unlink(missing_ok=True)
        write_json(settings_path, {"settings": settings}, exact=True)
        return {}
    return read_json(results_path) or {}


def resolve_plan(
    quick: bool, full: dict[str, Any], fast: dict[str, Any], chosen: dict[str, Any]
) -> tuple[dict[str, Any], str]:
    """The settings of a run: the quick or full preset with the values given explicitly
    (``chosen``, None: the preset's) on top, and a phrase naming the result."""
    preset = fast if quick else full
    plan = {k: (preset[k] if chosen.get(k) is None else chosen[k]) for k in preset}
    changed = sorted(k for k, v in chosen.items() if v is not None and v != preset.get(k))
    name = "Quick setting" if quick else "Full setting"
    return plan, name + (f" with {', '.join(changed)} changed" if changed else "")


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


# --------------------------------------------------------------------------------------
# When a comparison says nothing: nets that have learned nothing yet, or a difference that
# the finite number of images measuring it could produce by itself.

# "At chance": accuracy within this of 1/num_classes (5 points; 10% is chance on 10 classes).
CHANCE_MARGIN = 0.05


def at_chance(error: float, num_classes: int | None, margin: float = CHANCE_MARGIN) -> bool:
    """Whether a net with top-1 ``error`` is no better than guessing, give or take ``margin``."""
    if num_classes is None or num_classes < 2:
        return False
    return 1.0 - error <= 1.0 / num_classes + margin + 1e-9  # 30% is within 5 of 25


def noise_band(e1: float, e2: float, n: int | None) -> float | None:
    """Two standard errors of the difference of two error rates, each measured on ``n``
    images (binomial): the least a difference must exceed to mean anything. Differences
    between seeds can be larger still; None when ``n`` is unknown."""
    if not n:
        return None
    var = max(e1 * (1 - e1), 1e-12) / n + max(e2 * (1 - e2), 1e-12) / n
    return 2.0 * math.sqrt(var)


def chance_reason(names: list[str], errors: list[float], num_classes: int) -> str:
    accs = ", ".join(f"{n} {100 * (1 - e):.1f}%" for n, e in zip(names, errors, strict=True))
    return (
        f"{' and '.join(names)} are at chance (accuracy {accs}; guessing gives "
        f"{100 / num_classes:.1f}% on {num_classes} classes): nothing learned yet to compare"
    )


def noise_reason(what: str, diff: float, band: float, n: int) -> str:
    return (
        f"{what}, {100 * abs(diff):.2f} points, is within two standard errors of the "
        f"{n}-image sample ({100 * band:.2f} points): train longer or measure on more images"
    )


MARKS = {"held": "✓", "did not hold": "✗", "inconclusive": "?"}


def overall_verdict(statuses: list[str]) -> str:
    """One verdict from the parts': inconclusive if any part is, else held, did not hold,
    or held only in part."""
    if "inconclusive" in statuses:
        return "inconclusive"
    if all(s == "held" for s in statuses):
        return "held"
    return "did not hold" if all(s == "did not hold" for s in statuses) else "held only in part"


def verdict_sentence(verdict: str, reasons: list[str]) -> str:
    if verdict == "inconclusive":
        return "**Inconclusive** on this run: " + "; ".join(reasons) + "."
    return f"**The paper's claim {verdict}** on this run."


def md_table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines
