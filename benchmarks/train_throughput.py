"""Training throughput: resnetlab's trainer vs a straightforward reference loop.

The reference is what a first PyTorch script does: a Dataset yielding PIL images,
torchvision transforms per image (the preset's augmentation: random crop with padding
and/or flip; ToTensor, Normalize), a DataLoader (measured with 0 and with N worker
processes; the faster is the baseline), fp32 NCHW, SGD. resnetlab's trainer runs the
preset as it is (in-memory batched augmentation, channels_last, torch.compile where the
preset asks, bf16 where the CPU has native bf16). Same model, same data, same batch size,
one run, alternating rounds. Both are timed in steady state: the reference after 5
warm-up steps, the trainer after its first step (which holds torch.compile's compilation;
its time is reported beside).

    python benchmarks/train_throughput.py [--config configs/fashion_mnist_fast.yaml] [--steps 100] [--write]
    python benchmarks/train_throughput.py --variant compile=true --variant data.batch_size=256
    python benchmarks/train_throughput.py --variant "model_args.widths=[16,32,64],model_args.stem_width=16"

``--variant KEY=VALUE[,KEY=VALUE]`` adds a row: the trainer with those settings changed (a
lever measured beside the preset in the same rounds). The last row is the bound: the same
model's step alone (forward, loss, backward, SGD) on one fixed batch, with the trainer's
precision and memory format, no data loading at all.
"""

from __future__ import annotations

import dataclasses
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    benchmark_parser,
    command,
    cpu_tier,
    markdown_table,
    parse_args,
    tier_key,
    write_section,
)

import resnetlab  # noqa: E402
from resnetlab.config import TrainConfig, load_train_config  # noqa: E402
from resnetlab.data import load_split  # noqa: E402
from resnetlab.engine import train  # noqa: E402


class PILDataset(Dataset):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform) -> None:
        self.images, self.labels, self.transform = images.numpy(), labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        img = Image.fromarray(self.images[i, 0], mode="L")
        return self.transform(img), int(self.labels[i])


def reference_loop(cfg: TrainConfig, steps: int, workers: int) -> float:
    images, labels, info = load_split(cfg.data.spec, "train")
    augment = cfg.data.augment
    crop = [transforms.RandomCrop(info.image_size, padding=2)] if augment in ("crop", "standard") else []  # fmt: skip
    flip = [transforms.RandomHorizontalFlip()] if augment in ("flip", "standard") else []
    tf = transforms.Compose(
        [*crop, *flip, transforms.ToTensor(), transforms.Normalize(info.mean, info.std)]
    )
    loader = DataLoader(PILDataset(images, labels, tf), batch_size=cfg.data.batch_size,
                        shuffle=True, num_workers=workers, drop_last=True,
                        persistent_workers=workers > 0)  # fmt: skip
    model = resnetlab.create_model(cfg.model, num_classes=info.num_classes, in_chans=info.channels,
                                   **cfg.model_args)  # fmt: skip
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    model.train()
    seen, start, it = 0, None, iter(loader)
    for i in range(steps + 5):
        x, y = next(it)
        if i == 5:  # warm-up steps excluded, as in the trainer's steady state
            start, seen = time.perf_counter(), 0
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen += len(y)
    return seen / (time.perf_counter() - start)


def model_step_alone(cfg: TrainConfig, steps: int, precision: str) -> float:
    """img/s of the preset's model stepping on one fixed batch: what no loader can beat."""
    info = load_split(cfg.data.spec, "train")[2]
    model = resnetlab.create_model(cfg.model, num_classes=info.num_classes, in_chans=info.channels,
                                   **cfg.model_args)  # fmt: skip
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt).train()
    x = torch.randn(cfg.data.batch_size, info.channels, info.image_size, info.image_size)
    x, y = x.contiguous(memory_format=fmt), torch.randint(0, info.num_classes, (len(x),))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    for i in range(steps + 5):
        if i == 5:
            start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps * len(y) / (time.perf_counter() - start)


def resnetlab_trainer(cfg: TrainConfig, steps: int) -> tuple[float, float, str]:
    with tempfile.TemporaryDirectory() as out:
        run = dataclasses.replace(cfg, max_iters=steps + 1, eval_every=0, output=out)
        s = train(run, progress=False)
    return s["steady_img_per_s"], s["first_step_s"], s["precision"]


