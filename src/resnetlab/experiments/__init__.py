"""The papers' experiments, each one function that writes its results, figures and report.

* :func:`run_degradation`: plain vs residual nets of two depths (He et al. 2015, Figure 6).
* :func:`run_gradients`: per-layer gradient norms in plain and residual nets, and nets of
  more than 1000 layers trained with and without activation checkpointing.
* :func:`run_cardinality`: cardinality vs depth and width at equal MACs (Xie et al. 2017).

This package builds on config, models, data and engine; only the command line imports it.
"""

from __future__ import annotations

from typing import Any

from .cardinality import cardinality_variants, check_cardinality, run_cardinality
from .common import ExperimentError, ExperimentSettingsError, resolve_model
from .degradation import check_degradation, run_degradation
from .gradients import conv_gradient_norms, run_gradients, spread

EXPERIMENTS = {
    "degradation": run_degradation,
    "gradients": run_gradients,
    "cardinality": run_cardinality,
}

__all__ = [
    "EXPERIMENTS",
    "ExperimentError",
    "ExperimentSettingsError",
    "cardinality_variants",
    "check_cardinality",
    "check_degradation",
    "conv_gradient_norms",
    "resolve_model",
    "run_cardinality",
    "run_degradation",
    "run_experiment",
    "run_gradients",
    "spread",
]


def run_experiment(name: str, **options: Any) -> dict[str, Any]:
    """Run the experiment ``name`` (a key of :data:`EXPERIMENTS`) with its keyword options."""
    if name not in EXPERIMENTS:
        raise ExperimentSettingsError(
            f"unknown experiment {name!r}: choose one of {', '.join(EXPERIMENTS)}"
        )
    return EXPERIMENTS[name](**options)
