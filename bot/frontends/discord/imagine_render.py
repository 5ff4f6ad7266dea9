"""How an /imagine job reads in Discord while it waits and runs, and posting its progress
message: a normal channel message (the interaction token dies after 15 minutes, and a busy
queue may take longer), remembered on the job row so delivery can edit it after a restart."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord

from bot.frontends.discord import notifier
from bot.frontends.discord.render import progress_bar
from bot.queue import JobState
from bot.queue import JobStatus as QueueStatus
from bot.service.imagine import Queued
from storage.jobs import Stage
from storage.records import Job

if TYPE_CHECKING:
    from bot.frontends.discord.client import DreamBot

__all__ = [
    "NO_MENTIONS",
    "describe",
    "post_progress",
    "progress_text",
    "queued_reply",
    "seeds_text",
    "waiting_line",
]

log = logging.getLogger(__name__)

NO_MENTIONS = discord.AllowedMentions.none()


def _quoted(prompt: str, limit: int = 300) -> str:
    short = prompt if len(prompt) <= limit else prompt[: limit - 1] + "…"
    return f"“{short}”"


def describe(job: Job) -> str:
    """``“prompt” · model **x** · 4 images · 30 steps · guidance 7.5``"""
    p = job.params
    model = f"**{p['model_name']}**" if p.get("model_name") else "the base model"
    count = int(p.get("count", 1))
    parts = [
        _quoted(str(p.get("prompt", ""))),
        model,
        f"{count} image{'s' if count != 1 else ''}",
        f"{p.get('steps')} steps",
        f"guidance {p.get('guidance')}",
    ]
    line = " · ".join(parts)
    if p.get("negative"):
        line += f"\nNegative: {_quoted(str(p['negative']), 200)}"
    return line


def seeds_text(seeds: tuple[int, ...] | list[int]) -> str:
    return "Seeds: " + " ".join(f"`{s}`" for s in seeds)


def waiting_line(position: int | None) -> str:
    if position is None:
        return "Starting…"
    if position == 0:
        return "Waiting: next in line."
    return f"Waiting: {position} job{'s' if position != 1 else ''} ahead in the queue."


def progress_text(job: Job, status: QueueStatus) -> str:
    """The progress message: who and what, then the queue position or a progress bar."""
    head = f"🎨 <@{job.owner_id}> is imagining {describe(job)}"
    progress = status.progress
    if status.state is JobState.QUEUED:
        line = waiting_line(status.position)
    elif progress is not None and progress.stage == Stage.GENERATING.value and progress.total:
        line = f"{progress_bar(progress.fraction)} · step {progress.step}/{progress.total}"
        if progress.eta_s:
            line += f" · about {max(1, round(progress.eta_s))} s left"
    elif progress is not None and progress.message:
        line = progress.message.capitalize() + "…"
    else:
        line = "Starting…"
    return f"{head}\n{line}"


def queued_reply(queued: Queued) -> str:
    """The member's ephemeral answer: what was queued, with the hint when there is one."""
    count = len(queued.seeds)
    model = f"**{queued.model.name}**" if queued.model else "the base model"
    text = (
        f"Queued {count} image{'s' if count != 1 else ''} with {model}. "
        f"{waiting_line(queued.position)} I'll post them in this channel when they're ready.\n"
        f"{seeds_text(queued.seeds)}"
    )
    if queued.hint:
        text += f"\n💡 {queued.hint}"
    return text


async def post_progress(bot: DreamBot, queued: Queued) -> discord.Message | None:
    """Post the job's progress message and remember it on the row; None when neither the
    channel nor a DM takes it (delivery still tries to post the result)."""
    job = queued.job
    status = QueueStatus(job.id, JobState.QUEUED, position=queued.position)
    try:
        message = await notifier.send_to_member(
            bot, job, content=progress_text(job, status), allowed_mentions=NO_MENTIONS
        )
    except (discord.HTTPException, discord.RateLimited):
        log.warning("could not post the progress of job %s", job.id, exc_info=True)
        return None
    await bot.service.backend.repos.jobs.set_message(job.id, message.channel.id, message.id)
    return message