def trainer_setting(cfg: TrainConfig, precision: str) -> str:
    parts = [f"in-memory batched aug ({cfg.data.augment})"]
    parts += ["channels_last"] if cfg.channels_last else []
    parts += ["torch.compile"] if cfg.compile else []
    return ", ".join([*parts, precision])


def main(argv: list[str] | None = None) -> None:
    p = benchmark_parser(__doc__)
    p.add_argument("--config", default="configs/fashion_mnist_fast.yaml",
                   help="the preset whose model, data, batch and settings are measured")  # fmt: skip
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--variant", action="append", default=[], metavar="KEY=VALUE[,KEY=VALUE]",
                   help="also measure the trainer with these settings changed (repeatable)")  # fmt: skip
    a = parse_args(p, argv)
    cfg = load_train_config(a.config)
    # KEY=VALUE pairs split at the commas outside brackets: model_args.widths=[16,32,64],...
    variants = {v: load_train_config(a.config, re.split(r",(?![^\[]*\])", v)) for v in a.variant}
    ref0, ref, ours, first, precision = [], [], [], [], "?"
    extra: dict[str, list[float]] = {v: [] for v in variants}
    alone: list[float] = []
    for r in range(a.rounds):
        ref0.append(reference_loop(cfg, a.steps, 0))
        ref.append(reference_loop(cfg, a.steps, a.workers))
        o, f, precision = resnetlab_trainer(cfg, a.steps)
        ours.append(o)
        first.append(f)
        for v, vcfg in variants.items():
            extra[v].append(resnetlab_trainer(vcfg, a.steps)[0])
        alone.append(model_step_alone(cfg, a.steps, precision))
        shown = "".join(f", {v}: {extra[v][-1]:.0f}" for v in variants)
        print(f"round {r + 1}: reference {ref0[-1]:.0f} (0 workers) / {ref[-1]:.0f} "
              f"({a.workers} workers) img/s, resnetlab {ours[-1]:.0f} img/s{shown}, "
              f"model step alone {alone[-1]:.0f}")  # fmt: skip
    r0_med, r_med, o_med = (statistics.median(v) for v in (ref0, ref, ours))
    best_ref = max(r0_med, r_med)
    rows = [
        ["reference loop, DataLoader in-process (0 workers)", r0_med, f"{r0_med / best_ref:.2f}x"],
        [f"reference loop, DataLoader with {a.workers} workers", r_med, f"{r_med / best_ref:.2f}x"],
        [f"resnetlab trainer ({trainer_setting(cfg, precision)})", o_med, f"{o_med / best_ref:.2f}x"],
    ]  # fmt: skip
    for v, values in extra.items():
        med, vcfg = statistics.median(values), variants[v]
        label = f"resnetlab trainer, {v}"
        if (vcfg.model, vcfg.model_args) != (cfg.model, cfg.model_args):  # e.g. ${if_bf16:...}
            label += f" (another model: {vcfg.model} {vcfg.model_args})"
        rows.append([label, med, f"{med / best_ref:.2f}x"])
    med = statistics.median(alone)
    rows.append([f"bound: the model's step alone, one fixed batch ({precision}, no data)", med,
                 f"{med / best_ref:.2f}x"])  # fmt: skip
    table = markdown_table(["loop", "train img/s (median)", "vs the faster reference"], rows)
    print(table)
    model = cfg.model + (f" {cfg.model_args}" if cfg.model_args else "")
    body = (f"The model and settings of `{a.config}`: {model} on {cfg.data.spec}, batch "
            f"{cfg.data.batch_size}, augment={cfg.data.augment}; {a.steps} steps per round "
            f"after warm-up, {a.rounds} alternating rounds (all rounds: reference "
            f"{', '.join(f'{v:.0f}' for v in ref)}; resnetlab {', '.join(f'{v:.0f}' for v in ours)} img/s; "
            f"the trainer's first step (torch.compile's compilation when on): {', '.join(f'{v:.1f}' for v in first)} s)."
            f"\n\n{table}")  # fmt: skip
    if a.write:
        write_section(f"train_throughput_{tier_key()}",
                      f"Training throughput: trainer vs reference loop ({cpu_tier()})", body,
                      command("train_throughput.py", argv))  # fmt: skip


if __name__ == "__main__":
    main()
