"""How the commands show their results as text: evaluations, predictions, exports and
benchmark tables. The library returns data; these turn it into what the user reads."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..inference.bench import BenchRow
    from ..inference.export import ExportResult


def format_result(result: dict[str, Any]) -> str:
    """The evaluation as text: one headline, per-class accuracy, where the PNG went."""
    if result.get("task") in ("detection", "segmentation"):
        return format_dense_result(result)
    how = [result["split"], f"n={result['n']}"]
    if result.get("tta_flip"):
        how.append("test-time flip")
    lines = [
        f"{result['source']} on {result['data']} ({', '.join(how)}): "
        f"top-1 {100 * result['top1']:.2f}%  top-5 {100 * result['top5']:.2f}%  "
        f"loss {result['loss']:.4f}",
        "per-class accuracy:",
    ]
    lines += [f"  {name:>20s}  {100 * acc:6.2f}%" for name, acc in result["per_class"].items()]
    if result.get("confusion_png"):
        lines.append(f"confusion matrix: {result['confusion_png']}")
    return "\n".join(lines)


def format_dense_result(result: dict[str, Any]) -> str:
    """A dense evaluation as text: the headline metrics and the per-class figures."""
    head = f"{result['source']} on {result['data']} ({result['split']}, n={result['n']}): "

    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{100 * v:.2f}%"

    if result["task"] == "detection":
        head += f"box mAP {pct(result['map'])}  mAP@.5 {pct(result['map50'])}"
        if "mask_map" in result:
            head += f"  mask mAP {pct(result['mask_map'])}"
        lines = [head, "per-class box AP:"]
        lines += [f"  {k:>20s}  {pct(v):>7s}" for k, v in result["per_class_ap"].items()]
    else:
        head += f"mIoU {pct(result['miou'])}  pixel accuracy {pct(result['pixel_acc'])}"
        lines = [head, "per-class IoU:"]
        lines += [f"  {k:>20s}  {pct(v):>7s}" for k, v in result["per_class_iou"].items()]
    if result.get("eval_json"):
        lines.append(f"results: {result['eval_json']}")
    return "\n".join(lines)


def format_prediction(result: dict[str, Any]) -> str:
    """One line: the path, then ``name (prob)`` pairs, most probable first."""
    pairs = ", ".join(f"{t['class']} ({t['prob']:.4f})" for t in result["topk"])
    return f"{result['path']}: {pairs}"


# Detections listed per image in the text output of a detector (the best first)
DETECTIONS_SHOWN = 5


def format_dense_prediction(result: dict[str, Any]) -> str:
    """One line for a dense model's image: what it found (a detector's best boxes, or a
    segmenter's class areas, largest first), then where the drawn image went."""
    if "detections" in result:
        found = result["detections"]
        parts = [f"{d['label']} {d['score']:.2f} at {[int(c) for c in d['box']]}"
                 for d in found[:DETECTIONS_SHOWN]]  # fmt: skip
        more = ""
        if len(found) > DETECTIONS_SHOWN:
            more = f"; {len(found) - DETECTIONS_SHOWN} more (--json lists all)"
        what = f"{len(found)} found" + (": " + "; ".join(parts) + more if parts else "")
    else:
        areas = sorted(result["areas"].items(), key=lambda kv: -kv[1])
        what = ", ".join(f"{k} {100 * v:.1f}%" for k, v in areas) or "background only"
    drawn = f" -> {result['drawn']}" if result.get("drawn") is not None else ""
    return f"{result['path']}: {what}{drawn}"


def format_export_result(result: ExportResult) -> str:
    """What the ``export`` command prints."""
    from ..inference.export import BATCHED_FORMATS

    batch = ""
    if result.format in BATCHED_FORMATS:
        batch = ", dynamic batch" if result.dynamic_batch else ", static batch 1"
    also = f" and {result.path.with_suffix('.bin').name}" if result.format == "openvino" else ""
    lines = [f"wrote {result.path}{also} ({result.format}{batch})"]
    if result.max_rel_error is None:
        lines.append("not verified (--no-verify)")
    else:
        lines.append(f"verified: max relative error vs PyTorch {result.max_rel_error:.3g}")
    if result.load_with:
        lines.append(f"load with: {result.load_with}")
    return "\n".join(lines)


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def format_bench(rows: Sequence[BenchRow], title: str | None = None) -> str:
    """A plain-text table of :func:`~resnetlab.inference.bench_model`'s rows, then the notes."""
    headers = ["system", "prec", "img/s", "p50 ms", "p95 ms", "mem MB", "GFLOP/s",
               "of peak", "rel err"]  # fmt: skip
    table = [headers]
    for r in rows:
        table.append([
            r.system, r.precision, _fmt(r.img_per_s, ".1f"), _fmt(r.p50_ms, ".1f"),
            _fmt(r.p95_ms, ".1f"), _fmt(r.mem_mb, ".0f"), _fmt(r.gflops, ".1f"),
            _fmt(r.peak_fraction, ".0%"), _fmt(r.max_rel_error, ".1e"),
        ])  # fmt: skip
    widths = [max(len(row[i]) for row in table) for i in range(len(headers))]
    if title is None and rows:
        c, h, w = rows[0].input_size or (0, 0, 0)
        title = f"{rows[0].model}, batch {rows[0].batch_size}, input {c}x{h}x{w}"
        if rows[0].cpu:
            title += f", CPU {rows[0].cpu}"
    lines = [title] if title else []
    for i, row in enumerate(table):
        pairs = enumerate(zip(row, widths, strict=True))
        cells = [c.ljust(w) if j < 2 else c.rjust(w) for j, (c, w) in pairs]
        lines.append("  ".join(cells).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    order = {"fp32": 0, "bf16": 1, "int8": 2}
    probes = sorted({(r.precision, r.probe_gflops) for r in rows if r.probe_gflops},
                    key=lambda p: order.get(p[0], 3))  # fmt: skip
    if probes:
        text = ", ".join(f"{p} {g:.0f} {'GOP/s' if p == 'int8' else 'GFLOP/s'}" for p, g in probes)
        lines.append(f"GEMM peak (matrix-product probe, each precision its own): {text}")
    for r in rows:
        if r.note:
            lines.append(f"{r.system} ({r.precision}): {r.note}")
    return "\n".join(lines)
