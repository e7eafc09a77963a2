"""Tables of the named nets: measured size beside the published one."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tqdm import tqdm

from .reference import PUBLISHED


def _diff(measured: float, published: float | None) -> float | None:
    return None if published is None else 100.0 * (measured - published) / published


def models_table(names: Iterable[str], *, progress: bool = False) -> list[dict[str, Any]]:
    """One row per model: family, depth, params, MACs (native input) and published figures."""
    from . import model_info  # the package API builds the models

    names = list(names)
    rows = []
    for name in tqdm(names, desc="measuring", unit="model", disable=not progress, leave=False):
        info = model_info(name)
        pub = PUBLISHED.get(name)
        row = dict(
            name=name,
            family=info["family"],
            depth=info["depth"],
            input=f"{info['input_size'][1]}x{info['input_size'][2]}",
            params=info["params"],
            gmacs=info["macs"] / 1e9,
            published_params=pub.params if pub else None,
            published_gmacs=pub.gmacs if pub else None,
            params_diff_pct=_diff(info["params"], pub.params if pub else None),
            macs_diff_pct=_diff(info["macs"] / 1e9, pub.gmacs if pub else None),
            source=pub.source if pub else None,
        )
        rows.append(row)
    return rows


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def render_table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    """A plain-text table (markdown-compatible) of ``rows`` with (key, header) ``columns``."""
    cells = [[h for _, h in columns]] + [[_fmt(r.get(k)) for k, _ in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
             for row in cells]  # fmt: skip
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


MODELS_COLUMNS = [
    ("name", "model"),
    ("family", "family"),
    ("depth", "depth"),
    ("input", "input"),
    ("params", "params"),
    ("gmacs", "GMACs"),
    ("published_params", "published params"),
    ("published_gmacs", "published GMACs"),
    ("params_diff_pct", "params diff %"),
    ("macs_diff_pct", "MACs diff %"),
]


def info_table(info: dict[str, Any]) -> str:
    rows = [dict(layer, gmacs=layer["macs"] / 1e9) for layer in info["layers"]]
    rows.append(dict(name="total", params=info["params"], gmacs=info["macs"] / 1e9))
    for row in rows:
        shape = row.get("output_shape")
        row["output"] = "x".join(map(str, shape)) if shape else "-"
    cols = [
        ("name", "layer"),
        ("output", "output (CxHxW)"),
        ("params", "params"),
        ("gmacs", "GMACs"),
    ]
    return render_table(rows, cols)
