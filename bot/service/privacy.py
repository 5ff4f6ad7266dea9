"""/forget: delete everything of one member in one server."""

from __future__ import annotations

from bot.service.context import Backend

__all__ = ["PrivacyService"]


class PrivacyService:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend
