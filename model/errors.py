"""One error hierarchy for the learner.

Every class also inherits a built-in so callers can catch either (``except ValueError`` works
for a bad scene). Messages name the file, what was expected, what was found and what to do.
"""

from __future__ import annotations


class DclabelError(Exception):
    """Base class of every error dclabel raises on purpose."""


class SceneError(DclabelError, ValueError):
    """A scene (raster) cannot be used: wrong bands, no CRS, unreadable."""


class SceneNotFoundError(SceneError, FileNotFoundError):
    """A scene file does not exist."""


class LabelError(DclabelError, ValueError):
    """Footprint labels cannot be used: unreadable, empty, no overlap with the scene."""


class CheckpointError(DclabelError, ValueError):
    """A checkpoint is missing, corrupt or incompatible with the scene."""


class ConfigError(DclabelError, ValueError):
    """Settings out of range (a command-line flag, a config field): the message names the setting."""


class Cancelled(DclabelError):
    """A long job was cancelled by its caller; nothing was replaced."""


class OutputError(DclabelError, OSError):
    """An output could not be written completely (disk full, a file size limit); nothing was left behind."""
