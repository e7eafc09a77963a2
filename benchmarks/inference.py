"""Inference: resnetlab's optimized models vs torchvision eager, onnxruntime and OpenVINO,
and accuracy.

Speed: for each (model, batch) below, one call of ``resnetlab.inference.bench_model``
builds every system (torchvision eager fp32 NCHW where torchvision has the net; resnetlab
as trained; resnetlab optimized fp32 / bf16 / int8; onnxruntime fp32 and static int8 QDQ;
OpenVINO with the fp32 precision hint, with its default hint (bf16 on CPUs with native
bf16: the table gives the precision it picked) and NNCF static int8), feeds them the same
random batch, and times them in alternating rounds. int8 is calibrated on random batches
there: speed does not depend on it. Without openvino (pip install openvino nncf) its rows
say so.

Host memory: resnetlab optimized fp32 (resnet50, batch 16) in fresh processes, alternately
with glibc's malloc as it comes and with ``resnetlab.device.keep_freed_host_memory`` (which
``optimize_for_inference`` sets): images/s, page faults per batch and peak RSS (``--memory-rounds``).

Accuracy: a resnet20 trained on Fashion-MNIST (a run directory, e.g. from
``resnetlab train --config configs/fashion_mnist_fast.yaml --output /tmp/fm_fast epochs=1``)
is evaluated on the Fashion-MNIST test set as trained and after ``optimize_for_inference``
in fp32, int8 (calibrated on training images) and bf16 (on the first ``--bf16-images`` test
images where bf16 is emulated: it is slow there).

    python benchmarks/inference.py --run /tmp/fm_fast [--rounds 2] [--quick] [--write]
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import benchmark_parser, command, markdown_table, parse_args, write_section  # noqa: E402

import resnetlab  # noqa: E402
from resnetlab.data import load_split  # noqa: E402
from resnetlab.inference import (  # noqa: E402
    bench_model,
    describe_model,
    has_native_bf16,
    optimize_for_inference,
)

IMAGENET, CIFAR = (3, 224, 224), (3, 32, 32)
ALL = ("fp32", "int8", "bf16")
# model, batch, input size, precisions, baselines, compiled precisions, timed batches per
# round, seconds after which a round's warm-up or timing stops (emulated bf16 is slow).
ALL_BASELINES = ("eager", "torchvision", "onnxruntime", "openvino")
RUNTIMES = ("torchvision", "onnxruntime", "openvino")
SPEED = [
    ("resnet50", 16, IMAGENET, ALL, ALL_BASELINES, ("fp32", "int8"), 3, 10),
    ("resnet50", 1, IMAGENET, ALL, RUNTIMES, (), 10, 3),
    ("resnet18", 16, IMAGENET, ("fp32", "int8"), RUNTIMES, ("fp32", "int8"), 3, 8),
    ("resnext50_32x4d", 8, IMAGENET, ("fp32", "int8"), RUNTIMES, (), 2, 8),
    ("resnet20", 16, CIFAR, ALL, ALL_BASELINES, ("fp32",), 10, 3),
]  # fmt: skip
QUICK = [
    ("resnet18", 4, (3, 112, 112), ALL, ALL_BASELINES, ("int8",), 2, 5),
    ("resnet20", 16, CIFAR, ("fp32", "int8"), ("eager", "onnxruntime", "openvino"), (), 5, 5),
]  # fmt: skip
HEADERS = ["model", "batch", "system", "prec", "img/s", "p50 ms", "p95 ms", "mem MB",
           "of GEMM peak", "rel err", "vs ORT fp32"]  # fmt: skip


def speed_rows(configs: list, rounds: int, threads: int | None) -> tuple[list[list], dict]:
    table: list[list] = []
    ratios: dict = {}
    probes: list[str] = []
    cpu = ""
    for name, batch, size, precisions, compare, compiled, iters, cap in configs:
        t = time.perf_counter()
        rows = bench_model(name, batch_size=batch, input_size=size, precisions=precisions,
                           compare=compare, compile=compiled, iters=iters, warmup=2,
                           rounds=rounds, max_seconds=cap, threads=threads,
                           progress=lambda m, n=name, b=batch: print(f"  [{n} b{b}] {m}",
                                                                    flush=True))  # fmt: skip
        print(f"{name} batch {batch}: {time.perf_counter() - t:.0f} s", flush=True)
        ort = next((r.img_per_s for r in rows if r.system == "onnxruntime"), None)
        cpu = cpu or next((r.cpu for r in rows if r.cpu), "")
        peaks = {r.precision: r.probe_gflops for r in rows if r.probe_gflops}
        probes.append(f"{name} b{batch}: " + ", ".join(f"{k} {v:.1f}" for k, v in peaks.items()))
        for r in rows:
            if r.skipped:
                table.append([name, batch, r.system, r.precision, "skipped: " + r.note[9:],
                              "", "", "", "", "", ""])  # fmt: skip
                continue
            vs = f"{r.img_per_s / ort:.2f}x" if ort else "-"
            ratios[(name, batch, r.system)] = r.img_per_s / ort if ort else None
            table.append([
                name, batch, r.system, r.precision, r.img_per_s, f"{r.p50_ms:.1f}",
                f"{r.p95_ms:.1f}", f"{r.mem_mb:.0f}" if r.mem_mb is not None else "-",
                f"{r.peak_fraction:.0%}" if r.peak_fraction is not None else "-",
                f"{r.max_rel_error:.1e}", vs,
            ])  # fmt: skip
    ratios["probes"] = "; ".join(probes)
    ratios["cpu"] = cpu
    return table, ratios


# One fresh process of the host-memory comparison: resnet50 fp32 optimized at batch 16,
# with glibc's malloc as it comes ("system") or kept (what optimize_for_inference does).
MEMORY_CHILD = """
import json, resource, statistics, sys, time
import torch
import resnetlab.inference.optimize as optimize
from resnetlab import create_model
from resnetlab.device import proc_status_kb

