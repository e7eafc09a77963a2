"""The training engine: one function, ``train(config)``, that turns a config into a run.

A run directory holds the resolved config (``config.yaml``), per-epoch metrics
(``metrics.jsonl`` and TensorBoard events), checkpoints, the final weights
(``model.safetensors`` + sidecar), ``curves.png``, ``confusion.png`` and ``report.md``.

The pieces, each in one place: the run directory and its lock (``rundir.py``), the state of
a run and its checkpoint form (``state.py``: :class:`TrainState`), one optimizer step
(:func:`train_step`), one epoch (:func:`train_one_epoch`), and here the order of it all.

:func:`build_job` makes the job and state of a given model on given loaders with no run
directory: the paper experiments train through the same step and epoch that way, measuring
what they need with hooks (``budget.py``).
"""

from __future__ import annotations

import errno
import json
import math
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import TrainConfig, build_config, run_precision
from ..device import keep_freed_host_memory, resolve_device
from ..errors import TrainingError, TrainingInterrupted
from ..formatting import dumps_json, round_floats
from ..io import atomic_write_text
from . import checkpoint as ckpt
from . import distributed as dist
from . import rundir
from .budget import build_hooks
from .finetune import FineTuning
from .hooks import Hook
from .optim import build_optimizer, build_scheduler
from .report import plot_curves, read_metrics, write_report
from .rundir import CONFIG_FILE, METRICS_FILE, RESUMABLE_CHANGES, SUMMARY_FILE
from .state import (
    Precision,
    StepResult,
    TrainState,
    resolve_precision,
    rng_state,
    seed_everything,
    set_rng_state,
)
from .tasks import Task, build_task

__all__ = ["CONFIG_FILE", "METRICS_FILE", "RESUMABLE_CHANGES", "Job", "NonFiniteLoss", "Plan",
           "Precision", "StepResult", "TrainState", "TrainingError", "TrainingInterrupted",
           "build_job", "new_state", "resolve_precision", "rng_state", "seed_everything",
           "set_rng_state", "train", "train_one_epoch", "train_step"]  # fmt: skip
# Off a terminal, progress is one line per this many seconds instead of a redrawn bar.
LOG_EVERY_S = 30.0


class NonFiniteLoss(TrainingError):
    """A step's loss was not finite; ``step`` is the number of steps completed before it
    (the optimizer did not take that step)."""

    def __init__(self, message: str, step: int) -> None:
        super().__init__(message)
        self.step = step


def train(
    config: TrainConfig | dict[str, Any],
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    epoch_lines: bool | None = None,
) -> dict[str, Any]:
    """Train a model as ``config`` says; returns the final metrics (also in ``report.md``).

    ``progress``: a bar on a terminal, else a line every 30 s (stderr); ``epoch_lines``
    (default: as ``progress``): each epoch's metrics as one JSON line on stdout.

    Under ``torchrun`` every process runs this same function: each trains on its shard of
    the data with DistributedDataParallel, rank 0 alone writes the run directory, and a
    group restarted by ``torchrun --max-restarts`` resumes from the last checkpoint.
    """
    cfg = config if isinstance(config, TrainConfig) else build_config(TrainConfig, config)
    device = resolve_device(cfg.device)
    dinfo = dist.setup(device, cfg.dist_timeout_s)
    if dinfo.enabled and device.type == "cuda":
        device = torch.device("cuda", dinfo.local_rank)
    if dist.restarted(device) and (Path(cfg.output) / CONFIG_FILE).exists():
        resume = True  # a worker group restarted by torchrun continues the run
    lock = None
    try:
        # Rank 0 takes the run directory (lock, checks, config); the others learn the outcome.
        error, resume_ok = None, resume
        if dinfo.is_main:
            try:
                lock, resume_ok = rundir.open_run(cfg, resume=resume, overwrite=overwrite)
                run_dir = Path(cfg.output)
                if resume and not resume_ok:
                    print(f"{run_dir} stopped before its first checkpoint: starting it again",
                          file=sys.stderr)  # fmt: skip
                if resume_ok:
                    ckpt.remove_stale_temps(run_dir / "checkpoints")
            except TrainingError as e:
                error = str(e)
        error, resume_ok = dist.broadcast_object((error, resume_ok))
        if error:
            raise TrainingError(error)
        lines = progress if epoch_lines is None else epoch_lines
        return _train(cfg, dinfo, device, resume=resume_ok, progress=progress, epoch_lines=lines)
    except TrainingError as e:
        if dinfo.enabled:
            raise TrainingError(f"rank {dinfo.rank}/{dinfo.world_size}: {e}") from None
        raise
    finally:
        if lock is not None:
            lock.release()
        dist.cleanup()


@dataclass
class Plan:
    """The run's length in optimizer steps; the schedule reads it at every step."""

    total_steps: int


@dataclass
class Job:
    """What stays fixed while a run trains: the config, data, device and the step's parts."""

    cfg: TrainConfig
    dinfo: dist.DistInfo
    device: torch.device
    precision: Precision
    train_loader: Any
    eval_loader: Any
    info: Any
    task: Task
    forward: nn.Module  # the model as called (DDP-wrapped, compiled)
    run_dir: Path | None  # None: a job that writes nothing (build_job without a run directory)
    plan: Plan
    finetune: FineTuning | None = None
    hooks: list[Hook] = field(default_factory=list)
    progress: bool = True
    name: str = ""  # heads the progress lines
    epoch_lines: bool = True
    wall_start: float = field(default_factory=time.perf_counter)
    wall_offset: float = 0.0  # wall time of the run before this process (resumed runs)
    loader_workers: int = 0
    first_step: tuple[float, int] | None = None  # (seconds, images) of this process's first
    epoch_stats: tuple[float, int] = (0.0, 0)  # (seconds, images) of the last epoch's training

    @property
    def main(self) -> bool:
        return self.dinfo.is_main

    @property
    def total_steps(self) -> int:
        return self.plan.total_steps

    @property
    def epochs(self) -> int:
        return math.ceil(self.plan.total_steps / self.steps_per_epoch)

    def set_total_steps(self, total: int) -> None:
        """A new length of the run (a hook's plan); the schedule follows it."""
        self.plan.total_steps = total

    @property
    def steps_per_epoch(self) -> int:
        return len(self.train_loader)

    def wall(self) -> float:
        return self.wall_offset + time.perf_counter() - self.wall_start


def _train(
    cfg: TrainConfig,
    dinfo: dist.DistInfo,
    device: torch.device,
    *,
    resume: bool,
    progress: bool,
    epoch_lines: bool,
) -> dict[str, Any]:
    wall_start = time.perf_counter()  # data loading and model set-up count as wall time
    keep_freed_host_memory()  # no page faults on every step's activations (device.py)
    job, st = _build(cfg, dinfo, device, progress=progress and dinfo.is_main)
    job.wall_start, job.epoch_lines = wall_start, epoch_lines and dinfo.is_main
    if resume:
        _restore(job, st)
    finished = st.step >= job.total_steps or st.epoch >= job.epochs
    if resume and job.main:  # the settings it continues with (epochs, max_iters, ...)
        rundir.write_config(job.run_dir / CONFIG_FILE, cfg)
        _truncate_metrics(job.run_dir / METRICS_FILE, st.epoch)  # rows after the checkpoint
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(job.run_dir / "tensorboard")) if job.main else None
    last_eval: dict[str, Any] = {}
    try:
        with _stop_on_signal(enabled=not dinfo.enabled) as stop:
            while not finished:
                complete = train_one_epoch(job, st, stop=stop)
                if complete:
                    for hook in job.hooks:
                        hook.after_epoch(job, st)
                finished = st.step >= job.total_steps or st.epoch >= job.epochs
                if complete or finished:  # (max_iters may end a run inside an epoch)
                    last_eval = _end_epoch(job, st, writer, final=finished)
        if not last_eval and cfg.eval_every:
            # the last epoch ended mid-way (max_iters), or a resumed run had only its
            # final export left: the final figures come from a fresh evaluation
            last_eval = _evaluate(job, st)
    finally:
        if writer is not None:
            writer.close()
    st.timing.wall_s = job.wall()
    summary = round_floats(_summary(job, st, last_eval), None)  # as summary.json has it
    if job.main:
        _save(job, st)  # the final position and timing, for an extension later
        _finish_run(job, st.eval_model, last_eval, summary)
    return summary


