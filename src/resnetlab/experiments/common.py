"""What the paper experiments share: models by name, data subsets, tracked training.

Training is the engine's (``engine.trainer.build_job`` and ``train_one_epoch``: the same
step as ``resnetlab train``, with its precision, memory layout and gradient clipping); a
:class:`Tracker` hook adds what an experiment records and a training run does not, the
error on a fixed subset of training images and on test images every ``eval_every``
iterations (the curves of the ResNet paper's Figures 1 and 6).
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import DataConfig, ModelConfig, OptimConfig, ScheduleConfig, TrainConfig
from ..data import DataInfo, InMemoryLoader, build_loaders
from ..device import keep_freed_host_memory, resolve_device
from ..engine.hooks import Hook
from ..engine.metrics import evaluate
from ..engine.trainer import (
    NonFiniteLoss,
    build_job,
    resolve_precision,
    seed_everything,
    train_one_epoch,
)
from ..formatting import dumps_json
from ..io import atomic_write_text
from ..models import create_model
from .settings import (
    ExperimentError,
    ExperimentSettingsError,
    cifar_config,
    resolve_model,
)

__all__ = ["ExperimentError", "ExperimentSettingsError", "cifar_config", "resolve_model"]


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


def _pick(total: int, n: int | None, seed: int, what: str) -> torch.Tensor | None:
    """A seeded random ``n`` of ``total`` indices; None (all of them) when ``n`` is None or
    not less than ``total``."""
    if n is None or n >= total:
        return None
    if n < 1:
        raise ExperimentSettingsError(
            f"{what}={n}: expected a positive number of images (or none: all)"
        )
    return torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:n]


def _subset(
    source: InMemoryLoader, idx: torch.Tensor | None, *, batch_size: int, train: bool
) -> InMemoryLoader:
    """A loader like ``source`` (augmentation, seed, device, layout) over its ``idx``."""
    images, labels = source.images, source.labels
    if idx is not None:
        images, labels = images[idx.to(images.device)], labels[idx.to(labels.device)]
    return InMemoryLoader(
        images, labels, source.info, batch_size=batch_size, train=train,
        augment=source.augment, random_erasing=source.random_erasing, hflip=source.hflip,
        crop_padding=source.crop_padding, in_chans=source.info.in_chans, seed=source.seed,
        device=source.device, channels_last=source.channels_last,
    )  # fmt: skip


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
    channels_last: bool = True,
) -> SubsetData:
    """Seeded random subsets of an in-memory dataset (``None``: the whole split).

    The data layer reads the dataset and says how it is augmented (``build_loaders``); the
    subsets are drawn from its loaders. The training-error subset is drawn from the
    training subset, so it measures how well the net fits the images it trains on.
    ``image_size`` resizes (bilinear). ``channels_last``: NHWC batches, which oneDNN's CPU
    convolutions and cuDNN's tensor cores prefer (the engine puts the model in it too).
    """
    config = DataConfig(spec=spec, data_dir=data_dir, eval_batch_size=eval_batch_size,
                        augment=augment, image_size=image_size)  # fmt: skip
    train, test, info = build_loaders(config, seed=seed, device=device,
                                      channels_last=channels_last)  # fmt: skip
    if not isinstance(train, InMemoryLoader) or not isinstance(test, InMemoryLoader):
        raise ExperimentSettingsError(
            f"dataset={spec!r}: the experiments hold their data in memory; use fashion-mnist, "
            "mnist, cifar10, cifar100 or synthetic[:OPTIONS]"
        )
    train_idx = _pick(train.dataset_size, train_size, seed, "train_size")
    n_train = train.dataset_size if train_idx is None else len(train_idx)
    if batch_size > n_train:
        raise ExperimentSettingsError(
            f"batch_size={batch_size} is larger than the training subset ({n_train} "
            "images): lower the batch size or use more images"
        )
    eval_idx = _pick(n_train, train_eval_size, seed + 1, "train_eval_size")
    if eval_idx is not None and train_idx is not None:
        eval_idx = train_idx[eval_idx]
    elif eval_idx is None:
        eval_idx = train_idx
    test_idx = _pick(test.dataset_size, test_size, seed + 2, "test_size")
    return SubsetData(
        train=_subset(train, train_idx, batch_size=batch_size, train=True),
        train_eval=_subset(train, eval_idx, batch_size=eval_batch_size, train=False),
        test=_subset(test, test_idx, batch_size=eval_batch_size, train=False),
        info=info,
    )


# --------------------------------------------------------------------------------------
# Training with curves, through the engine's step.


@dataclass(frozen=True)
class Recipe:
    """SGD with momentum and a step schedule: lr x ``gamma`` at each of ``milestones``
    (fractions of ``iters``; the ResNet paper's 32k and 48k of 64k are 0.5 and 0.75); and
    how the engine runs each step (``precision``, ``channels_last``, ``grad_clip``)."""

    iters: int
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    milestones: tuple[float, ...] = (0.5, 0.75)
    gamma: float = 0.1
    warmup_iters: int = 0  # constant lr / 10 first (the paper's ResNet-110 warm-up)
    eval_every: int = 0  # 0: evaluate once, at the end
    precision: str = "fp32"
    channels_last: bool = True
    grad_clip: float = 0.0  # max global gradient norm; 0: off

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
            grad_clip=self.grad_clip,
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

    def train_config(self, device: torch.device) -> TrainConfig:
        """The engine's config of this recipe: ``iters`` steps, no run directory's own
        evaluation (the :class:`Tracker` measures)."""
        return TrainConfig(
            optim=self.optim(),
            schedule=self.schedule(),
            max_iters=self.iters,
            precision=self.precision,
            channels_last=self.channels_last,
            device=str(device),
            eval_every=0,
        )


def _finite(value: float) -> float | None:
    return value if value == value and abs(value) != float("inf") else None


def measure_errors(
    model: nn.Module,
    data: SubsetData,
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
) -> dict[str, Any]:
    """Top-1 error and loss on the training-error subset and on the test subset."""
    n = data.info.num_classes
    kw = dict(num_classes=n, device=device, autocast_dtype=autocast_dtype)
    train = evaluate(model, data.train_eval, **kw).result()
    test = evaluate(model, data.test, **kw).result()
    return {
        "train_error": 1.0 - train["top1"],
        "test_error": 1.0 - test["top1"],
        "train_loss": _finite(train["loss"]),
        "test_loss": _finite(test["loss"]),
    }


class Tracker(Hook):
    """The curves of a tracked run (the ResNet paper's Figures 1 and 6), as an engine hook.

    Every ``eval_every`` steps (and by :meth:`point`) a point of ``curve``: the iteration,
    the errors and losses of :func:`measure_errors`, ``batch_error`` (the running error on
    the augmented training batches since the previous point, the paper's "training error")
    and the lr. ``losses``: every step's training loss. ``on_point(curve)`` after each
    point, e.g. to save partial results. The time of the points counts as evaluation
    (``st.timing.eval_s``).
    """

    def __init__(
        self,
        data: SubsetData,
        eval_every: int,
        on_point: Callable[[list[dict[str, Any]]], None] | None = None,
    ) -> None:
        self.data, self.eval_every, self.on_point = data, eval_every, on_point
        self.curve: list[dict[str, Any]] = []
        self._losses: list[torch.Tensor] = []
        self._wrong: torch.Tensor | None = None
        self._seen = 0

    @property
    def losses(self) -> list[float]:
        return torch.stack(self._losses).tolist() if self._losses else []

    def after_step(self, job: Any, st: Any) -> None:
        last = st.last
        self._losses.append(last.loss)  # kept on the device: no wait for it at every step
        wrong = (last.output.argmax(1) != last.targets).sum()
        self._wrong = wrong if self._wrong is None else self._wrong + wrong
        self._seen += last.targets.shape[0]
        if self.eval_every and st.step % self.eval_every == 0 and st.step < job.total_steps:
            self.point(job, st)

    def point(self, job: Any, st: Any) -> None:
        t0 = time.perf_counter()
        row = {
            "iter": st.step,
            **measure_errors(st.eval_model, self.data, job.device, job.precision.dtype),
        }
        row["batch_error"] = self._wrong.item() / self._seen if self._seen else None
        row["lr"] = st.optimizer.param_groups[0]["lr"]
        self._wrong, self._seen = None, 0
        self.curve.append(row)
        if self.on_point is not None:
            self.on_point(self.curve)
        st.timing.eval_s += time.perf_counter() - t0


def train_tracked(
    model: nn.Module,
    data: SubsetData,
    recipe: Recipe,
    *,
    device: torch.device,
    progress: bool = True,
    desc: str = "train",
    on_point: Callable[[list[dict[str, Any]]], None] | None = None,
    hooks: Sequence[Hook] = (),
) -> dict[str, Any]:
    """Train ``model`` for ``recipe.iters`` steps of the engine, with a :class:`Tracker`
    evaluating every ``recipe.eval_every`` and after the last step.

    The steps are the engine's (``train_one_epoch``: autocast, gradient scaling, clipping,
    schedule), with ``hooks`` after the tracker's (e.g. a gradient probe). Returns the final
    errors, the tracker's ``curve`` and ``losses``, the steps trained, and the training time
    (evaluations excluded). A loss that is not finite stops training; the result then says
    ``diverged_at`` (the steps completed before it).
    """
    tracker = Tracker(data, recipe.eval_every, on_point)
    job, st = build_job(recipe.train_config(device), model, data.train, data.test, data.info,
                        device=device, hooks=[tracker, *hooks], progress=progress, name=desc)  # fmt: skip
    start = time.perf_counter()
    if recipe.eval_every:
        tracker.point(job, st)
    t0, eval0 = time.perf_counter(), st.timing.eval_s
    diverged = None
    try:
        while st.step < job.total_steps:
            if train_one_epoch(job, st):
                for hook in job.hooks:
                    hook.after_epoch(job, st)
    except NonFiniteLoss as e:
        diverged = e.step
    train_time = time.perf_counter() - t0 - (st.timing.eval_s - eval0)
    tracker.point(job, st)
    last = tracker.curve[-1]
    return {
        "train_error": last["train_error"],
        "test_error": last["test_error"],
        "curve": tracker.curve,
        "losses": tracker.losses,
        "iters": st.step,
        "diverged_at": diverged,
        "train_time_s": train_time,
        "wall_time_s": time.perf_counter() - start,
        "img_per_s": st.step * data.train.batch_size / train_time if train_time else None,
    }


# --------------------------------------------------------------------------------------
# Bookkeeping: settings, machine, files.


def setup(
    device: str = "auto", threads: int | None = None, seed: int = 0, precision: str = "fp32"
) -> torch.device:
    """The device, with torch's threads, the seed and the host memory set for a run; a
    ``precision`` the device cannot train in is refused here, before any data is read."""
    if threads is not None:
        if threads < 1:
            raise ExperimentSettingsError(
                f"threads={threads}: expected a positive number of threads"
            )
        torch.set_num_threads(threads)
    keep_freed_host_memory()  # no page faults on every step's activations (device.py)
    seed_everything(seed)
    dev = resolve_device(device)
    resolve_precision(precision, dev)
    return dev


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
    settings = json.loads(json.dumps(settings))  # as read back: tuples are lists
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


def claim_summary(lines: list[str], claim: dict[str, Any], report: Path, figure: Path) -> str:
    """The text an experiment prints at its end: a line per net, the claim's lines and its
    verdict (without Markdown), and where the report and the figure are."""
    verdict = verdict_sentence(claim["verdict"], claim["reasons"]).replace("**", "")
    return "\n".join([*lines, *claim["lines"], verdict, f"report: {report}  figure: {figure}"])


def md_table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def engine_phrase(settings: dict[str, Any]) -> str:
    """How the steps ran, where that differs from the defaults (fp32, NHWC, no clipping):
    e.g. " (bf16 autocast, gradients clipped at norm 1)", else ""."""
    parts = []
    if settings.get("precision", "fp32") != "fp32":
        parts.append(f"{settings['precision']} autocast")
    if settings.get("channels_last") is False:
        parts.append("NCHW memory layout")
    if settings.get("grad_clip"):
        parts.append(f"gradients clipped at norm {settings['grad_clip']:g}")
    return f" ({', '.join(parts)})" if parts else ""
