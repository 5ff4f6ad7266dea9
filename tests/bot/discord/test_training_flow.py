"""/train after the report: Cancel on the progress message, the consent view's Discard and
timeout, the upload thread for more than ten photos, and how progress and the end are rendered."""

from __future__ import annotations

import io
from dataclasses import replace
from typing import Any

import discord
import pytest
from arq.constants import in_progress_key_prefix
from PIL import Image

from bot.config import BotSettings
from bot.delivery import PROGRESS_EVERY_S, Finished
from bot.frontends.discord import training_messages, training_views
from bot.frontends.discord.client import DreamBot
from bot.frontends.discord.render import progress_bar
from bot.frontends.discord.training_views import CONSENT_LABEL, CONSENT_TIMEOUT_S
from bot.queue import JobState, JobStatus
from bot.service import Backend, DreamService
from storage.blobs import keys
from storage.jobs import TRAIN_QUEUE, Progress, progress_key
from storage.records import JobStatus as RowStatus
from storage.records import (
    LedgerState,
    ModelRecord,
    TrainMethod,
)
from tests.bot.discord.conftest import World
from tests.bot.discord.training_support import buttons, nothing_stored, png, queued, train

# -- cancel ------------------------------------------------------------------------------


async def test_cancel_by_another_member_is_refused_and_by_the_owner_refunds(
    world: World, backend: Backend
) -> None:
    job_id, progress = await queued(world, backend)
    refused = await world.bob.click(progress, label="Cancel")
    assert refused.response.ephemeral
    assert "Only the member who started this job, or a server admin" in refused.response.content
    assert (await backend.repos.jobs.get(job_id)).status is RowStatus.QUEUED  # type: ignore[union-attr]
    assert buttons(world.channel.last_message) == ["Cancel"]

    cancelled = await world.alice.click(progress, label="Cancel")
    edited = cancelled.response
    assert edited.id == progress.id and edited.components == []
    assert edited.embeds[0].title == "Training sks-dog: cancelled"
    assert "This training was cancelled.\nYour training quota was given back." in (
        edited.embeds[0].description
    )
    assert (await backend.repos.jobs.get(job_id)).status is RowStatus.CANCELLED  # type: ignore[union-attr]
    [reservation] = await backend.repos.quotas.for_job(job_id)
    assert reservation.state is LedgerState.REFUNDED
    assert await backend.queue.redis.zscore(TRAIN_QUEUE, job_id) is None


async def test_cancel_still_works_after_a_restart_and_an_admin_may_press_it(
    world: World, backend: Backend, bot_settings: BotSettings, service: DreamService
) -> None:
    job_id, progress = await queued(world, backend)
    await world.env.restart_bot(DreamBot(bot_settings, service))
    cancelled = await world.mod.click(progress, label="Cancel")
    assert f"cancelled by <@{world.mod.id}>" in cancelled.response.embeds[0].description
    assert (await backend.repos.jobs.get(job_id)).status is RowStatus.CANCELLED  # type: ignore[union-attr]


# -- consent view ------------------------------------------------------------------------