mode, threads = sys.argv[1], int(sys.argv[2])
if threads:
    torch.set_num_threads(threads)
if mode == "system":  # the setting is what is measured: leave malloc as it comes
    optimize.keep_freed_host_memory = lambda: False
model = optimize.optimize_for_inference(create_model("resnet50").eval(), "fp32")
x = torch.randn(16, 3, 224, 224)
times = []
with torch.inference_mode():
    for i in range(8):
        if i == 2:  # after warm-up
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - t)
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / 6
print(json.dumps({"img_per_s": 16 / statistics.median(times[2:]), "faults": faults,
                  "peak_mb": proc_status_kb("VmHWM") / 1024}))
"""
MEMORY_MODES = {"system": "glibc malloc as it comes",
                "kept": "keep_freed_host_memory (optimize_for_inference's default)"}  # fmt: skip


def memory_rows(rounds: int, threads: int | None) -> list[list]:
    """The host-memory comparison: fresh processes, the two modes alternating."""
    results: dict[str, list[dict]] = {mode: [] for mode in MEMORY_MODES}
    for r in range(rounds):
        for mode in MEMORY_MODES:
            out = subprocess.run([sys.executable, "-c", MEMORY_CHILD, mode, str(threads or 0)],
                                 capture_output=True, text=True, check=True)  # fmt: skip
            results[mode].append(json.loads(out.stdout.splitlines()[-1]))
            print(f"  memory round {r + 1}/{rounds}, {mode}: {results[mode][-1]}", flush=True)
    base = statistics.median(v["img_per_s"] for v in results["system"])
    rows = []
    for mode, label in MEMORY_MODES.items():
        speed = statistics.median(v["img_per_s"] for v in results[mode])
        rows.append([label, speed, f"{speed / base:.2f}x",
                     f"{statistics.median(v['faults'] for v in results[mode]):,.0f}",
                     f"{statistics.median(v['peak_mb'] for v in results[mode]):,.0f}",
                     ", ".join(f"{v['img_per_s']:.1f}" for v in results[mode])])  # fmt: skip
    return rows


def _normalize(images: torch.Tensor, mean: tuple, std: tuple) -> torch.Tensor:
    x = images.float() / 255
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return (x - m) / s


def top1(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 500) -> tuple:
    correct, t = 0, time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            correct += (model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum().item()
    return 100 * correct / len(x), len(x) / (time.perf_counter() - t)


def accuracy_rows(run: str, calib_images: int, bf16_images: int) -> list[list]:
    model = resnetlab.load_model(run).eval()
    prep, _ = describe_model(model)
    test_u8, y, _ = load_split("fashion-mnist", "test")
    train_u8, _, _ = load_split("fashion-mnist", "train")
    x = _normalize(test_u8, prep.mean, prep.std)
    pick = torch.randperm(len(train_u8), generator=torch.Generator().manual_seed(0))
    calib = list(_normalize(train_u8[pick[:calib_images]], prep.mean, prep.std).split(64))
    native = has_native_bf16()
    n_bf16 = len(x) if native else min(bf16_images, len(x))
    ref = {len(x): top1(model, x, y)}
    ref[n_bf16] = top1(model, x[:n_bf16], y[:n_bf16])
    rows = []
    for label, precision, kwargs in [
        ("as trained (eager fp32)", None, {}),
        ("optimized fp32", "fp32", {}),
        (f"optimized int8 (calibrated on {calib_images} training images)", "int8",
         {"calibration": calib}),
        ("optimized bf16" + ("" if native else " (emulated)"), "bf16", {}),
    ]:  # fmt: skip
        n = n_bf16 if precision == "bf16" else len(x)
        if precision is None:
            acc, speed = ref[n]
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                m = optimize_for_inference(model, precision, **kwargs)
            acc, speed = top1(m, x[:n], y[:n])
            if precision == "int8":
                label += f", backend {m.backend}"  # (PT2E, or FX where inductor cannot lower it)
        rows.append([label, f"{acc:.2f}", f"{acc - ref[n][0]:+.2f}", n, speed])
        print(f"  accuracy {label}: {acc:.2f}% on {n} images ({speed:.0f} img/s)", flush=True)
    if n_bf16 < len(x):
        acc, speed = ref[n_bf16]
        rows.append([f"as trained (eager fp32), first {n_bf16} images", f"{acc:.2f}", "+0.00",
                     n_bf16, speed])  # fmt: skip
    return rows, model


def target_summary(ratios: dict) -> str:
    """The issue's targets for resnet50 at batch 16, as ratios of this run."""
    r50 = {k[2]: v for k, v in ratios.items() if k[:2] == ("resnet50", 16)}
    fp32 = {k: v for k, v in r50.items() if k.startswith("resnetlab optimized (")}
    best = max(fp32, key=fp32.get) if fp32 else None
    int8 = r50.get("resnetlab int8 (PT2E, inductor)")
    ort8 = r50.get("onnxruntime int8 (static QDQ)")
    ov8 = r50.get("openvino int8 (NNCF)")
    bf16 = r50.get("resnetlab optimized bf16 (BN folded, channels_last)")
    ovd = r50.get("openvino (default hint)")

    def x(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}x"

    def over(a: float | None, b: float | None) -> str:
        return "-" if a is None or not b else f"{a / b:.2f}x"

    native = "native" if has_native_bf16() else "emulated: this CPU has no AVX512-BF16/AMX"
    return (
        f"Targets (resnet50, batch 16, ratios of this run): fp32 >= 1.0x onnxruntime fp32: "
        f"got {x(fp32.get(best))} ({best}); int8 vs onnxruntime int8 (AVX2 tier >= 1.2x): "
        f"{over(int8, ort8)}, vs OpenVINO NNCF int8 (AMX tier >= 2.0x): {over(int8, ov8)}; "
        f"bf16 vs OpenVINO's default precision (AMX tier >= 1.5x): {over(bf16, ovd)} "
        f"(bf16 {native})."
    )


