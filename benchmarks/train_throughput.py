"""Training throughput: resnetlab's trainer vs a straightforward reference loop.

The reference is what a first PyTorch script does: a Dataset yielding PIL images,
torchvision transforms per image (random crop with padding, flip, ToTensor, Normalize), a
DataLoader (measured with 0 and with N worker processes; the faster is the baseline),
fp32 NCHW, SGD. resnetlab's trainer runs with its
defaults (in-memory batched augmentation, channels_last, bf16 where the CPU has native
bf16). Same model, same data, same batch size, one run, alternating rounds.

    python benchmarks/train_throughput.py [--model resnet20] [--steps 100] [--rounds 2]
"""

from __future__ import annotations

import argparse
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
from common import markdown_table, write_section  # noqa: E402

import resnetlab  # noqa: E402
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


def reference_loop(model_name: str, data: str, batch: int, steps: int, workers: int) -> float:
    images, labels, info = load_split(data, "train")
    tf = transforms.Compose([
        transforms.RandomCrop(info.image_size, padding=2),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(info.mean, info.std),
    ])  # fmt: skip
    loader = DataLoader(PILDataset(images, labels, tf), batch_size=batch, shuffle=True,
                        num_workers=workers, drop_last=True, persistent_workers=workers > 0)  # fmt: skip
    model = resnetlab.create_model(model_name, num_classes=info.num_classes, in_chans=1)
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


def resnetlab_trainer(model_name: str, data: str, batch: int, steps: int) -> tuple[float, str]:
    with tempfile.TemporaryDirectory() as out:
        cfg = {"model": model_name, "data": {"spec": data, "batch_size": batch},
               "optim": {"lr": 0.05}, "max_iters": steps, "eval_every": 0,
               "output": out}  # fmt: skip
        s = train(cfg, progress=False)
    return s["train_img_per_s"], s["precision"]


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="resnet20")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--no-write", action="store_true", help="print only, leave BENCHMARKS.md")
    a = p.parse_args()
    ref0, ref, ours, precision = [], [], [], "?"
    for r in range(a.rounds):
        ref0.append(reference_loop(a.model, a.data, a.batch_size, a.steps, 0))
        ref.append(reference_loop(a.model, a.data, a.batch_size, a.steps, a.workers))
        o, precision = resnetlab_trainer(a.model, a.data, a.batch_size, a.steps)
        ours.append(o)
        print(f"round {r + 1}: reference {ref0[-1]:.0f} (0 workers) / {ref[-1]:.0f} "
              f"({a.workers} workers) img/s, resnetlab {ours[-1]:.0f} img/s")  # fmt: skip
    r0_med, r_med, o_med = (statistics.median(v) for v in (ref0, ref, ours))
    best_ref = max(r0_med, r_med)
    rows = [
        ["reference loop, DataLoader in-process (0 workers)", r0_med, f"{r0_med / best_ref:.2f}x"],
        [f"reference loop, DataLoader with {a.workers} workers", r_med, f"{r_med / best_ref:.2f}x"],
        [f"resnetlab trainer (in-memory batched aug, channels_last, {precision})", o_med,
         f"{o_med / best_ref:.2f}x"],
    ]  # fmt: skip
    table = markdown_table(["loop", "train img/s (median)", "vs the faster reference"], rows)
    print(table)
    body = (f"{a.model} on {a.data}, batch {a.batch_size}, {a.steps} steps per round "
            f"after warm-up, {a.rounds} alternating rounds (all rounds: reference "
            f"{', '.join(f'{v:.0f}' for v in ref)}; resnetlab {', '.join(f'{v:.0f}' for v in ours)} img/s)."
            f"\n\n{table}")  # fmt: skip
    if not a.no_write:
        write_section("train_throughput", "Training throughput: trainer vs reference loop", body,
                      "python benchmarks/train_throughput.py " + " ".join(sys.argv[1:]))  # fmt: skip


if __name__ == "__main__":
    main()
