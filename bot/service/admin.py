"""/admin: quotas, queue, bans, channels, blocklist, usage; every action audited."""

from __future__ import annotations

from bot.service.context import Backend

__all__ = ["AdminService"]


class AdminService:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend
