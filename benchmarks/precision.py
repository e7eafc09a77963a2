"""fp32 against bf16 autocast on this CPU, training steps and inference, side by side.

The trainer's ``precision: auto`` picks bf16 only where this says bf16 is faster; the rule
is :func:`resnetlab.device.cpu_bf16_is_fast` (AMX). Times training steps (forward,
backward, SGD step) of resnet20 on 1-channel images at two sizes, and inference of resnet50
at 224, alternating fp32 and bf16 for ``--rounds`` rounds (median img/s).

    python benchmarks/precision.py
    python benchmarks/precision.py --rounds 3 --write
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

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

from resnetlab import create_model  # noqa: E402
from resnetlab.device import cpu_bf16_is_fast, keep_freed_host_memory  # noqa: E402

CASES = [  # (label, model, channels, size, batch, train?, timed steps)
    ("resnet20 training, 28 px", "resnet20", 1, 28, 128, True, 8),
    ("resnet20 training, 64 px", "resnet20", 1, 64, 128, True, 3),
    ("resnet50 inference, 224 px", "resnet50", 3, 224, 16, False, 3),
]


def img_per_s(model_name: str, chans: int, size: int, batch: int, train: bool, steps: int,
              bf16: bool) -> float:  # fmt: skip
    torch.manual_seed(0)
    model = create_model(model_name, num_classes=10, in_chans=chans)
    model = model.to(memory_format=torch.channels_last).train(train)
    x = torch.randn(batch, chans, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)

    def step() -> None:
        if train:
            with amp:
                loss = F.cross_entropy(model(x).float(), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        else:
            with torch.inference_mode(), amp:
                model(x)

    step()  # warm-up: oneDNN primitive creation
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    p = benchmark_parser(__doc__)
    p.add_argument("--rounds", type=int, default=2, help="alternations of fp32 and bf16 (2)")
    a = parse_args(p, argv)
    keep_freed_host_memory()
    rows = []
    for label, name, chans, size, batch, train, steps in CASES:
        got: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(a.rounds):
            for bf16 in (False, True):
                got[bf16].append(img_per_s(name, chans, size, batch, train, steps, bf16))
        fp32, bf16 = statistics.median(got[False]), statistics.median(got[True])
        rows.append([label, batch, fp32, bf16, f"{bf16 / fp32:.2f}x"])
        print(rows[-1], flush=True)
    caps = torch.backends.cpu.get_cpu_capability()
    flags = (f"AMX tiles: {torch.cpu._is_amx_tile_supported()}, AVX512-BF16: "
             f"{torch.cpu._is_avx512_bf16_supported()}")  # fmt: skip
    table = markdown_table(["case", "batch", "fp32 img/s", "bf16 img/s", "bf16 / fp32"], rows)
    verdict = (
        f"CPU capability {caps} ({flags}): `precision: auto` picks "
        f"**{'bf16' if cpu_bf16_is_fast() else 'fp32'}** here."
    )
    print(table)
    print(verdict)
    if a.write:
        cmd = command("precision.py", argv)
        body = (
            f"Median of {a.rounds} alternating rounds, channels_last, all threads.\n\n"
            f"{table}\n\n{verdict}"
        )
        write_section(f"precision_{tier_key()}", f"Precision on this CPU tier ({cpu_tier()})",
                      body, cmd)  # fmt: skip


if __name__ == "__main__":
    main()
