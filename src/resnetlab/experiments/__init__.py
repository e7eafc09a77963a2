"""The papers' experiments, each a frozen config and its steps, run by one runner.

* :func:`run_degradation`: plain vs residual nets of two depths (He et al. 2015, Figure 6).
* :func:`run_gradients`: per-layer gradient norms in plain and residual nets, and nets of
  more than 1000 layers trained with and without activation checkpointing.
* :func:`run_cardinality`: cardinality vs depth and width at equal MACs (Xie et al. 2017).

Each has a config (:mod:`.settings`: :class:`DegradationConfig`, ...; its fields' defaults
are the full setting, ``quick=True`` the quick one, ``KEY=VALUE`` overrides on top) and
trains through the engine's step with hooks (:mod:`.common`, :mod:`.runner`). This package
builds on config, models, data and engine; only the command line imports it.

The configs load at once; the experiments, with the data layer and the engine, when first
used (``resnetlab --help`` lists the settings without them).
"""

from __future__ import annotations

import importlib
from typing import Any

from .settings import (
    CardinalityConfig,
    DegradationConfig,
    ExperimentConfig,
    ExperimentError,
    ExperimentSettingsError,
    GradientsConfig,
    describe_fields,
    resolve_model,
)

CONFIGS: dict[str, type[ExperimentConfig]] = {
    "degradation": DegradationConfig,
    "gradients": GradientsConfig,
    "cardinality": CardinalityConfig,
}
# The run function of each experiment, in its module: EXPERIMENTS maps names to them.
_RUNNERS = {name: (f".{name}", f"run_{name}") for name in CONFIGS}
# What the experiment modules export, loaded on first use.
_LAZY = {
    "cardinality_variants": ".cardinality",
    "check_cardinality": ".cardinality",
    "run_cardinality": ".cardinality",
    "check_degradation": ".degradation",
    "run_degradation": ".degradation",
    "GradientProbe": ".gradients",
    "conv_gradient_norms": ".gradients",
    "run_gradients": ".gradients",
    "spread": ".gradients",
    "Tracker": ".common",
    "train_tracked": ".common",
}

__all__ = [
    "CONFIGS",
    "EXPERIMENTS",
    "CardinalityConfig",
    "DegradationConfig",
    "ExperimentConfig",
    "ExperimentError",
    "ExperimentSettingsError",
    "GradientProbe",
    "GradientsConfig",
    "Tracker",
    "cardinality_variants",
    "check_cardinality",
    "check_degradation",
    "conv_gradient_norms",
    "describe_fields",
    "experiment_fields",
    "resolve_model",
    "run_cardinality",
    "run_degradation",
    "run_experiment",
    "run_gradients",
    "spread",
    "train_tracked",
]


def __getattr__(name: str) -> Any:
    if name == "EXPERIMENTS":
        value: Any = {n: _runner(n) for n in CONFIGS}
    elif name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def _runner(name: str) -> Any:
    module, function = _RUNNERS[name]
    return getattr(importlib.import_module(module, __name__), function)


def _known(name: str) -> None:
    if name not in CONFIGS:
        raise ExperimentSettingsError(
            f"unknown experiment {name!r}: choose one of {', '.join(CONFIGS)}"
        )


def run_experiment(name: str, **options: Any) -> dict[str, Any]:
    """Run the experiment ``name`` (a key of :data:`EXPERIMENTS`) with its options: its
    config's fields, ``quick``, ``overrides`` (``KEY=VALUE`` strings), ``output``,
    ``overwrite`` and ``progress``."""
    _known(name)
    return _runner(name)(**options)


def experiment_fields(name: str) -> list[dict[str, str]]:
    """The settings of experiment ``name``: key, type, default, quick value, allowed, help."""
    _known(name)
    return describe_fields(CONFIGS[name])
