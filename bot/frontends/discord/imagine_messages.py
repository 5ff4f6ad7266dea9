"""Placeholder: how a job's progress and result look in Discord (lands with its feature)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bot.delivery import Finished
from bot.queue import JobStatus as QueueStatus
from storage.records import Job

if TYPE_CHECKING:
    from bot.frontends.discord.client import DreamBot

__all__ = ["show_finished", "show_progress"]


async def show_progress(bot: DreamBot, job: Job, status: QueueStatus) -> None:
    raise NotImplementedError


async def show_finished(bot: DreamBot, done: Finished) -> None:
    raise NotImplementedError
