"""The project's one error hierarchy.

``DreambotError`` is the root. ``UserFacingError`` carries a message written for a person (the
bot shows it as is); everything else is a bug or an outage and is logged with an error id.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DreambotError",
    "InvalidArgument",
    "QuotaExceeded",
    "StorageError",
    "UserFacingError",
]


class DreambotError(Exception):
    """Root of every error the project raises on purpose."""


class StorageError(DreambotError):
    """The database or blob store refused an operation."""


class ConfigError(DreambotError):
    """Settings are missing or invalid; the message names the variable."""


class UserFacingError(DreambotError):
    """An error whose message is meant for the person who caused it."""

    def __init__(self, message: str, *, code: str = "error") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class QuotaExceeded(UserFacingError):
    """A reservation would go past the user's quota for the window."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="quota_exceeded")


class InvalidArgument(UserFacingError):
    """A value a person typed breaks one of the shared rules (a command option, a slash-command
    argument); the message says which value and what is allowed."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="invalid_argument")
