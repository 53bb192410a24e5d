"""Errors of the human-in-the-loop layer; each also inherits a built-in."""

from __future__ import annotations

from model.errors import DclabelError


class LoopError(DclabelError):
    """Base class of loop errors."""


class ProjectError(LoopError, ValueError):
    """A project folder is missing, malformed, or does not hold what was asked."""


class StoreError(LoopError, RuntimeError):
    """The label store cannot be read or written."""


class NoTrainingDataError(LoopError, ValueError):
    """Retraining was asked for but there are no (or only negative) reviewed chips."""


class NaipError(LoopError, RuntimeError):
    """NAIP imagery could not be found or fetched."""


class StacUnreachableError(NaipError):
    """The STAC API did not answer at all (network down, wrong endpoint): no later request will."""
