"""Trainer errors, under the project's one hierarchy in :mod:`storage.errors`."""

from __future__ import annotations

from storage.errors import ConfigError, DreambotError, UserFacingError

__all__ = [
    "CheckpointError",
    "ModelFormatError",
    "TrainingDataError",
    "WeightsNotFound",
]


class WeightsNotFound(ConfigError):
    """A base-model weight file is missing from WEIGHTS_DIR (and downloading is off)."""


class TrainingDataError(UserFacingError):
    """The photos or class images cannot be trained on; the message says why."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="bad_training_data")


class CheckpointError(DreambotError):
    """A checkpoint is incomplete or does not match the run that tries to resume from it."""


class ModelFormatError(DreambotError):
    """An exported model directory is missing a file or does not match its base model."""
