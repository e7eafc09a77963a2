"""The project's error types.

Every error a user can fix (a bad option, a missing file, a full disk, weights that do not
fit) is a ``ResnetlabError``: the CLI prints exactly those on one line, with what to do.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class ResnetlabError(Exception):
    """A problem with the user's input or environment; the message says what to do."""


class ConfigError(ResnetlabError, ValueError):
    """A config file, preset or KEY=VALUE override is invalid (the message names the key)."""
