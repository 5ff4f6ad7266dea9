"""User-facing errors and the one place that turns any exception into words for a person."""

from __future__ import annotations

import logging
import secrets

from storage.errors import ConfigError, DreambotError, QuotaExceeded, StorageError, UserFacingError

__all__ = [
    "ConfigError",
    "DreambotError",
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
