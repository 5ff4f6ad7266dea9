"""/models: list, info, rename, default, delete, export a member's models."""

from __future__ import annotations

from bot.service.context import Backend

__all__ = ["ModelService"]


class ModelService:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend
