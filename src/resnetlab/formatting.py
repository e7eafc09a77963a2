"""How numbers are shown to people: counts with SI prefixes, JSON without float noise.

Measurements pass through float32 on their way out (``0.9313`` becomes
``0.9312999844551086``); :func:`round_floats` rounds every float of a JSON-like value to a
few significant digits where it is written, so files and ``--json`` output carry the
digits that mean something. Counts of parameters and multiply-accumulates read best with
an SI prefix and three significant digits (``1.70M``, ``4.09G``): :func:`format_count`.
:func:`render_table` lays rows out as a plain-text (markdown-compatible) table.

This module imports nothing of the project, so any layer may use it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

__all__ = [
    "JSON_DIGITS",
    "dumps_json",
    "format_cell",
    "format_count",
    "render_table",
    "round_floats",
]

JSON_DIGITS = 6
_PREFIXES = ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K"))


def _round(x: float, digits: int | None) -> float:
    if not math.isfinite(x) or x == 0:
        return x
    if digits is None:
        # lossless: a value that is exactly a float32 gets float32's shortest repr (the
        # digits it was measured with); any other double is kept as it is
        import numpy as np

        f32 = np.float32(x)
        return float(repr(float(str(f32)))) if float(f32) == x else x
    return float(f"{x:.{digits}g}")


def round_floats(value: Any, digits: int | None = JSON_DIGITS) -> Any:
    """``value`` with every float (in dicts, lists, tuples) rounded to ``digits`` significant
    digits; ints, bools, strings and None unchanged, tuples become lists (as JSON has them).

    ``digits=None`` rounds without loss, for results that must compare equal to the
    values they came from: float32 noise only (``0.9312999844551086`` -> ``0.9313``).

    Floats of other libraries (numpy scalars) are floats too: ``float(x)`` is taken.
    """
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return _round(value, digits)
    if isinstance(value, dict):
        return {k: round_floats(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [round_floats(v, digits) for v in value]
    if hasattr(value, "dtype") and getattr(value, "ndim", None) == 0:  # numpy / torch scalar
        item = value.item()
        return round_floats(item, digits)
    return value


def dumps_json(value: Any, *, digits: int | None = JSON_DIGITS, **kwargs: Any) -> str:
    """``json.dumps`` of ``value`` with its floats rounded by :func:`round_floats`."""
    return json.dumps(round_floats(value, digits), **kwargs)


def format_count(value: float | int | None, digits: int = 3) -> str:
    """A count with an SI prefix and ``digits`` significant digits: 269722 -> "270K",
    1.7e6 -> "1.70M", 4.089e9 -> "4.09G"; below 1000 the number itself ("650"); None -> "-".
    """
    if value is None:
        return "-"
    if not math.isfinite(value):
        return str(value)
    sign = "-" if value < 0 else ""
    v = abs(value)
    rounded = float(f"{v:.{digits}g}")  # round first: 999,999 is "1.00M", not "1000K"
    if v < 1000 and float(v).is_integer():
        return f"{sign}{v:.0f}"
    if rounded < 1000:
        return f"{sign}{rounded:g}"
    for scale, prefix in _PREFIXES:
        if rounded >= scale:
            scaled = rounded / scale
            decimals = max(0, digits - 1 - int(math.floor(math.log10(scaled))))
            return f"{sign}{scaled:.{decimals}f}{prefix}"
    return sign + f"{rounded:.0f}"  # not reached: rounded >= 1000


def format_cell(value: Any) -> str:
    """A table cell: "-" for None, thousands separators for ints, three decimals for floats."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def render_table(
    rows: list[dict[str, Any]],
    columns: list[tuple[str, str]],
    formats: dict[str, Callable[[Any], str]] | None = None,
) -> str:
    """A plain-text table (markdown-compatible) of ``rows`` with (key, header) ``columns``;
    ``formats`` maps a key to the function that shows its values (default: :func:`format_cell`)."""
    formats = formats or {}
    cells = [[h for _, h in columns]]
    cells += [[formats.get(k, format_cell)(r.get(k)) for k, _ in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
             for row in cells]  # fmt: skip
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)
