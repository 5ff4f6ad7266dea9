"""The use cases every front end shares (Discord today, Telegram later); nothing here knows
Discord. Each area is its own class over one injected :class:`Backend`::

    service = DreamService(Backend(settings, repos, queue, store))
    job = await service.training.start(actor, request)
    await service.privacy.forget(actor)

Every method takes the :class:`Actor` asking, checks what it may do server-side (banned,
channel allowed, admin, owner), and raises a ``UserFacingError`` with plain words otherwise.
"""

from __future__ import annotations

from pathlib import Path

from bot.service.admin import AdminService
from bot.service.context import (
    CONSENT_TEXT,
    CONSENT_VERSION,
    Actor,
    Backend,
    ModelHost,
    QuotaStatus,
    Usage,
    quota_status,
)
from bot.service.imagine import ImagineService
from bot.service.lifecycle import JobLifecycle
from bot.service.models import ModelService
from bot.service.privacy import PrivacyService
from bot.service.training import TrainingService

__all__ = [
    "CONSENT_TEXT",
    "CONSENT_VERSION",
    "Actor",
    "AdminService",
    "Backend",
    "DreamService",
    "ImagineService",
    "JobLifecycle",
    "ModelHost",
    "ModelService",
    "PrivacyService",
    "QuotaStatus",
    "TrainingService",
    "Usage",
]


class DreamService:
    """Every use case over one backend; built once by the entry point, shared by front ends."""

    def __init__(self, backend: Backend, *, bpe_path: Path | str | None = None) -> None:
        """``bpe_path``: the CLIP merges file the workers' tokenizer reads, so /imagine counts a
        prompt's tokens exactly (without it, a lower bound that never refuses a prompt CLIP
        would take)."""
        self.backend = backend
        self.training = TrainingService(backend)
        self.imagine = ImagineService(backend, bpe_path)
        self.models = ModelService(backend)
        self.admin = AdminService(backend)
        self.privacy = PrivacyService(backend)
        self.jobs = JobLifecycle(backend)

    async def quota(self, actor: Actor) -> QuotaStatus:
        """/quota: every limit of this member here, what is left and when it resets."""
        await self.backend.guard(actor)
        return await quota_status(self.backend, actor)
