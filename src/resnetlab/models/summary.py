"""Tables of the named nets: measured size beside the published one."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tqdm import tqdm

from ..formatting import format_count, render_table
from .reference import PUBLISHED

__all__ = [
    "MODELS_COLUMNS",
    "figure_matches",
    "info_table",
    "models_table",
    "paper_table",
    "render_models_table",
    "render_paper_table",
    "render_table",
]


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
            published_exact=pub.exact if pub else None,
            published_gmacs=pub.gmacs if pub else None,
            params_diff_pct=_diff(info["params"], pub.params if pub else None),
            macs_diff_pct=_diff(info["macs"] / 1e9, pub.gmacs if pub else None),
            source=pub.source if pub else None,
        )
        rows.append(row)
    return rows


def _published(value: float | None, exact: bool, prefix: str) -> str:
    # A paper's rounded figure as the paper prints it (1.7M, 3.8G); an exact one as measured.
    if value is None:
        return "-"
    scale = {"M": 1e6, "G": 1e9}[prefix]
    return format_count(value) if exact else f"{value / scale:g}{prefix}"


def _diff_pct(value: float | None) -> str:
    return "-" if value is None else ("0" if value == 0 else f"{value:+.2g}%")


def _macs(gmacs: float | None) -> str:
    return format_count(None if gmacs is None else gmacs * 1e9)


MODELS_COLUMNS = [
    ("name", "model"),
    ("family", "family"),
    ("depth", "depth"),
    ("input", "input"),
    ("params", "params"),
    ("gmacs", "MACs"),
    ("published_params", "published params"),
    ("published_gmacs", "published MACs"),
    ("params_diff_pct", "params diff"),
    ("macs_diff_pct", "MACs diff"),
]


def render_models_table(rows: list[dict[str, Any]]) -> str:
    """The rows of :func:`models_table` as a table: counts with SI prefixes (11.7M, 1.81G),
    the papers' rounded figures as printed, differences in percent."""
    shown = []
    for r in rows:
        exact = r.get("published_exact", True)
        gmacs = r["published_gmacs"]
        shown.append(
            dict(
                r,
                published_params=_published(r["published_params"], exact, "M"),
                published_gmacs=_published(None if gmacs is None else gmacs * 1e9, exact, "G"),
            )
        )
    formats = {
        "depth": str,
        "params": format_count,
        "gmacs": _macs,
        "published_params": str,
        "published_gmacs": str,
        "params_diff_pct": _diff_pct,
        "macs_diff_pct": _diff_pct,
    }
    return render_table(shown, MODELS_COLUMNS, formats)


def info_table(info: dict[str, Any]) -> str:
    """Per-layer output shape, params (exact) and MACs (SI prefix) of :func:`model_info`."""
    rows = [dict(layer) for layer in info["layers"]]
    rows.append(dict(name="total", params=info["params"], macs=info["macs"]))
    for row in rows:
        shape = row.get("output_shape")
        row["output"] = "x".join(map(str, shape)) if shape else "-"
    cols = [
        ("name", "layer"),
        ("output", "output (CxHxW)"),
        ("params", "params"),
        ("macs", "MACs"),
    ]
    return render_table(rows, cols, {"macs": format_count})


def _decimals(value: float) -> int:
    text = f"{value:.10f}".rstrip("0")
    return len(text.split(".")[1]) if "." in text else 0


def _unit(quantity: str) -> float:
    return 1e9 if quantity == "gmacs" else 1e6


def figure_matches(measured: float, published: float, *, exact: bool, quantity: str) -> bool:
    """Whether ``measured`` agrees with a published figure: equal for an exact count, else
    equal once rounded as the figure is (10.18M matches "10.2M"; 10.33M does not).

    ``measured`` and ``published`` are plain counts (params) or GMACs (``quantity="gmacs"``).
    """
    if exact:
        return measured == published
    scale = 1.0 if quantity == "gmacs" else _unit(quantity)
    half_step = 0.5 * 10.0 ** -_decimals(published / scale)
    return abs(measured / scale - published / scale) <= half_step + 1e-9


