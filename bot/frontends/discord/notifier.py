"""The Discord side of delivery: where a job's messages live, and which feature renders them.

A job's progress message is a normal channel message (never the 15-minute interaction token);
its channel and message ids are on the job row (``jobs.set_message``). When that channel is gone
or the bot lost access, the member gets a DM instead.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import discord

from bot.delivery import Finished, Notifier
from bot.frontends.discord import imagine_messages, training_messages
from bot.queue import JobStatus as QueueStatus
from storage.records import Job, JobKind

if TYPE_CHECKING:
    from bot.frontends.discord.client import DreamBot

__all__ = ["DiscordNotifier", "job_message", "send_to_member"]

log = logging.getLogger(__name__)


async def _channel(bot: DreamBot, channel_id: int | None) -> discord.abc.Messageable | None:
    if channel_id is None:
        return None
    channel = bot.get_channel(channel_id)
    if channel is None:
        try:
            channel = await bot.fetch_channel(channel_id)
        except (discord.NotFound, discord.Forbidden):
            return None
    return channel if isinstance(channel, discord.abc.Messageable) else None


async def job_message(bot: DreamBot, job: Job) -> discord.Message | None:
    """The job's progress message, or None when it (or its channel) is gone."""
    if job.message_id is None:
        return None
    channel = await _channel(bot, job.channel_id)
    if channel is None:
        return None
    try:
        return await channel.fetch_message(job.message_id)
    except (discord.NotFound, discord.Forbidden):
        return None


async def send_to_member(bot: DreamBot, job: Job, **content: Any) -> discord.Message:
    """Post in the job's channel, or DM its member when the channel is gone or closed to us."""
    channel = await _channel(bot, job.channel_id)
    if channel is not None:
        try:
            return await channel.send(**content)
        except (discord.NotFound, discord.Forbidden):
            log.info("channel %s is gone; sending job %s by DM", job.channel_id, job.id)
    user = bot.get_user(job.owner_id) or await bot.fetch_user(job.owner_id)
    return await user.send(**content)


class DiscordNotifier(Notifier):
    """Hands each job to the feature that renders it: trainings and imagine results."""

    def __init__(self, bot: DreamBot) -> None:
        self.bot = bot

    async def progress(self, job: Job, status: QueueStatus) -> None:
        if job.kind is JobKind.TRAIN:
            await training_messages.show_progress(self.bot, job, status)
        else:
            await imagine_messages.show_progress(self.bot, job, status)

    async def finished(self, done: Finished) -> None:
        if done.job.kind is JobKind.TRAIN:
            await training_messages.show_finished(self.bot, done)
        else:
            await imagine_messages.show_finished(self.bot, done)
