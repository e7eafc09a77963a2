"""The project's error types.

Every error a user can fix (a bad option, a missing file, a full disk, weights that do not
fit) is a ``ResnetlabError``: the CLI prints exactly those on one line, with what to do.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class ResnetlabError(Exception):
    """A problem with the user's input or environment; the message says what to do."""


class ConfigError(ResnetlabError, ValueError):
    """A config, option or argument is invalid (the message names it and what is allowed)."""


class ArchitectureNotDescribedError(ResnetlabError, ValueError):
    """Weights that do not describe their architecture (a torchvision/timm state dict, no
    resnetlab sidecar): the model has to be named to build it (``create_model(NAME, ...)``)."""


class MissingDependencyError(ResnetlabError, RuntimeError):
    """An optional extra a feature needs is not installed (the message says what to install)."""


class InstallationError(ResnetlabError, RuntimeError):
    """A file the package ships with is missing or damaged: reinstall resnetlab."""


class TrainingError(ResnetlabError, RuntimeError):
    """Training cannot go on (NaN loss, a refused resume, a run directory in the way)."""


class TrainingInterrupted(TrainingError):
    """SIGINT or SIGTERM stopped the training; a checkpoint of the last step was saved."""
