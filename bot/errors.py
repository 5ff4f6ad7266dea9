"""User-facing errors and the one place that turns any exception into words for a person."""

from __future__ import annotations

import logging
import secrets

from storage.errors import (
    ConfigError,
    DreambotError,
    InvalidArgument,
    QuotaExceeded,
    StorageError,
    UserFacingError,
)

__all__ = [
    "AccessDenied",
    "ConfigError",
    "Conflict",
    "DreambotError",
    "InvalidArgument",
    "NotFound",
    "QuotaExceeded",
    "StorageError",
    "UserFacingError",
    "render_error",
]

log = logging.getLogger(__name__)


def render_error(exc: BaseException, *, context: str = "") -> str:
    """The message shown for ``exc``: its own words if meant for users, else an apology + id.

    Unexpected errors are logged with the same short id, so an admin can find the traceback
    from the id a member quotes.
    """
    if isinstance(exc, UserFacingError):
        return exc.message
    error_id = secrets.token_hex(4)
    log.error("error %s %s", error_id, context, exc_info=exc)
    return f"Sorry, something went wrong on our side (error id `{error_id}`). Please try again."


class AccessDenied(UserFacingError):
    """The member may not do this here: banned, a channel not allowed, not an admin, not theirs."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="access_denied")


class NotFound(UserFacingError):
    """What the member named (a model, a job) does not exist, or is not theirs to see."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="not_found")


class Conflict(UserFacingError):
    """The request clashes with what exists (a model name in use, a job already finished)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="conflict")
