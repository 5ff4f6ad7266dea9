"""/imagine: resolve the model, check the prompt, reserve images, queue the job."""

from __future__ import annotations

from bot.service.context import Backend

__all__ = ["ImagineService"]


class ImagineService:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend
