"""The delivery loop inside the real DreamBot: it starts with the bot, runs on SimCord's virtual
clock, edits a job's progress message and tells the member once when the job ends.

The notifier here is a small stand-in that writes plain text through the real Discord helpers
(``job_message``, ``send_to_member``): how trainings and images look is each feature's own test.
"""

from __future__ import annotations

from typing import Any

from bot.delivery import DELIVERY_EVERY_S, PROGRESS_EVERY_S, Finished
from bot.frontends.discord.client import DreamBot
from bot.frontends.discord.notifier import job_message, send_to_member
from bot.queue import JobStatus as QueueStatus
from bot.service import Backend
from storage.jobs import GenerateSpec
from storage.records import Job, JobKind, JobStatus, QuotaKind
from tests.bot.discord.conftest import World


class PlainNotifier:
    def __init__(self, bot: DreamBot) -> None:
        self.bot = bot

    async def progress(self, job: Job, status: QueueStatus) -> None:
        message = await job_message(self.bot, job)
        assert message is not None
        await message.edit(content=f"`{job.id}`: {status.state}, {status.position} ahead")

    async def finished(self, done: Finished) -> None:
        refunded = " Your quota was refunded." if done.refunded else ""
        await send_to_member(
            self.bot, done.job, content=f"<@{done.job.owner_id}> {done.error}{refunded}"
        )


async def _queued(backend: Backend, world: World, bot: DreamBot, job_id: str) -> Any:
    """A generation as /imagine leaves it, with its progress message posted by the bot."""
    await backend.repos.jobs.create(
        job_id, JobKind.GENERATE, world.alice.id, guild_id=world.guild.id
    )
    await backend.repos.quotas.reserve(
        world.alice.id, world.guild.id, QuotaKind.IMAGES, 4, 50, job_id=job_id
    )
    assert await backend.queue.enqueue(GenerateSpec(job_id, "a photo of a dog"))
    channel = bot.get_channel(world.channel.id)
    message = await channel.send(f"`{job_id}`: waiting")  # type: ignore[union-attr]
    await backend.repos.jobs.set_message(job_id, world.channel.id, message.id)
    return message


async def test_the_loop_edits_progress_and_delivers_a_cancel_once(
    world: World, backend: Backend, simcord_bot: DreamBot
) -> None:
    simcord_bot.delivery.notifier = PlainNotifier(simcord_bot)
    await _queued(backend, world, simcord_bot, "job-b")
    await _queued(backend, world, simcord_bot, "job-a")
    await world.env.advance_time(DELIVERY_EVERY_S)
    contents = [m.content for m in world.channel.history(viewer=world.alice)]
    assert "`job-b`: queued, 0 ahead" in contents and "`job-a`: queued, 1 ahead" in contents

    await world.alice.slash(world.channel, "cancel", job="job-b")
    await world.env.advance_time(PROGRESS_EVERY_S)
    contents = [m.content for m in world.channel.history(viewer=world.alice)]
    assert "`job-a`: queued, 0 ahead" in contents  # it moved up
    told = [c for c in contents if c.startswith(f"<@{world.alice.id}>")]
    assert told == [f"<@{world.alice.id}> This job was cancelled. Your quota was refunded."]
    job = await backend.repos.jobs.get("job-b")
    assert job is not None and job.status is JobStatus.CANCELLED and job.delivered_at is not None

    await world.env.advance_time(10 * DELIVERY_EVERY_S)
    contents = [m.content for m in world.channel.history(viewer=world.alice)]
    assert len([c for c in contents if c.startswith(f"<@{world.alice.id}>")]) == 1


async def test_the_loop_stops_with_the_bot(world: World, simcord_bot: DreamBot) -> None:
    assert simcord_bot._deliver.is_running()
    await simcord_bot.close()
    assert not simcord_bot._deliver.is_running()
