"""/train: check photos, record consent, reserve quota, store photos, queue the job."""

from __future__ import annotations

from bot.service.context import Backend

__all__ = ["TrainingService"]


class TrainingService:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend
