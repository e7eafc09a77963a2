"""Gradient flow through plain and residual nets, and nets of more than 1000 layers.

Per-layer gradients: the norm of the loss gradient with respect to each convolution's
weight along the main path (stem conv first, projection shortcuts left out), at
initialisation and after k training steps, for a plain net and residual nets (v1, He et
al. 2015; pre-activation v2, He et al. 2016) of the same depth.

Why identity shortcuts help (He et al. 2016, eq. 5): with x_L = x_l + sum_i F(x_i), the
gradient reaching unit l is dL/dx_L * (1 + d/dx_l sum_i F): the "1" carries the signal
from the loss to every unit directly, so it can neither vanish nor be amplified by a
product of L layer Jacobians the way it is in a plain net.

Very deep nets: ResNet-1001 (v2) and ResNet-1202 (v1) train for a few hundred steps on a
small subset, and the memory of one training step is measured with and without
activation checkpointing (``grad_checkpointing=True``: sqrt(n) segments per stage).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..engine.hooks import Hook
from ..engine.trainer import seed_everything
from ..models import count_params
from .common import (
    ExperimentError,
    SubsetData,
    build,
    engine_phrase,
    md_table,
    pct,
    pyplot,
    resolve_model,
    subset_data,
)
from .runner import Experiment, Session, run
from .settings import GradientsConfig


def main_path_convs(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """The convolutions a signal passes through in order, projection shortcuts left out."""
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d) and "downsample" not in name.split(".")
    ]


def conv_gradient_norms(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor
) -> dict[str, Any]:
    """Loss, and per main-path conv the norms of its weight and of the loss gradient wrt it.

    Computed in training mode (BN uses batch statistics, as during training) on one batch;
    the model's gradients are cleared afterwards.
    """
    was_training = model.training
    model.train()
    model.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(images), labels)
    loss.backward()
    convs = main_path_convs(model)
    out = {
        "loss": loss.item(),
        "names": [name for name, _ in convs],
        "grad_norm": [m.weight.grad.norm().item() for _, m in convs],
        "weight_norm": [m.weight.detach().norm().item() for _, m in convs],
    }
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return out


def spread(norms: Sequence[float]) -> dict[str, float]:
    """First-to-last ratio (>1: the gradient grows towards the input) and max/min ratio."""
    return {
        "first": norms[0],
        "last": norms[-1],
        "first_over_last": norms[0] / norms[-1],
        "max_over_min": max(norms) / min(norms),
    }


def _rss_mib(key: str) -> float | None:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process in MiB, None where unknown."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset the peak RSS to the current RSS (Linux: ``5`` into ``/proc/self/clear_refs``)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return _rss_mib("VmHWM") is not None


def _memory_child(
    name: str,
    checkpointing: bool,
    batch_size: int,
    image_size: int,
    in_chans: int,
    num_classes: int,
    steps: int = 2,
) -> dict[str, Any]:
    """One process, one setting: the rise of peak memory over a few training steps.

    Parameters, gradients and momentum buffers are allocated before the baseline is
    taken, so the rise is the memory of activations (and temporaries) alone. The peak is
    reset to the current RSS first; where that is impossible the peak since the start of
    the process is used, which can hide a step that needs less than the imports did.
    """
    import gc
    import resource

    torch.set_num_threads(1)
    torch.manual_seed(0)
    from ..models import create_model

    model = create_model(
        resolve_model(name),
        num_classes=num_classes,
        in_chans=in_chans,
        grad_checkpointing=checkpointing,
    )
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    x = torch.randn(batch_size, in_chans, image_size, image_size)
    y = torch.randint(0, num_classes, (batch_size,))
    gc.collect()
    exact = _reset_peak_rss()
    if exact:
        base = _rss_mib("VmRSS")
    else:  # ru_maxrss: KiB on Linux, bytes on macOS
        scale = 2**20 if sys.platform == "darwin" else 2**10
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    times = []
    for i in range(steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=False)
        if i == 0 and not checkpointing:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                loss = F.cross_entropy(model(x), y)
        else:
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    if exact:
        peak = _rss_mib("VmHWM")
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale
    return {
        "baseline_mb": base,
        "peak_mb": peak,
        "step_mb": peak - base,
        "saved_tensors_mb": sum(saved.values()) / 2**20 if saved else None,
        "s_per_step": min(times),
        "method": "VmHWM after reset" if exact else "ru_maxrss",
    }


def step_memory(
    name: str,
    *,
    checkpointing: bool,
    batch_size: int,
    image_size: int,
    in_chans: int,
    num_classes: int,
    device: torch.device,
) -> dict[str, Any]:
    """Memory of one training step of ``name``: a fresh process's peak RSS on CPU
    (so earlier work does not mask it), ``torch.cuda.max_memory_allocated`` on a GPU."""
    if device.type == "cuda":
        from ..models import create_model

        model = (
            create_model(
                resolve_model(name),
                num_classes=num_classes,
                in_chans=in_chans,
                grad_checkpointing=checkpointing,
            )
            .to(device)
            .train()
        )
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()
        x = torch.randn(batch_size, in_chans, image_size, image_size, device=device)
        y = torch.randint(0, num_classes, (batch_size,), device=device)
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        t0 = time.perf_counter()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        torch.cuda.synchronize(device)
        step = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated(device)
        return {
            "baseline_mb": base / 2**20,
            "peak_mb": peak / 2**20,
            "step_mb": (peak - base) / 2**20,
            "saved_tensors_mb": None,
            "s_per_step": step,
        }
    args = dict(
        name=name,
        checkpointing=checkpointing,
        batch_size=batch_size,
        image_size=image_size,
        in_chans=in_chans,
        num_classes=num_classes,
    )
    code = (
        "import json, sys\n"
        "from resnetlab.experiments.gradients import _memory_child\n"
        "print(json.dumps(_memory_child(**json.loads(sys.argv[1]))))\n"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-c", code, json.dumps(args)], capture_output=True, text=True, env=env
    )
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["(no output)"]
        raise ExperimentError(f"measuring the memory of {name} failed: {tail[0]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------
# Plots and the report.


def plot_gradients(results: dict[str, Any], path: Path, steps: int) -> Path:
    """Per-layer ||dL/dW|| at init and after ``steps`` steps, and after them ||dL/dW|| / ||W||
    (the relative size of an SGD update: a conv followed by BN is scale-invariant, so a
    layer whose weights have grown learns slowly however large its raw gradient looks);
    last, the first conv's over the last conv's gradient at every step between (the probe)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(21, 4.4))
    panels = (
        ("init", "grad_norm", "||dL/dW|| at initialisation"),
        ("after", "grad_norm", f"||dL/dW|| after {steps} steps"),
        ("after", "relative", f"||dL/dW|| / ||W|| after {steps} steps"),
    )
    for ax, (when, key, title) in zip(axes[:3], panels, strict=True):
        for name, r in results.items():
            if r.get(when):
                g = r[when]["grad_norm"]
                if key == "relative":
                    g = [a / b for a, b in zip(g, r[when]["weight_norm"], strict=True)]
                ax.plot(range(1, len(g) + 1), g, marker=".", lw=1.2, label=name)
        ax.set_yscale("log")
        ax.set(xlabel="conv layer (1 = stem, next to the input)", title=title)
        ax.grid(alpha=0.3, which="both")
        if ax.lines:
            ax.legend(fontsize=8)
    ax = axes[3]
    for name, r in results.items():
        during = r.get("during") or {}
        if during.get("first"):
            ratio = [a / b for a, b in zip(during["first"], during["last"], strict=True)]
            ax.plot(range(1, len(ratio) + 1), ratio, lw=1.2, label=name)
    ax.set_yscale("log")
    ax.set(xlabel="training step", title="first / last conv ||dL/dW||, training batches")
    ax.grid(alpha=0.3, which="both")
    if ax.lines:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _smooth(values: Sequence[float], window: int) -> list[float]:
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def plot_deep(deep: dict[str, Any], memory: dict[str, Any], path: Path) -> Path:
    plt = pyplot()
    fig, (ax_loss, ax_mem) = plt.subplots(1, 2, figsize=(12, 4.3))
    for name, r in deep.items():
        losses = r.get("losses") or []
        if losses:
            window = max(1, len(losses) // 20)
            ax_loss.plot(range(1, len(losses) + 1), losses, lw=0.6, alpha=0.35)
            ax_loss.plot(
                range(1, len(losses) + 1),
                _smooth(losses, window),
                lw=2,
                color=ax_loss.lines[-1].get_color(),
                label=f"{name} ({r['layers']} layers)",
            )
    ax_loss.set_yscale("log")
    ax_loss.set(xlabel="step", ylabel="training loss (log scale)", title="very deep nets train")
    ax_loss.grid(alpha=0.3)
    if deep:
        ax_loss.legend()
    names = list(memory)
    for j, (key, label) in enumerate(
        (("without", "no checkpointing"), ("with", "activation checkpointing"))
    ):
        vals = [memory[n].get(key, {}).get("step_mb", 0.0) for n in names]
        ax_mem.bar([i + 0.4 * j for i in range(len(names))], vals, width=0.4, label=label)
    ax_mem.set_xticks([i + 0.2 for i in range(len(names))], names)
    ax_mem.set(ylabel="peak memory of a training step (MiB)", title="activation memory")
    ax_mem.grid(alpha=0.3, axis="y")
    if names:
        ax_mem.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def _flow_section(flow: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    k = settings["steps"]
    lines = [
        f"{settings['setting']}. Per main-path conv, the norm of dL/dW on one batch of "
        f"{settings['probe_size']} training images of `{settings['dataset']}` (training mode), "
        f"at initialisation and after {k} SGD steps (batch {settings['batch_size']}, "
        f"lr {settings['lr']}, momentum 0.9{engine_phrase(settings)}); no zero-init of the "
        "last BN, the same seed for every net.",
        "",
    ]
    rows = []
    for name, r in flow.items():
        for when, label in (("init", "init"), ("after", f"after {k}")):
            if r.get(when):
                s = spread(r[when]["grad_norm"])
                rows.append(
                    [
                        name,
                        label,
                        _fmt(s["first"]),
                        _fmt(s["last"]),
                        _fmt(s["first_over_last"]),
                        _fmt(s["max_over_min"]),
                        f"{r[when]['loss']:.3f}",
                    ]
                )
    header = ["model", "when", "first conv", "last conv", "first / last", "max / min", "loss"]
    lines += md_table(header, rows)
    lines += ["", "![gradients](gradients.png)", "", "## What it shows", ""]
    lines += _flow_findings(flow)
    return lines


def _memory_table(memory: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    """The step memory of the deep nets without and with activation checkpointing."""
    lines = [
        "",
        "Memory of one training step (peak rise over parameters, gradients "
        "and momentum; " + settings["memory_method"] + "):",
        "",
    ]
    rows = []
    for name, m in memory.items():
        without, with_ = m.get("without"), m.get("with")
        if not (without and with_):
            continue
        saved = without.get("saved_tensors_mb")
        rows.append(
            [
                name,
                f"{without['step_mb']:.0f} MiB",
                f"{with_['step_mb']:.0f} MiB",
                f"{without['step_mb'] / max(with_['step_mb'], 1e-9):.1f}x",
                "-" if saved is None else f"{saved:.0f} MiB",
                f"{without['s_per_step']:.2f} / {with_['s_per_step']:.2f}",
            ]
        )
    header = [
        "model",
        "without checkpointing",
        "with",
        "saving",
        "tensors saved for backward (without)",
        "s / step (without / with)",
    ]
    lines += md_table(header, rows)
    return lines


def _report(out: Path, results: dict[str, Any], settings: dict[str, Any], meta: dict) -> Path:
    flow, deep, memory = results.get("flow", {}), results.get("deep", {}), results.get("memory", {})
    title = "Gradient flow in plain and residual nets" if flow else "More than 1000 layers"
    lines = [f"# {title}", ""]
    if flow:
        lines += _flow_section(flow, settings)
    if deep or memory:
        lines += ["", "## More than 1000 layers", ""] if flow else []
        lines.append(
            ("" if flow else f"{settings['setting']}. ")
            + f"{settings['deep_steps']} steps of batch {settings['deep_batch_size']} on "
            f"{settings['deep_sizes']['train']} training images"
            + (
                f" resized to {settings['deep_image_size']}x{settings['deep_image_size']}"
                if settings["deep_image_size"]
                else ""
            )
            + f", SGD lr {settings['deep_lr']} (a tenth of it for the first 10% of steps, as the "
            f"paper's warm-up), momentum 0.9{engine_phrase(settings)}, no zero-init."
        )
        lines.append("")
        rows = []
        for name, r in deep.items():
            if not r.get("complete"):
                continue
            rows.append(
                [
                    name,
                    r["layers"],
                    f"{r['params'] / 1e6:.2f}M",
                    f"{r['loss_start']:.3f}",
                    f"{r['loss_end']:.3f}",
                    f"{max(r['losses']):.3g}",
                    "yes" if r["loss_end"] < r["loss_start"] else "no",
                    pct(r["train_error"]),
                    f"{r['s_per_step']:.2f}",
                ]
            )
        header = [
            "model",
            "layers",
            "params",
            "loss, first 10% of steps",
            "loss, last 10%",
            "highest loss",
            "went down",
            "train error (subset)",
            "s / step",
        ]
        lines += md_table(header, rows)
        if memory:
            lines += _memory_table(memory, settings)
        lines += ["", "![deep](deep.png)"]
    lines += ["", "## Machine", ""]
    lines += [f"- {key}: {v}" for key, v in meta["machine"].items()]
    lines.append(f"- total time: {meta['time_s']:.0f} s")
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _flow_findings(flow: dict[str, Any]) -> list[str]:
    """What the measurements say, model by model, in numbers."""
    done = {n: r for n, r in flow.items() if r.get("init")}
    lines = []
    for name, r in done.items():
        s = spread(r["init"]["grad_norm"])
        ratio = s["first_over_last"]
        lines.append(
            f"- {name}, at initialisation: from the last conv to the first the gradient "
            f"{'grows' if ratio > 1 else 'shrinks'} {_fmt(max(ratio, 1 / ratio))}x "
            f"({_fmt(s['last'])} -> {_fmt(s['first'])}); all layers within "
            f"{_fmt(s['max_over_min'])}x of each other."
        )
    for name, r in done.items():
        during = r.get("during") or {}
        if during.get("first"):
            ratios = [a / b for a, b in zip(during["first"], during["last"], strict=True)]
            lines.append(
                f"- {name}, while training (the training batches, every step): first / last "
                f"conv gradient {_fmt(ratios[0])} at step 1, {_fmt(ratios[-1])} at step "
                f"{len(ratios)} (between {_fmt(min(ratios))} and {_fmt(max(ratios))})."
            )
    for name, r in done.items():
        if not r.get("after"):
            continue
        before, after = r["init"], r["after"]
        rel = [g / w for g, w in zip(after["grad_norm"], after["weight_norm"], strict=True)]
        lines.append(
            f"- {name}, after training: the first conv's gradient {_fmt(before['grad_norm'][0])} "
            f"-> {_fmt(after['grad_norm'][0])}, its weight norm {_fmt(before['weight_norm'][0])} "
            f"-> {_fmt(after['weight_norm'][0])}; relative gradient ||dL/dW|| / ||W|| first / "
            f"last conv {_fmt(rel[0] / rel[-1])}; loss {after['loss']:.3f}."
        )
    plain = [r for r in done.values() if r.get("family") == "plain"]
    residual = [r for r in done.values() if r.get("family") != "plain"]
    lines.append("")
    if plain and residual:
        worst = max(spread(r["init"]["grad_norm"])["max_over_min"] for r in residual)
        spread_plain = min(spread(r["init"]["grad_norm"])["max_over_min"] for r in plain)
        if spread_plain > worst:
            lines.append(
                "With batch normalisation (as in the papers) the plain net's gradient does not "
                "vanish at initialisation: it is amplified layer after layer on the way back to "
                "the input (a product of Jacobians whose norms exceed 1). The ResNet paper says "
                "as much (section 4.1: BN keeps the backward signal healthy; the degradation "
                "of plain nets is an optimisation difficulty, not vanishing gradients). "
                "Identity shortcuts make the gradient at every unit the sum of a direct term "
                "and the branch terms (He et al. 2016, eq. 5): its spread over the depth is "
                f"{_fmt(spread_plain / worst)}x smaller than the plain net's."
            )
        inflated = [
            r
            for r in plain
            if r.get("after") and r["after"]["weight_norm"][0] > 10 * r["init"]["weight_norm"][0]
        ]
        if inflated:
            lines += [
                "",
                "The large early gradients do harm: SGD inflates the weights of the layers "
                "nearest the input, and a conv followed by BN is scale-invariant, so its "
                "gradient falls as 1/||W|| and its relative update as 1/||W||^2. Those "
                "layers then all but stop learning (the third panel): what the "
                "'vanishing gradient' of deep plain nets looks like once they train with BN.",
            ]
    return lines


class GradientProbe(Hook):
    """The norm of every main-path conv's gradient at every step, read after the backward
    pass (gradients unscaled, before clipping and the optimizer step).

    :meth:`summary`: per step, the first (stem) conv's norm, the last conv's, and the
    spread max / min over the depth: how the gradient's profile changes while the net trains.
    """

    def __init__(self, model: nn.Module) -> None:
        self.convs = [m for _, m in main_path_convs(model)]
        self.norms: list[torch.Tensor] = []

    def after_backward(self, job: Any, st: Any) -> None:
        zero = torch.zeros((), device=job.device)
        norms = [zero if m.weight.grad is None else m.weight.grad.detach().float().norm()
                 for m in self.convs]  # fmt: skip
        self.norms.append(torch.stack(norms))  # kept on the device: no wait at every step

    def summary(self) -> dict[str, list[float]]:
        if not self.norms:
            return {"first": [], "last": [], "max_over_min": []}
        n = torch.stack(self.norms).cpu()  # (steps, convs)
        return {
            "first": n[:, 0].tolist(),
            "last": n[:, -1].tolist(),
            "max_over_min": (n.max(1).values / n.min(1).values.clamp_min(1e-30)).tolist(),
        }


@dataclass
class GradientsData:
    flow: SubsetData  # the probe batch and the flow nets' training
    deep: SubsetData | None  # the very deep nets'


class Gradients(Experiment):
    name = "gradients"
    config = GradientsConfig

    def load(self, cfg: GradientsConfig, device: torch.device) -> GradientsData:
        flow = subset_data(cfg.dataset, data_dir=cfg.data_dir, train_size=None,
                           train_eval_size=1000, test_size=1000, batch_size=cfg.batch_size,
                           seed=cfg.seed, device=device, channels_last=cfg.channels_last)  # fmt: skip
        deep = None
        if cfg.deep_models:
            deep = subset_data(cfg.dataset, data_dir=cfg.data_dir,
                               train_size=cfg.deep_train_size, train_eval_size=256, test_size=128,
                               batch_size=cfg.deep_batch_size, image_size=cfg.deep_image_size,
                               seed=cfg.seed, device=device, channels_last=cfg.channels_last)  # fmt: skip
        return GradientsData(flow, deep)

    def settings(self, cfg: GradientsConfig, data: GradientsData) -> dict[str, Any]:
        return dict(
            dataset=cfg.dataset, models=list(cfg.models), deep_models=list(cfg.deep_models),
            quick=cfg.quick, lr=cfg.lr, deep_lr=cfg.deep_lr, probe_size=cfg.probe_size,
            seed=cfg.seed, memory=cfg.memory, setting=cfg.setting_name,
            **{k: getattr(cfg, k) for k in cfg.preset()},  # steps, batch sizes, ...
            **cfg.engine_settings(),
        )  # fmt: skip

    def execute(self, session: Session, data: GradientsData) -> None:
        for part in ("flow", "deep", "memory"):
            session.results.setdefault(part, {})
        self._flow(session, data.flow)
        if data.deep is not None:
            self._deep(session, data.deep)
            if session.cfg.memory:
                self._memory(session, data.deep)

    def _flow(self, session: Session, data: SubsetData) -> None:
        """Gradient norms on one batch at initialisation and after ``steps`` steps."""
        cfg, dev = session.cfg, session.device
        flow = session.results["flow"]
        images, labels = next(iter(data.train_eval))
        images, labels = images[: cfg.probe_size], labels[: cfg.probe_size]
        for name in cfg.models:
            if flow.get(name, {}).get("complete"):
                continue
            mcfg = resolve_model(name)
            seed_everything(cfg.seed)
            model = build(mcfg, data.info, zero_init_last=False).to(dev)
            family = "plain" if mcfg.shortcut == "none" else (
                "resnet-v2" if mcfg.is_preact else "resnet")  # fmt: skip
            entry = dict(family=family, depth=mcfg.depth,
                         init=conv_gradient_norms(model, images, labels))  # fmt: skip
            if cfg.steps:
                probe = GradientProbe(model)
                recipe = session.recipe(iters=cfg.steps, lr=cfg.lr, milestones=())
                run = session.train(name, model, data, recipe, hooks=[probe])
                entry.update(train_error=run["train_error"], losses=run["losses"],
                             during=probe.summary())  # fmt: skip
                entry["after"] = conv_gradient_norms(model, images, labels)
            entry["complete"] = True
            flow[name] = entry
            session.save()

    def _deep(self, session: Session, data: SubsetData) -> None:
        """The very deep nets trained, with the paper's warm-up (lr / 10 first)."""
        cfg = session.cfg
        deep = session.results["deep"]
        session.settings["deep_sizes"] = data.sizes
        for name in cfg.deep_models:
            if deep.get(name, {}).get("complete"):
                continue
            mcfg = resolve_model(name)
            seed_everything(cfg.seed)
            model = build(mcfg, data.info, zero_init_last=False)
            # The paper's warm-up for 110 layers and more: lr / 10 first (here 10% of steps).
            warmup = max(1, cfg.deep_steps // 10)
            recipe = session.recipe(iters=cfg.deep_steps, lr=cfg.deep_lr, milestones=(),
                                    warmup_iters=warmup)  # fmt: skip
            run = session.train(name, model, data, recipe)
            tenth = max(1, len(run["losses"]) // 10)
            deep[name] = dict(
                layers=mcfg.depth, params=count_params(model), losses=run["losses"],
                loss_start=sum(run["losses"][:tenth]) / tenth,
                loss_end=sum(run["losses"][-tenth:]) / tenth, train_error=run["train_error"],
                diverged_at=run["diverged_at"],
                s_per_step=run["train_time_s"] / max(run["iters"], 1), complete=True,
            )  # fmt: skip
            del model
            session.save()

    def _memory(self, session: Session, data: SubsetData) -> None:
        """The step memory of each deep net without and with activation checkpointing."""
        cfg = session.cfg
        mem = session.results["memory"]
        size = cfg.deep_image_size or data.info.image_size
        for name in cfg.deep_models:
            for key, ckpt in (("without", False), ("with", True)):
                if mem.get(name, {}).get(key):
                    continue
                mem.setdefault(name, {})[key] = step_memory(
                    name, checkpointing=ckpt, batch_size=cfg.deep_batch_size, image_size=size,
                    in_chans=data.info.model_channels, num_classes=data.info.num_classes,
                    device=session.device,
                )  # fmt: skip
                session.save()

    def finish(
        self, session: Session, data: GradientsData, found: dict[str, Any], meta: dict[str, Any]
    ) -> dict[str, Any]:
        results, out, settings = session.results, session.out, session.settings
        flow, deep, mem = results["flow"], results["deep"], results["memory"]
        settings["memory_method"] = (
            "torch.cuda.max_memory_allocated"
            if session.device.type == "cuda"
            else "rise of the peak RSS in a fresh process per setting, one thread"
        )
        if flow:
            plot_gradients(flow, out / "gradients.png", session.cfg.steps)
        deep_png = plot_deep(deep, mem, out / "deep.png")
        report = _report(out, results, settings, meta)
        summary = []
        for name, r in flow.items():
            s = spread(r["init"]["grad_norm"])
            summary.append(
                f"{name}: grad norm first/last conv at init {_fmt(s['first_over_last'])}"
            )
        for name, r in deep.items():
            summary.append(f"{name}: loss {r['loss_start']:.3f} -> {r['loss_end']:.3f} in "
                           f"{len(r['losses'])} steps")  # fmt: skip
        for name, m in mem.items():
            if m.get("with") and m.get("without"):
                summary.append(f"{name}: step memory {m['without']['step_mb']:.0f} MiB -> "
                               f"{m['with']['step_mb']:.0f} MiB with checkpointing")  # fmt: skip
        figures = ([out / "gradients.png"] if flow else []) + ([deep_png] if deep_png else [])
        summary.append(f"report: {report}  figures: {', '.join(map(str, figures))}")
        return dict(report=str(report), summary="\n".join(summary))


GRADIENTS = Gradients()


def run_gradients(
    output: str | os.PathLike = "runs/gradients",
    *,
    overwrite: bool = False,
    progress: bool = True,
    **options: Any,
) -> dict[str, Any]:
    """Per-layer gradient norms of ``models`` at init and after ``steps`` steps (and at
    every step between, from a probe hook); then ``deep_models`` trained for ``deep_steps``
    steps and their step memory with and without activation checkpointing. Writes
    ``results.json``, ``gradients.png``, ``deep.png`` and ``report.md`` to ``output``
    (results after each part, so an interruption loses little).

    ``options`` are :class:`GradientsConfig`'s fields (``quick=True``: its quick preset;
    None: the preset's value) and ``overrides`` (``KEY=VALUE`` strings).
    """
    return run(GRADIENTS, output, overwrite=overwrite, progress=progress, **options)
