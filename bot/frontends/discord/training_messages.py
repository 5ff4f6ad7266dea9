"""How a training's progress and result look in Discord (the Notifier calls these).

A training's progress is one normal channel message (never the 15-minute interaction token)
with a **Cancel** button whose custom id carries the job id, so it keeps working after the bot
restarts. Progress edits that message; the end edits it once more (done, failed or cancelled,
without the button), and a success or a failure also posts a new message that mentions the
member, so they are notified (an edit notifies nobody).
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

import discord

from bot.delivery import Finished
from bot.frontends.discord import notifier
from bot.frontends.discord.render import BRAND, actor_of, image_grid, progress_bar, send_error
from bot.frontends.discord.render import timestamp as discord_time
from bot.queue import JobState
from bot.queue import JobStatus as QueueStatus
from storage.records import Job, JobStatus

if TYPE_CHECKING:
    from bot.frontends.discord.client import DreamBot

__all__ = [
    "SAMPLES_FILE",
    "CancelTraining",
    "cancel_view",
    "ended_embed",
    "post_progress",
    "progress_embed",
    "show_finished",
    "show_progress",
]

log = logging.getLogger(__name__)

SAMPLES_FILE = "samples.png"
DONE = discord.Colour.green()
ENDED = discord.Colour.red()
NO_MENTIONS = discord.AllowedMentions.none()

# What each stage a worker reports means to a member.
_STAGES = {
    "queued": "Waiting in the queue",
    "preparing": "Preparing your photos",
    "class_images": "Drawing comparison pictures of the class",
    "training": "Training",
    "exporting": "Saving your model",
    "done": "Finishing",
}
_METHODS = {"lora": "LoRA", "full": "full fine-tune"}


def _name(job: Job) -> str:
    return str(job.params.get("name") or job.params.get("identifier") or "your model")


def _owner_mention(job: Job) -> discord.AllowedMentions:
    return discord.AllowedMentions(users=[discord.Object(job.owner_id)], roles=False)


def _about(job: Job) -> str:
    params = job.params
    method = _METHODS.get(str(params.get("method", "")), str(params.get("method", "")))
    return (
        f"<@{job.owner_id}>'s model of **{params.get('identifier', '?')} "
        f"{params.get('class_name', '?')}** · {params.get('photos', '?')} photos · {method}"
    )


def progress_embed(job: Job, status: QueueStatus) -> discord.Embed:
    """Where a queued or running training stands: place in the queue, or stage, a bar,
    step/total and when it should be done."""
    embed = discord.Embed(title=f"Training {_name(job)}", colour=BRAND)
    lines = [_about(job), ""]
    progress = status.progress
    if status.state is JobState.QUEUED:
        ahead = status.position or 0
        lines.append(progress_bar(0.0))
        lines.append(
            "Waiting in the queue: **next in line**."
            if ahead == 0
            else f"Waiting in the queue: **{ahead}** job{'s' * (ahead != 1)} ahead of yours."
        )
    else:
        stage = progress.stage if progress is not None else "preparing"
        lines.append(f"**{_STAGES.get(stage, stage.replace('_', ' ').capitalize())}**")
        if progress is not None and progress.total:
            lines.append(progress_bar(progress.fraction))
            lines.append(f"Step {progress.step}/{progress.total}")
        if progress is not None and progress.eta_s is not None:
            eta = datetime.fromtimestamp(progress.updated_at + progress.eta_s, UTC)
            lines.append(f"Done {discord_time(eta)} (estimate)")
    embed.description = "\n".join(lines)
    embed.set_footer(text=f"Job {job.id} · only its owner or a server admin can cancel it")
    return embed


def ended_embed(job: Job, reason: str, *, refunded: bool) -> discord.Embed:
    """A training that failed or was cancelled: why, and whether its quota came back."""
    cancelled = job.status is JobStatus.CANCELLED
    embed = discord.Embed(
        title=f"Training {_name(job)}: {'cancelled' if cancelled else 'failed'}", colour=ENDED
    )
    lines = [_about(job), "", reason]
    if refunded:
        lines.append("Your training quota was given back.")
    embed.description = "\n".join(lines)
    embed.set_footer(text=f"Job {job.id}")
    return embed


def _done_embed(job: Job, name: str) -> discord.Embed:
    words = f"{job.params.get('identifier', '')} {job.params.get('class_name', '')}".strip()
    embed = discord.Embed(title=f"Training {name}: done", colour=DONE)
    embed.description = "\n".join(
        [
            _about(job),
            "",
            progress_bar(1.0),
            f"Your model **{name}** is ready. Use it with `/imagine`, with **{words}** in the "
            "prompt.",
        ]
    )
    embed.set_footer(text=f"Job {job.id}")
    return embed


class CancelTraining(
    discord.ui.DynamicItem[discord.ui.Button[discord.ui.View]],
    template=r"train:cancel:(?P<job_id>[a-z0-9]{1,40})",
):
    """The Cancel button of a progress message. Its custom id holds the job id, so a button
    posted before a restart still works (registered with ``bot.add_dynamic_items``); who may
    press it (the owner or a server admin) is checked by the service."""

    def __init__(self, job_id: str) -> None:
        super().__init__(
            discord.ui.Button(
                label="Cancel", style=discord.ButtonStyle.danger, custom_id=f"train:cancel:{job_id}"
            )
        )
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction,
        item: discord.ui.Item[Any],
        match: Any,
    ) -> CancelTraining:
        return cls(str(match["job_id"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        bot = cast("DreamBot", interaction.client)
        try:
            job = await bot.service.jobs.cancel(actor_of(interaction), self.job_id)
        except Exception as exc:  # rendered for the member; unexpected ones are logged with an id
            await send_error(interaction, exc)
            return
        by = "" if interaction.user.id == job.owner_id else f" by {interaction.user.mention}"
        embed = ended_embed(job, f"This training was cancelled{by}.", refunded=True)
        await interaction.response.edit_message(
            content=f"<@{job.owner_id}>", embed=embed, view=None, allowed_mentions=NO_MENTIONS
        )


def cancel_view(job_id: str) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(CancelTraining(job_id))
    return view


async def post_progress(bot: DreamBot, job: Job, status: QueueStatus) -> discord.Message:
    """Post a new training's progress message in its channel (or the member's DMs when the
    channel is closed to the bot) and remember it on the job row."""
    message = await notifier.send_to_member(
        bot,
        job,
        content=f"<@{job.owner_id}>",
        embed=progress_embed(job, status),
        view=cancel_view(job.id),
        allowed_mentions=NO_MENTIONS,
    )
    await bot.service.backend.repos.jobs.set_message(job.id, message.channel.id, message.id)
    return message


async def show_progress(bot: DreamBot, job: Job, status: QueueStatus) -> None:
    """Edit the progress message (nothing to do when it is gone: the end is still delivered)."""
    message = await notifier.job_message(bot, job)
    if message is not None:
        await message.edit(embed=progress_embed(job, status))


async def show_finished(bot: DreamBot, done: Finished) -> None:
    """Done: the message shows it, and a new one mentions the member with the sample grid.
    Failed or cancelled: the message says why and whether the quota came back; a failure
    also mentions the member (a cancel was their own or an admin's doing, shown in place)."""
    job = done.job
    message = await notifier.job_message(bot, job)
    mention = f"<@{job.owner_id}>"
    if job.status is JobStatus.SUCCEEDED:
        name = done.model.name if done.model is not None else _name(job)
        await _show_done(bot, job, message, name, done.images)
        return
    cancelled = job.status is JobStatus.CANCELLED
    reason = done.error or (
        "This training was cancelled." if cancelled else "This training failed on the worker."
    )
    if message is not None:
        await message.edit(
            content=mention,
            embed=ended_embed(job, reason, refunded=done.refunded),
            view=None,
            allowed_mentions=NO_MENTIONS,
        )
    if cancelled and message is not None:
        return
    refund = " Your training quota was given back." if done.refunded else ""
    what = "was cancelled" if cancelled else "failed"
    await notifier.send_to_member(
        bot,
        job,
        content=f"{mention} your training of **{_name(job)}** {what}: {reason}{refund}",
        allowed_mentions=_owner_mention(job),
    )


async def _show_done(
    bot: DreamBot, job: Job, message: discord.Message | None, name: str, samples: Sequence[bytes]
) -> None:
    """The progress message becomes the done card with the sample grid (the job keeps naming
    it, so /forget removes the pictures), and a short new message mentions the member (an
    edit notifies nobody). With the progress message gone, the new message carries both."""
    files = []
    if samples:
        grid = await asyncio.to_thread(image_grid, list(samples))
        files.append(discord.File(io.BytesIO(grid), filename=SAMPLES_FILE))
    card = _done_embed(job, name)
    if files:
        card.set_image(url=f"attachment://{SAMPLES_FILE}")
    words = f"{job.params.get('identifier', '')} {job.params.get('class_name', '')}"
    text = (
        f"<@{job.owner_id}> your model **{name}** is ready! Here are a few samples. Try "
        f"`/imagine` with a prompt like “a photo of {words} on the beach”."
    )
    if message is not None:
        await message.edit(
            content=f"<@{job.owner_id}>",
            embed=card,
            attachments=files,
            view=None,
            allowed_mentions=NO_MENTIONS,
        )
        await notifier.send_to_member(
            bot, job, content=text, reference=message, allowed_mentions=_owner_mention(job)
        )
        return
    posted = await notifier.send_to_member(
        bot,
        job,
        content=text,
        embed=card,
        files=files,
        allowed_mentions=_owner_mention(job),
    )
    try:  # the pictures are out: failing to note where must not post them again
        await bot.service.backend.repos.jobs.set_message(job.id, posted.channel.id, posted.id)
    except Exception:
        log.exception("job %s: could not record its samples message", job.id)