def _build(
    cfg: TrainConfig, dinfo: dist.DistInfo, device: torch.device, *, progress: bool
) -> tuple[Job, TrainState]:
    """Loaders, model, optimizer and schedule of ``cfg``: the job and its starting state."""
    main = dinfo.is_main
    run_dir = Path(cfg.output)
    # Ranks training side by side on one CPU take their share of its cores (distributed.py).
    threads, loader_workers = dist.cpu_resources(
        dinfo, device, threads=cfg.threads, num_workers=cfg.data.num_workers, announce=main
    )
    if threads:
        torch.set_num_threads(threads)
    seed_everything(cfg.seed)
    task = build_task(cfg)
    precision = resolve_precision(run_precision(cfg.precision, cfg.task, device), device)
    train_loader, eval_loader, info = task.build_data(dinfo, device, loader_workers, run_dir,
                                                      verbose=main)  # fmt: skip
    model = task.build_model(info, verbose=main)
    return build_job(cfg, model, train_loader, eval_loader, info, device=device, dinfo=dinfo,
                     task=task, precision=precision, run_dir=run_dir, progress=progress,
                     loader_workers=loader_workers)  # fmt: skip


def build_job(
    cfg: TrainConfig,
    model: nn.Module,
    train_loader: Any,
    eval_loader: Any,
    info: Any,
    *,
    device: torch.device | str | None = None,
    dinfo: dist.DistInfo | None = None,
    task: Task | None = None,
    precision: Precision | None = None,
    hooks: Sequence[Hook] = (),
    run_dir: str | Path | None = None,
    progress: bool = True,
    name: str = "",
    loader_workers: int = 0,
) -> tuple[Job, TrainState]:
    """The job and starting state that train ``model`` on given loaders as ``cfg`` says.

    ``model`` is moved to ``device`` (default: ``cfg.device``) in place, in channels_last
    when the task trains so; the optimizer, schedule (over ``cfg.max_iters``, else
    ``cfg.epochs`` of ``train_loader``), EMA and gradient scaler are ``cfg``'s
    (:func:`new_state`). ``hooks`` run after ``cfg``'s own (the time budget). ``task``
    (default: ``cfg.task``'s, prepared for ``info``) computes the loss. Without ``run_dir``
    nothing is written: the checkpoints :func:`train_one_epoch` would save are skipped.
    ``name`` heads the progress lines. Train it with :func:`train_one_epoch` or
    :func:`train_step`; ``train`` builds its runs with this too.
    """
    device = resolve_device(cfg.device) if device is None else torch.device(device)
    dinfo = dist.DistInfo() if dinfo is None else dinfo
    precision = resolve_precision(cfg.precision, device) if precision is None else precision
    if task is None:
        task = build_task(cfg)
        task.use_data(info, device)
    model, finetune = _place_model(cfg, model, task, device, dinfo)
    plan = Plan(cfg.max_iters or cfg.epochs * len(train_loader))
    st = new_state(cfg, model, plan, steps_per_epoch=len(train_loader), precision=precision,
                   backbone_lr_scale=cfg.finetune.backbone_lr_scale if finetune else 1.0)  # fmt: skip
    job = Job(cfg=cfg, dinfo=dinfo, device=device, precision=precision,
              train_loader=train_loader, eval_loader=eval_loader, info=info, task=task,
              forward=_forward_module(cfg, model, dinfo, device, finetune),
              run_dir=None if run_dir is None else Path(run_dir), plan=plan, finetune=finetune,
              hooks=[*build_hooks(cfg, plan.total_steps, announce=dinfo.is_main), *hooks],
              progress=progress, name=name, loader_workers=loader_workers)  # fmt: skip
    return job, st