def _mark(match: bool, diff_pct: float) -> str:
    if match:
        return "✓"
    return f"✗ {diff_pct:+.2f}%" if abs(diff_pct) < 0.1 else f"✗ {diff_pct:+.1f}%"


def _conv_fc_weights(name: str) -> int:
    import torch
    from torch import nn

    from . import create_model

    with torch.device("meta"):
        model = create_model(name)
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))


def paper_table(pattern: str = "*", *, progress: bool = False) -> list[dict[str, Any]]:
    """Measured params / conv-fc weights / GMACs beside every published figure of the nets
    matching ``pattern``, each row with a mark: "✓" within the figure's rounding (or equal,
    for exact counts), else "✗" and the relative difference."""
    import fnmatch

    from . import model_info
    from .reference import paper_figures
    from .zoo import list_models

    order = {name: i for i, name in enumerate(list_models())}
    figures = [f for f in paper_figures() if fnmatch.fnmatch(f.model, pattern)]
    figures.sort(key=lambda f: (order.get(f.model, len(order)), f.quantity != "params",
                                f.quantity, not f.exact))  # fmt: skip
    with_weights = {f.model for f in figures if f.quantity == "weights"}
    measured: dict[tuple[str, str], float] = {}
    rows = []
    bar = tqdm(figures, desc="measuring", unit="figure", disable=not progress, leave=False)
    for fig in bar:
        key = (fig.model, fig.quantity)
        if key not in measured:
            if fig.quantity == "weights":
                measured[key] = _conv_fc_weights(fig.model)
            else:
                info = model_info(fig.model)
                measured[(fig.model, "params")] = info["params"]
                measured[(fig.model, "gmacs")] = info["macs"] / 1e9
        value = measured[key]
        diff = 100.0 * (value - fig.value) / fig.value
        match = figure_matches(value, fig.value, exact=fig.exact, quantity=fig.quantity)
        note = fig.note
        if not note and fig.quantity == "params" and fig.model in with_weights:
            note = "all parameters, BN included"
        rows.append(
            dict(model=fig.model, quantity=fig.quantity, measured=value, published=fig.value,
                 exact=fig.exact, diff_pct=diff, match=match, mark=_mark(match, diff),
                 source=fig.source, note=note)
        )  # fmt: skip
    return rows


def _show(value: float, quantity: str, exact: bool, published: bool) -> str:
    if quantity == "gmacs":
        return f"{value:g}" if published else f"{value:.3f}"
    if exact:
        return f"{int(value):,}"
    if published:
        return f"{value / 1e6:g}M"
    return f"{value / 1e6:.2f}M" if value >= 1e6 else f"{value / 1e6:.3f}M"


def render_paper_table(rows: list[dict[str, Any]]) -> str:
    """The rows of :func:`paper_table` as a table, with a one-line tally below it."""
    names = {"params": "params", "weights": "conv/fc weights", "gmacs": "GMACs"}
    shown = [
        dict(
            model=r["model"],
            quantity=names[r["quantity"]],
            measured=_show(r["measured"], r["quantity"], r["exact"], False),
            published=_show(r["published"], r["quantity"], r["exact"], True),
            mark=r["mark"],
            source=r["source"],
            note=r["note"] or "-",
        )
        for r in rows
    ]
    columns = [("model", "model"), ("quantity", "quantity"), ("measured", "measured"),
               ("published", "published"), ("mark", "match"), ("source", "source"),
               ("note", "note")]  # fmt: skip
    bad = [f"{r['model']} {names[r['quantity']]}" for r in rows if not r["match"]]
    tally = f"{len(rows) - len(bad)} of {len(rows)} published figures match"
    tally += f"; mismatches: {', '.join(bad)}" if bad else ""
    return render_table(shown, columns) + "\n" + tally