def main(argv: list[str] | None = None) -> None:
    p = benchmark_parser(__doc__)
    p.add_argument("--run", help="a run directory trained on Fashion-MNIST (1x28x28)")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds per config (2)")
    p.add_argument("--threads", type=int, help="torch/onnxruntime threads (default: torch's)")
    p.add_argument("--calib-images", type=int, default=512)
    p.add_argument("--bf16-images", type=int, default=2000)
    p.add_argument("--quick", action="store_true", help="small configs, to try the script")
    p.add_argument("--memory-rounds", type=int, default=3,
                   help="rounds of the host-memory comparison (0: skip it)")  # fmt: skip
    a = parse_args(p, argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    start = time.perf_counter()
    table, ratios = speed_rows(QUICK if a.quick else SPEED, a.rounds, a.threads)
    speed = markdown_table(HEADERS, table)
    print(speed)
    body = [
        "Images per second and per-batch latency (p50/p95) on random inputs; mem: peak RSS "
        "growth of the process while the system ran, over its RSS before the system was "
        "built; of GEMM peak: 2 x MACs x img/s over a large matrix product of the row's "
        "precision in the same run (fp32 and bf16 torch.matmul, int8 torch._int_mm; GFLOP/s "
        f"or GOP/s: {ratios['probes']}); prec: what the row computed in (OpenVINO's default "
        f"hint: the precision it picked on this CPU, {ratios['cpu']}); rel err: max |logits - "
        "eager fp32 logits| / max |eager logits|; vs ORT fp32: throughput over onnxruntime "
        f"fp32's in the same run. {a.rounds} alternating rounds per model.",
        speed,
    ]
    if not a.quick:
        body.append(target_summary(ratios))
    if not a.quick and a.memory_rounds:
        print("host memory", flush=True)
        mem = markdown_table(["resnet50 b16, optimized fp32, fresh processes", "img/s (median)",
                              "vs system malloc", "page faults per batch", "peak RSS MB",
                              "all rounds img/s"], memory_rows(a.memory_rounds, a.threads))  # fmt: skip
        print(mem)
        body += [f"Host memory ({a.memory_rounds} alternating rounds of fresh processes; "
                 "the table above ran with the setting on):", mem]  # fmt: skip
    if a.run:
        print("accuracy", flush=True)
        acc, trained = accuracy_rows(a.run, a.calib_images, a.bf16_images)
        name = getattr(trained, "name", None) or "the model"
        acc_table = markdown_table(
            [f"{name} on Fashion-MNIST test", "top-1 %", "vs fp32 (points)", "images", "img/s"],
            acc,
        )
        print(acc_table)
        body += [
            f"Accuracy kept: the run {Path(a.run).name} ({name}, 1x28x28) on the "
            "Fashion-MNIST test set; 'vs fp32' compares with the trained model on the same "
            "images.",
            acc_table,
        ]
    print(f"total {time.perf_counter() - start:.0f} s")
    if a.write:
        # The title (and so README's link to it) is kept from before OpenVINO joined.
        write_section("inference", "Inference: optimized resnetlab vs torchvision and "
                      "onnxruntime", "\n\n".join(body),
                      command("inference.py", argv))  # fmt: skip


if __name__ == "__main__":
    main()