def new_state(
    cfg: TrainConfig,
    model: nn.Module,
    plan: Plan,
    *,
    steps_per_epoch: int,
    precision: Precision,
    backbone_lr_scale: float = 1.0,
) -> TrainState:
    """A fresh state for ``model`` (already on its device): ``cfg``'s optimizer, its
    schedule over ``plan`` (read at every step, so a re-planned run moves it), the EMA of
    the weights when ``cfg.ema_decay`` asks for one, and ``precision``'s gradient scaler."""
    optimizer = build_optimizer(model, cfg.optim, backbone_lr_scale=backbone_lr_scale)
    scheduler = build_scheduler(optimizer, cfg.schedule, steps_per_epoch=steps_per_epoch,
                                total_steps=lambda: plan.total_steps)  # fmt: skip
    ema = None
    if cfg.ema_decay > 0:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(
            model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True
        )
    return TrainState(model, optimizer, scheduler, ema, precision.scaler)


def _place_model(
    cfg: TrainConfig, model: nn.Module, task: Task, device: torch.device, dinfo: dist.DistInfo
) -> tuple[nn.Module, FineTuning | None]:
    """``model`` on ``device`` (synchronised BN across ranks, channels_last as the task
    says) and what fine-tuning freezes of it."""
    model = model.to(device)
    if cfg.sync_bn and dinfo.enabled:
        dist.convert_sync_batchnorm(model)
    finetune = task.finetuning(model)
    if dinfo.is_main and finetune is not None:
        print(f"fine-tuning: {finetune.describe(0)}", file=sys.stderr)
    if task.channels_last(device):
        model = model.to(memory_format=torch.channels_last)
    return model, finetune


def _forward_module(cfg: TrainConfig, model: nn.Module, dinfo: dist.DistInfo,
                    device: torch.device, finetune: FineTuning | None) -> nn.Module:  # fmt: skip
    """The model as the step calls it: DDP-wrapped across ranks, compiled when asked."""
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
    return forward


def _restore(job: Job, st: TrainState) -> None:
    """Continue from the newest readable checkpoint of the run."""
    found = ckpt.load_latest(job.run_dir / "checkpoints")
    if found is None:
        raise TrainingError(f"no readable checkpoint in {job.run_dir / 'checkpoints'} to resume")
    path, state = found
    if isinstance(state.get("config"), dict):
        rundir.check_resumable(state["config"], job.cfg, f"the checkpoint {path}")
    st.load_state_dict(state)
    planned = state.get("planned_steps")
    if job.cfg.budget_s is not None and isinstance(planned, int):
        # the plan of the run so far (a hook re-plans it from this process's speed)
        job.set_total_steps(min(planned, job.total_steps))
    job.wall_offset = st.timing.wall_s
    if job.main:
        print(f"resuming from {path.name}: epoch {st.epoch + 1}, batch {st.batch}, "
              f"step {st.step}", file=sys.stderr)  # fmt: skip


