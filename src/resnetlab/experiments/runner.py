"""The one runner of every experiment: config, output directory, resume, machine, report.

An :class:`Experiment` says what is particular to it: its config class, its data, the
settings a later run must match to continue it, what it trains or measures, its claim and
its figures and report. :func:`run` does the rest, the same for all:

1. resolve the config (the quick or full preset, keyword values, ``KEY=VALUE`` overrides),
   checked before anything is read or written;
2. set up the device, threads and seed, and load the data;
3. prepare the output directory: results of the same settings are kept (an interrupted run
   continues with what is unfinished), other settings are refused unless ``overwrite``;
4. run the experiment, which saves its results as it goes (:meth:`Session.save`);
5. record the machine and the time in ``settings.json``; write the figures and the report.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from ..engine.hooks import Hook
from .common import (
    Recipe,
    SubsetData,
    prepare_output,
    record_run,
    setup,
    train_tracked,
    write_json,
)
from .settings import ENGINE_FIELDS, ExperimentConfig

RESULTS = "results.json"


@dataclass
class Session:
    """One run of an experiment: its config, output directory, device and the results so
    far (those of an interrupted run with the same settings included)."""

    cfg: Any
    out: Path
    device: torch.device
    progress: bool
    results: dict[str, Any]
    settings: dict[str, Any]
    start: float = field(default_factory=time.perf_counter)

    def save(self) -> None:
        """Write the results as they are now (atomically: a crash keeps the last ones)."""
        write_json(self.out / RESULTS, self.results)

    def recipe(self, **values: Any) -> Recipe:
        """A training recipe of ``values``, with the config's engine settings."""
        engine = {k: getattr(self.cfg, k) for k in ENGINE_FIELDS}
        return Recipe(**values, **engine)

    def train(
        self,
        key: str,
        model: nn.Module,
        data: SubsetData,
        recipe: Recipe,
        entry: dict[str, Any] | None = None,
        *,
        hooks: Sequence[Hook] = (),
    ) -> dict[str, Any]:
        """Train ``model`` tracked (:func:`~.common.train_tracked`). With ``entry``, the
        results hold it as ``results[key]``, rewritten with the errors and curve so far at
        every point."""

        def save(curve: list[dict[str, Any]]) -> None:
            last = curve[-1]
            entry.update(train_error=last["train_error"], test_error=last["test_error"],
                         curve=curve)  # fmt: skip
            self.results[key] = entry
            self.save()

        return train_tracked(model, data, recipe, device=self.device, progress=self.progress,
                             desc=key, on_point=None if entry is None else save,
                             hooks=hooks)  # fmt: skip


class Experiment:
    """One paper experiment; subclasses set ``name`` and ``config`` and fill in the steps."""

    name: ClassVar[str] = ""
    config: ClassVar[type[ExperimentConfig]] = ExperimentConfig

    def load(self, cfg: Any, device: torch.device) -> Any:
        """The data the experiment trains and measures on."""
        raise NotImplementedError

    def settings(self, cfg: Any, data: Any) -> dict[str, Any]:
        """What a later run must match to continue this one's results."""
        raise NotImplementedError

    def execute(self, session: Session, data: Any) -> None:
        """Train and measure what is not in ``session.results`` yet, saving as it goes."""
        raise NotImplementedError

    def conclude(self, session: Session, data: Any) -> dict[str, Any]:
        """What the results say (e.g. ``{"claim": ...}``), recorded in ``settings.json``."""
        return {}

    def finish(
        self, session: Session, data: Any, found: dict[str, Any], meta: dict[str, Any]
    ) -> dict[str, Any]:
        """Figures, report and a summary of ``found`` (:meth:`conclude`'s) and the machine
        (``meta``); the entries of the result besides ``results`` and ``output``."""
        raise NotImplementedError


def run(
    experiment: Experiment,
    output: str | os.PathLike | None = None,
    *,
    overwrite: bool = False,
    progress: bool = True,
    quick: bool | None = None,
    overrides: Sequence[str] = (),
    **values: Any,
) -> dict[str, Any]:
    """Run ``experiment`` with its config resolved from the ``quick`` or full preset,
    ``values`` (None: the preset's) and ``overrides`` (``KEY=VALUE``); results, figures and
    report go to ``output`` (default ``runs/<name>``). Returns the results and what
    :meth:`Experiment.finish` adds (report, summary, ...)."""
    cfg = experiment.config.resolve(quick=quick, overrides=overrides, **values)
    return run_config(experiment, cfg, output, overwrite=overwrite, progress=progress)


def run_config(
    experiment: Experiment,
    cfg: ExperimentConfig,
    output: str | os.PathLike | None = None,
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Run ``experiment`` with a config already resolved (see :func:`run`)."""
    dev = setup(cfg.device, cfg.threads, cfg.seed, cfg.precision)
    start = time.perf_counter()
    data = experiment.load(cfg, dev)
    settings = experiment.settings(cfg, data)
    out = Path(output if output is not None else f"runs/{experiment.name}")
    results = prepare_output(out, settings, overwrite=overwrite, results=RESULTS)
    session = Session(cfg, out, dev, progress, results, settings, start)
    experiment.execute(session, data)
    found = experiment.conclude(session, data)
    meta = record_run(out, dev, time.perf_counter() - start, **found)
    shown = experiment.finish(session, data, found, meta)
    return {"results": session.results, **found, **shown, "output": str(out)}
