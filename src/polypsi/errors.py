"""Errors a user should read: a stage that raises one ends with its message, not a traceback.

Every message names the file, key or channel at fault and says how to fix it.
"""

from __future__ import annotations


class PolypsiError(Exception):
    """Base class of every error meant for the user (bad input, missing file or weights, bad setting)."""


class ConfigError(PolypsiError, ValueError):
    """A configuration value is missing, misspelt or of the wrong type."""


class DatasetError(PolypsiError, RuntimeError):
    """The dataset on disk is missing, unreadable or not in the expected layout."""


class ModelLoadError(PolypsiError, RuntimeError):
    """Weights or a checkpoint could not be had; the message says which file to place where."""


class EmbedderLoadError(PolypsiError, RuntimeError):
    """Embedder weights could not be had; the message says which file to place where."""


class SourceError(PolypsiError, LookupError):
    """A model, embedder, dataset or vocabulary source is not registered."""


class StageError(PolypsiError, RuntimeError):
    """Any other expected failure of a stage (inconsistent inputs, a setting that cannot work here)."""


class PreflightError(PolypsiError, RuntimeError):
    """Missing assets and settings that cannot work, found before any job runs; `problems` lists them all."""

    def __init__(self, message: str, problems: list | None = None):
        super().__init__(message)
        self.problems = list(problems or [])