@contextmanager
def _stop_on_signal(*, enabled: bool) -> Iterator[threading.Event]:
    """SIGINT/SIGTERM ask the loop to stop after the current step (a second SIGINT at once).

    The loop saves a checkpoint of that step and raises :class:`TrainingInterrupted`, so an
    interrupted run continues with ``--resume``. Under torchrun the launcher handles signals.
    """
    stop = threading.Event()
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, frame: Any) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.set()
        print(f"\n{signal.Signals(signum).name}: stopping after this step "
              "(press Ctrl-C again to stop at once)", file=sys.stderr)  # fmt: skip

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def train_step(job: Job, st: TrainState, images: Any, targets: Any) -> tuple[torch.Tensor, Any]:
    """One optimizer step: the task's loss under autocast, scaling, clipping, schedule, EMA.

    Returns the (detached) loss and the model's output, also left in ``st.last`` for the
    hooks. A loss that is not finite raises :class:`NonFiniteLoss` before the step.
    """
    cfg, precision = job.cfg, job.precision
    amp = (
        torch.autocast(job.device.type, dtype=precision.dtype) if precision.dtype else nullcontext()
    )
    with amp:
        loss, output = job.task.loss(job.forward, images, targets)
    if not torch.isfinite(loss):
        raise NonFiniteLoss(
            f"the loss became {loss.item()} at step {st.step} (epoch {st.epoch + 1}): "
            f"lower optim.lr (now {cfg.optim.lr}), add schedule.warmup_epochs or "
            "optim.grad_clip; the last good checkpoint is kept",
            st.step,
        )
    st.last = StepResult(loss.detach(),
                         output.detach() if isinstance(output, torch.Tensor) else output,
                         targets)  # fmt: skip
    st.optimizer.zero_grad(set_to_none=True)
    if st.scaler is not None:
        st.scaler.scale(loss).backward()
        st.scaler.unscale_(st.optimizer)
    else:
        loss.backward()
    for hook in job.hooks:
        hook.after_backward(job, st)
    if cfg.optim.grad_clip > 0:
        nn.utils.clip_grad_norm_(st.model.parameters(), cfg.optim.grad_clip)
    if st.scaler is not None:
        st.scaler.step(st.optimizer)
        st.scaler.update()
    else:
        st.optimizer.step()
    st.scheduler.step()
    if st.ema is not None:
        st.ema.update_parameters(st.model)
    st.step += 1
    return loss.detach(), output


def _plain_epoch(job: Job, st: TrainState) -> bool:
    """Whether ``st``'s epoch is one of the last ``data.plain_final_epochs`` of the run as
    planned now (a time budget's plan included), which train without augmentation."""
    n = job.cfg.data.plain_final_epochs
    return n > 0 and st.epoch >= job.epochs - n


def _train_size(job: Job, st: TrainState) -> int | None:
    """The side ``st``'s epoch trains at under progressive resizing (``data.resize_from``):
    ``resize_from`` px at the first epoch, growing linearly to the full size, which it is from
    ``resize_until`` of the run's epochs as planned now (a time budget's plan included) on.
    None: the full size."""
    d, full = job.cfg.data, job.info.image_size
    ramp = d.resize_until * job.epochs
    if not d.resize_from or d.resize_from >= full or st.epoch >= ramp:
        return None
    return round(d.resize_from + (full - d.resize_from) * st.epoch / ramp)