async def test_discard_and_timeout_store_nothing(
    world: World, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    discarded = await world.alice.click((await train(world, 1, 2, 3)).response, label="Discard")
    assert discarded.response.content == "Discarded: nothing was stored or charged."
    # Ten virtual minutes would run 400 delivery passes on real SQLite: a shorter timeout
    # exercises the same path.
    assert CONSENT_TIMEOUT_S < 15 * 60  # the ephemeral reply can be edited only that long
    monkeypatch.setattr(training_views, "CONSENT_TIMEOUT_S", 30)
    waiting = await train(world, 4, 5, 6)
    await world.env.advance_time(31)
    assert waiting.response.content.startswith("This request timed out")
    assert waiting.response.components == []
    await nothing_stored(backend, world.alice.id)


# -- more than ten photos ----------------------------------------------------------------


@pytest.mark.simcord(approved_intents=discord.Intents.default())  # as the developer portal has it
async def test_more_photos_in_an_upload_thread(world: World, backend: Backend) -> None:
    first = await train(world, *range(1, 11))
    opened = await world.alice.click(first.response, label="Add more photos")
    [thread] = world.channel.threads
    assert f"Drop up to 15 more photos in <#{thread.id}>" in opened.response.content
    [welcome] = thread.history()
    assert welcome.content.startswith(f"<@{world.alice.id}> Drop up to **15** more photos")
    assert buttons(welcome) == ["Start training"]
    bot_id = world.env.bot.user.id

    # Without the Message Content intent a message that does not mention the bot hides its
    # attachments from it, as on Discord: the member is told how to send them.
    await world.alice.send(thread, "", attachments=[("dog11.png", png(11))])
    unseen = await world.alice.click(welcome, label="Start training")
    assert "I can't see any photos from you in this thread yet" in unseen.response.content
    assert f"Mention me (<@{bot_id}>)" in unseen.response.content

    await world.alice.send(
        thread,
        f"<@{bot_id}> here are three more",
        attachments=[(f"dog{s}.png", png(s)) for s in (12, 13, 14)],
    )
    checked = await world.alice.click(welcome, label="Start training")
    [embed] = checked.response.embeds
    assert embed.title == "Photo check: 13 of 13 usable"
    assert embed.description.splitlines()[12] == "✅ **13.** dog14.png: Looks good."
    assert buttons(checked.response) == [CONSENT_LABEL, "Discard"]
    await nothing_stored(backend, world.alice.id)

    await world.alice.click(checked.response, label=CONSENT_LABEL)
    [job] = await backend.repos.jobs.for_owner(world.alice.id)
    assert job.params["photos"] == 13 and job.channel_id == world.channel.id
    assert len(backend.store.list(keys.photos_prefix(job.id))) == 13
    assert world.channel.threads == []  # the thread and the photos in it are gone
    assert world.channel.last_message.embeds[0].title == "Training sks-dog"


# -- progress and the end, as the notifier shows them ------------------------------------


async def test_show_progress_renders_queue_position_then_stage_step_and_eta(
    world: World, backend: Backend
) -> None:
    job_id, progress = await queued(world, backend)
    job = await backend.repos.jobs.get(job_id)
    assert job is not None
    bot = world.env.bot
    await training_messages.show_progress(bot, job, JobStatus(job_id, JobState.QUEUED, 2))
    text = world.channel.last_message.embeds[0].description
    assert "Waiting in the queue: **2** jobs ahead of yours." in text
    step = Progress(job_id, "training", step=200, total=800, eta_s=600, updated_at=1_800_000_000)
    await training_messages.show_progress(
        bot, job, JobStatus(job_id, JobState.RUNNING, progress=step)
    )
    message = world.channel.last_message
    assert message.id == progress.id
    lines = message.embeds[0].description.splitlines()
    assert lines[2:] == [
        "**Training**",
        progress_bar(0.25),
        "Step 200/800",
        "Done <t:1800000600:R> (estimate)",
    ]
    assert buttons(message) == ["Cancel"]  # progress edits keep the button


async def _finished_row(backend: Backend, job_id: str, status: RowStatus, error: str = "") -> Any:
    await backend.repos.jobs.transition(job_id, RowStatus.RUNNING)
    return await backend.repos.jobs.transition(job_id, status, error=error or None)


async def test_show_finished_success_posts_a_grid_and_mentions_the_member(
    world: World, backend: Backend
) -> None:
    job_id, progress = await queued(world, backend)
    job = await _finished_row(backend, job_id, RowStatus.SUCCEEDED)
    model = ModelRecord(
        id=job.params["model_id"],
        owner_id=world.alice.id,
        guild_id=world.guild.id,
        name="sks-dog",
        class_name="dog",
        identifier="sks",
        preset="tiny",
        method=TrainMethod.LORA,
        blob_key="models/x/lora.weights.h5",
        sha256="0" * 64,
        size_bytes=10,
        created_at=job.created_at,
        is_default=True,
    )
    samples = tuple(png(s) for s in (21, 22, 23, 24))
    await training_messages.show_finished(
        world.env.bot, Finished(job, model, samples, (0, 1, 2, 3))
    )
    edited = next(m for m in world.channel.history() if m.id == progress.id)
    assert edited.embeds[0].title == "Training sks-dog: done" and edited.components == []
    [grid] = edited.attachments  # the samples sit on the job's own message, which /forget finds
    assert grid.filename == training_messages.SAMPLES_FILE
    assert Image.open(io.BytesIO(await grid.read())).size == (2 * 96 + 4, 2 * 96 + 4)
    posted = world.channel.last_message  # an edit notifies nobody: a new message mentions
    assert posted.content.startswith(f"<@{world.alice.id}> your model **sks-dog** is ready!")
    assert world.alice.id in [user.id for user in posted.mentions]
    assert posted.reference is not None and posted.reference.message_id == progress.id
    assert (await backend.repos.jobs.get(job_id)).message_id == progress.id  # type: ignore[union-attr]


async def test_show_finished_without_its_message_posts_the_samples_and_tracks_them(
    world: World, backend: Backend
) -> None:
    job_id, progress = await queued(world, backend)
    await progress.delete()
    job = await _finished_row(backend, job_id, RowStatus.SUCCEEDED)
    await training_messages.show_finished(world.env.bot, Finished(job, None, (png(21),), (0,)))
    posted = world.channel.last_message
    assert posted.content.startswith(f"<@{world.alice.id}> your model")
    [grid] = posted.attachments
    assert grid.filename == training_messages.SAMPLES_FILE
    assert (await backend.repos.jobs.get(job_id)).message_id == posted.id  # type: ignore[union-attr]


async def test_show_finished_failure_says_why_and_that_the_quota_came_back(
    world: World, backend: Backend
) -> None:
    job_id, progress = await queued(world, backend)
    job = await _finished_row(backend, job_id, RowStatus.FAILED, "The GPU ran out of memory.")
    await training_messages.show_finished(
        world.env.bot, Finished(job, error="The GPU ran out of memory.", refunded=True)
    )
    edited = next(m for m in world.channel.history() if m.id == progress.id)
    assert edited.embeds[0].title == "Training sks-dog: failed" and edited.components == []
    assert "The GPU ran out of memory.\nYour training quota was given back." in (
        edited.embeds[0].description
    )
    posted = world.channel.last_message
    assert posted.content == (
        f"<@{world.alice.id}> your training of **sks-dog** failed: The GPU ran out of memory. "
        "Your training quota was given back."
    )


async def test_show_finished_falls_back_to_a_dm_when_the_channel_is_gone(
    world: World, backend: Backend
) -> None:
    job_id, _ = await queued(world, backend)
    job = await _finished_row(backend, job_id, RowStatus.CANCELLED, "Cancelled by an admin.")
    gone = replace(job, channel_id=999_999_999, message_id=None)
    await training_messages.show_finished(
        world.env.bot, Finished(gone, error="Cancelled by an admin.", refunded=True)
    )
    [dm] = world.alice.user.dm_channel.history()
    assert dm.content.endswith(
        "was cancelled: Cancelled by an admin. Your training quota was given back."
    )


async def test_delivery_edits_the_progress_message_as_the_worker_reports(
    world: World, backend: Backend
) -> None:
    """The bot's own delivery loop (no direct call): a worker claims the job and reports a
    step, and the progress message follows."""
    job_id, progress = await queued(world, backend)
    redis = backend.queue.redis
    await redis.set(in_progress_key_prefix + job_id, b"1")  # the worker's claim, as arq writes it
    step = Progress(job_id, "training", step=100, total=800, eta_s=900)
    await redis.set(progress_key(job_id), step.to_json())
    await world.env.advance_time(2 * PROGRESS_EVERY_S)
    message = next(m for m in world.channel.history() if m.id == progress.id)
    assert "Step 100/800" in message.embeds[0].description
    assert buttons(message) == ["Cancel"]
    assert (await backend.repos.jobs.get(job_id)).status is RowStatus.RUNNING  # type: ignore[union-attr]


async def test_an_upload_thread_that_times_out_is_deleted(
    world: World, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert training_views.UPLOAD_TIMEOUT_S == 30 * 60
    monkeypatch.setattr(training_views, "UPLOAD_TIMEOUT_S", 30)  # see the consent timeout test
    first = await train(world, 1, 2, 3)
    await world.alice.click(first.response, label="Add more photos")
    assert len(world.channel.threads) == 1
    await world.env.advance_time(31)
    assert world.channel.threads == []
    await nothing_stored(backend, world.alice.id)
