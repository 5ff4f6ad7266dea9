"""Trainer errors, under the project's one hierarchy in :mod:`storage.errors`.

Bad input a person can fix (a training option, a prompt, a model file that belongs to another
base) raises a :class:`~storage.errors.UserFacingError` subclass with a stable ``code``; broken
state the system wrote itself (checkpoints) stays a plain :class:`DreambotError`.
"""

from __future__ import annotations

from collections.abc import Sequence

from storage.errors import ConfigError, DreambotError, InvalidArgument, UserFacingError

__all__ = [
    "BaseNotFound",
    "CheckpointError",
    "CheckpointMismatch",
    "InvalidTrainConfig",
    "LoraMismatch",
    "ModelFormatError",
    "PromptTooLong",
    "TrainingDataError",
    "WeightsNotFound",
]


class WeightsNotFound(ConfigError):
    """A base-model weight file is missing from WEIGHTS_DIR (and downloading is off)."""


class TrainingDataError(UserFacingError):
    """The photos or class images cannot be trained on; the message says why."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="bad_training_data")


class InvalidTrainConfig(InvalidArgument):
    """A training option is out of range or contradicts another; the message names it.

    An :class:`InvalidArgument`, so the command line treats it as a usage error.
    """

    def __init__(self, message: str) -> None:
        UserFacingError.__init__(self, message, code="invalid_train_config")


class PromptTooLong(UserFacingError):
    """The prompt does not fit the text encoder's context.

    Refused, not truncated: silently dropping the end of a prompt changes the picture without
    telling the person.
    """

    def __init__(self, tokens: int, limit: int, *, which: str = "prompt") -> None:
        super().__init__(
            f"The {which} is too long: it is {tokens} tokens and at most {limit} fit. "
            "Please shorten it.",
            code="prompt_too_long",
        )
        self.tokens = tokens
        self.limit = limit


class CheckpointError(DreambotError):
    """A checkpoint is incomplete or does not match the run that tries to resume from it."""


class CheckpointMismatch(CheckpointError):
    """A checkpoint was trained from something else (photos, learning rate, base model...).

    Resuming it would silently continue the old run, so it is refused; ``differences`` says
    what differs in plain words and ``hint`` how to start fresh (the CLI names its own flags).
    """

    def __init__(
        self,
        differences: Sequence[str],
        *,
        step: int,
        where: str = "The checkpoint",
        hint: str = "To start fresh, discard the checkpoint.",
    ) -> None:
        self.differences = tuple(differences)
        self.step = step
        self.where = where
        self.hint = hint
        listed = "\n".join(f"  - {d}" for d in self.differences)
        super().__init__(
            f"{where} (step {step}) comes from a different run, so it cannot be resumed:\n"
            f"{listed}\n{hint}"
        )


class ModelFormatError(DreambotError):
    """An exported model directory is missing a file or does not match its base model."""


class LoraMismatch(ModelFormatError, UserFacingError):
    """LoRA weights that do not fit the model they are applied to (trained on another base).

    A :class:`ModelFormatError` too, so whoever catches bad model folders catches this.
    """

    def __init__(self, message: str) -> None:
        UserFacingError.__init__(self, message, code="lora_mismatch")


class BaseNotFound(ModelFormatError, UserFacingError):
    """The base model a saved model was trained on is not here, and cannot be made here (the
    code that fits the tiny base has changed since, or fitted it differently); the message says
    which base it needs and that the model must be trained again.
    """

    def __init__(self, message: str) -> None:
        UserFacingError.__init__(self, message, code="base_not_found")