def train_one_epoch(job: Job, st: TrainState, *, stop: threading.Event | None = None) -> bool:
    """Train from ``st``'s position to the end of its epoch (or to ``total_steps``).

    Returns True when the epoch was completed (then ``st.epoch`` has advanced); False when
    ``total_steps`` was reached inside it. Checkpoints every ``save_every_steps`` steps.
    """
    cfg, spe = job.cfg, job.steps_per_epoch
    plain = _plain_epoch(job, st)
    job.train_loader.set_epoch(st.epoch, augment=not plain)
    job.task.augment = not plain
    if plain and job.main and st.batch == 0:
        print(f"epoch {st.epoch + 1}: trains without augmentation (data.plain_final_epochs="
              f"{cfg.data.plain_final_epochs})", file=sys.stderr)  # fmt: skip
    size = _train_size(job, st)
    job.task.train_scale = None if size is None else size / job.info.image_size
    if size is not None and job.main and st.batch == 0:
        print(f"epoch {st.epoch + 1}: trains at {size} px of {job.info.image_size} (progressive "
              f"resizing: data.resize_from={cfg.data.resize_from})", file=sys.stderr)  # fmt: skip
    st.model.train()
    if job.finetune is not None:
        job.finetune.apply(st.model, st.epoch)
        if job.main and st.epoch == cfg.finetune.head_epochs > 0:
            print(f"fine-tuning from epoch {st.epoch + 1}: {job.finetune.describe(st.epoch)}",
                  file=sys.stderr)  # fmt: skip
    loss_sum = torch.zeros((), device=job.device)
    correct = torch.zeros((), device=job.device, dtype=torch.long)
    seen, t0 = 0, time.perf_counter()
    if st.sums is not None and st.batch:  # resuming mid-epoch: the sums of the batches before
        if job.main:  # (reduced over all ranks: rank 0 alone carries them on)
            loss_sum, correct = (
                st.sums["loss_sum"].to(job.device),
                st.sums["correct"].to(job.device),
            )
            seen = int(st.sums["seen"])
        st.sums = None
    images_before, train_s0, images0 = seen, st.timing.train_s, st.timing.images
    with _Progress(job, st, total=spe - st.batch) as bar:
        for images, targets in job.train_loader.iter_from(st.batch):
            loss, output = train_step(job, st, images, targets)
            st.batch += 1
            for hook in job.hooks:
                hook.after_step(job, st)
            n = job.task.batch_size(targets)
            if job.first_step is None:
                job.first_step = (time.perf_counter() - t0, n * job.dinfo.world_size)
            seen += n
            loss_sum += loss * n
            hits = job.task.correct(output, targets)
            if hits is not None:
                correct += hits
            bar.update(loss_sum, correct, seen - images_before, st)
            interrupted = stop is not None and stop.is_set()
            done = st.step >= job.total_steps
            periodic = cfg.save_every_steps and st.step % cfg.save_every_steps == 0
            # (a save at the epoch's last batch is the end-of-epoch one, after its metrics)
            if interrupted or ((done or periodic) and st.batch < spe):
                st.sums = _global_sums(loss_sum, correct, seen)
                _timed(job, st, t0, seen - images_before)
                _save(job, st)
                t0, images_before = time.perf_counter(), seen
            if interrupted:
                raise TrainingInterrupted(
                    f"interrupted at step {st.step}: a checkpoint of that step is saved; "
                    f"continue with: resnetlab train --resume {job.run_dir}"
                )
            if done and st.batch < spe:
                job.epoch_stats = (st.timing.train_s - train_s0, st.timing.images - images0)
                return False
    _timed(job, st, t0, seen - images_before)
    job.epoch_stats = (st.timing.train_s - train_s0, st.timing.images - images0)
    st.sums = _global_sums(loss_sum, correct, seen)
    st.epoch, st.batch = st.epoch + 1, 0
    return True


def _timed(job: Job, st: TrainState, t0: float, images: int) -> None:
    st.timing.train_s += time.perf_counter() - t0
    st.timing.images += images * job.dinfo.world_size


class _Progress:
    """A progress bar on a terminal; off one, a line every LOG_EVERY_S seconds (stderr)."""

    def __init__(self, job: Job, st: TrainState, total: int) -> None:
        self.job, self.total, self.t0 = job, total, time.perf_counter()
        self.tty = sys.stderr.isatty()
        self.last_line = self.t0
        self.desc = f"{job.name} epoch {st.epoch + 1}/{job.epochs}".lstrip()
        self.bar = None
        if job.progress and self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=self.desc, leave=False)

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.close()

    def update(self, loss_sum: torch.Tensor, correct: torch.Tensor, seen: int,
               st: TrainState) -> None:  # fmt: skip
        if not self.job.progress:
            return
        now = time.perf_counter()
        if self.bar is not None:
            self.bar.update(1)
            if st.batch % 10 and st.batch != self.job.steps_per_epoch:
                return
        elif now - self.last_line < LOG_EVERY_S:
            return
        n = max(int(st.batch), 1)
        stats = {"loss": f"{loss_sum.item() / max(seen, 1):.3f}"}
        if self.job.task.has_train_acc:
            stats["acc"] = f"{correct.item() / max(seen, 1):.3f}"
        stats.update(lr=f"{st.scheduler.get_last_lr()[0]:.3g}",
                     img_s=f"{seen / max(now - self.t0, 1e-9):.0f}")  # fmt: skip
        if self.bar is not None:
            self.bar.set_postfix(stats)
        else:
            self.last_line = now
            shown = " ".join(f"{k} {v}" for k, v in stats.items())
            print(f"{self.desc} batch {n}/{self.job.steps_per_epoch}: {shown}", file=sys.stderr,
                  flush=True)  # fmt: skip


def _evaluate(job: Job, st: TrainState) -> dict[str, Any]:
    t0 = time.perf_counter()
    result = job.task.evaluate(job, st.eval_model)
    st.timing.eval_s += time.perf_counter() - t0
    return result


def _end_epoch(job: Job, st: TrainState, writer: Any, *, final: bool) -> dict[str, Any]:
    """Log the epoch's metrics (evaluating when due), checkpoint; returns the evaluation."""
    sums, cfg = st.sums, job.cfg
    seen = max(int(sums["seen"]), 1)
    epoch_time, epoch_images = job.epoch_stats
    row = {
        "epoch": st.epoch + (1 if st.batch else 0),  # a run may end inside an epoch
        "step": st.step,
        "train_loss": float(sums["loss_sum"]) / seen,
        "train_acc": float(sums["correct"]) / seen if job.task.has_train_acc else None,
        "lr": st.scheduler.get_last_lr()[0],
    }
    row.update(epoch_time=epoch_time, img_per_s=epoch_images / epoch_time if epoch_time else None)
    last_eval: dict[str, Any] = {}
    if cfg.eval_every and (st.epoch % cfg.eval_every == 0 or final):
        last_eval = _evaluate(job, st)
        row.update(job.task.eval_row(last_eval))
    # Wall time of the run, evaluations excluded: with test_top1, the time-to-accuracy curve.
    row["wall_s"] = job.wall() - st.timing.eval_s
    if job.main:
        _log_row(job.run_dir, writer, row)
    if job.epoch_lines:
        shown = {k: round(v, 4) for k, v in row.items() if isinstance(v, float)}
        print(json.dumps({"epoch": row["epoch"], "step": st.step, **shown}), flush=True)
    score = row.get(job.task.primary)
    is_best = score is not None and (st.best is None or score > st.best)
    if is_best:
        st.best = score
    _save(job, st, best=is_best)
    return last_eval


def _save(job: Job, st: TrainState, *, best: bool = False) -> None:
    """Checkpoint ``st`` (rank 0), refusing weights that are no longer finite; a job
    without a run directory keeps none."""
    if job.run_dir is None:
        return
    if not st.is_finite():
        # BN running statistics can turn inf/NaN a step before the loss does: a checkpoint
        # of them would only fail again at once on --resume
        raise TrainingError(
            f"the weights or BN statistics became non-finite at step {st.step} (epoch "
            f"{st.epoch + 1}): lower optim.lr (now {job.cfg.optim.lr}), add "
            "schedule.warmup_epochs or optim.grad_clip; the last good checkpoint is kept"
        )
    if not job.main:
        return
    st.timing.wall_s = job.wall()
    state = {
        **st.state_dict(),
        "planned_steps": job.total_steps,
        "model_meta": job.task.model_meta(st.model, job.info),
        "config": job.cfg.to_dict(),
    }
    directory = job.run_dir / "checkpoints"
    try:
        ckpt.save_checkpoint(state, directory, st.step, keep_last=job.cfg.keep_last)
        if best:
            ckpt.save_best(state, directory)
    except ckpt.CheckpointError as e:
        raise TrainingError(f"training stopped at step {st.step}: {e}") from None


def _summary(job: Job, st: TrainState, last_eval: dict[str, Any]) -> dict[str, Any]:
    cfg, t = job.cfg, st.timing
    steady = None
    if job.first_step is not None:
        first_s, first_images = job.first_step
        if t.train_s > first_s and t.images > first_images:
            steady = (t.images - first_images) / (t.train_s - first_s)
    task = {} if cfg.task == "classification" else {"task": cfg.task,
                                                   "head": cfg.dense.head_for(cfg.task)}  # fmt: skip
    return {
        "model": cfg.model,
        **task,
        "data": cfg.data.spec,
        # What the test metrics were measured on: the split, and whether flipped images were
        # averaged.
        "eval_split": job.info.eval_split,
        "tta_flip": cfg.tta_flip,
        "epochs": st.epoch,
        "steps": st.step,
        "planned_steps": job.total_steps,
        "budget_s": cfg.budget_s,
        **job.task.summary(last_eval),
        "train_time_s": t.train_s,
        "wall_time_s": t.wall_s,
        "eval_time_s": t.eval_s,
        "train_img_per_s": t.images / t.train_s if t.train_s else None,
        "first_step_s": job.first_step[0] if job.first_step else None,
        "steady_img_per_s": steady,
        "device": str(job.device),
        "precision": job.precision.name,
        "threads": torch.get_num_threads(),
        "loader_workers": job.loader_workers,
        "rank": job.dinfo.rank,
        "world_size": job.dinfo.world_size,
        "global_batch_size": job.train_loader.batch_size * job.dinfo.world_size,
        "run_dir": str(job.run_dir),
    }


def _global_sums(loss_sum: torch.Tensor, correct: torch.Tensor, seen: int) -> dict[str, Any]:
    """The running train loss/accuracy sums of all ranks together."""
    t = torch.stack([loss_sum.detach().double(), correct.double(),
                     torch.tensor(float(seen), device=loss_sum.device, dtype=torch.double)])  # fmt: skip
    dist.all_reduce_sum(t)
    t = t.cpu()
    return {"loss_sum": t[0].float(), "correct": t[1].long(), "seen": int(t[2])}


def _finish_run(job: Job, final_model: nn.Module, last_eval: dict[str, Any],
                summary: dict[str, Any]) -> None:  # fmt: skip
    """The run's final weights, plots, summary and report (rank 0)."""
    cfg, info, run_dir = job.cfg, job.info, job.run_dir
    try:
        job.task.save_final(final_model, run_dir / "model.safetensors", info)
        rows = read_metrics(run_dir / METRICS_FILE)
        plot_curves(rows, run_dir / "curves.png", title=f"{cfg.model} on {cfg.data.spec}",
                    eval_split=info.eval_split, metric=job.task.primary)  # fmt: skip
        job.task.plots(job, final_model, last_eval)
        atomic_write_text(run_dir / SUMMARY_FILE, dumps_json(summary, digits=None, indent=2))
        report = getattr(final_model, "load_report", None)
        write_report(run_dir, summary, cfg.to_dict(), data_plan=info.plan,
                     data_scan=getattr(info, "scan", None),
                     weights_report=str(report) if cfg.weights and report else None)  # fmt: skip
    except OSError as e:
        where = e.filename or run_dir
        reason = "no space left on device" if e.errno == errno.ENOSPC else (e.strerror or str(e))
        raise TrainingError(
            f"{reason}: {where}. Training is complete and its last checkpoint is intact; free "
            f"space or fix permissions, then finish the run with: resnetlab train --resume {run_dir}"
        ) from None


def _log_row(run_dir: Path, writer: Any, row: dict[str, Any]) -> None:
    try:
        with open(run_dir / METRICS_FILE, "a") as f:
            f.write(dumps_json(row, digits=None) + "\n")
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
    atomic_write_text(path, text)
