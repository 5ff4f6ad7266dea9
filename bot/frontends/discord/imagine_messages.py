"""How an /imagine job's progress and result look in Discord (the Notifier calls these).

Progress edits the job's channel message. A result is a new message (so the member is
notified by the mention) with one grid, the single pictures, their seeds and the buttons; the
progress message then goes away. A failure edits the progress message to say why and whether
the images were given back.
"""

from __future__ import annotations

import asyncio
import io
import logging
from typing import TYPE_CHECKING

import discord

from bot.delivery import Finished

# Modules, not names: notifier imports this module, and these import notifier (whichever of
# them is imported first, the names are looked up when called).
from bot.frontends.discord import imagine_render, imagine_views, notifier
from bot.frontends.discord.render import BRAND, image_grid
from bot.queue import JobStatus as QueueStatus
from storage.records import Job, JobStatus

if TYPE_CHECKING:
    from bot.frontends.discord.client import DreamBot

__all__ = ["GRID_FILE", "picture_file", "show_finished", "show_progress"]

GRID_FILE = "grid.png"
FAILED = discord.Colour.red()

log = logging.getLogger(__name__)


def picture_file(index: int, seed: int | None) -> str:
    """``2-seed-1234.png``: the picture's place and seed, so a saved file can be redrawn."""
    return f"{index + 1}-seed-{seed}.png" if seed is not None else f"{index + 1}.png"


def _owner(job: Job) -> discord.AllowedMentions:
    return discord.AllowedMentions(users=[discord.Object(id=job.owner_id)])


async def show_progress(bot: DreamBot, job: Job, status: QueueStatus) -> None:
    """Edit the progress message (when it still exists) to the queue position or progress."""
    message = await notifier.job_message(bot, job)
    if message is None:
        return
    text = imagine_render.progress_text(job, status)
    if message.content != text:
        await message.edit(content=text, allowed_mentions=imagine_render.NO_MENTIONS)


async def show_finished(bot: DreamBot, done: Finished) -> None:
    if done.job.status is JobStatus.SUCCEEDED and done.images and done.error is None:
        await _post_result(bot, done)
    else:
        await _report_failure(bot, done)


async def _post_result(bot: DreamBot, done: Finished) -> None:
    job = done.job
    seeds = done.seeds or tuple(int(s) for s in job.params.get("seeds", []))
    files: list[discord.File] = []
    if len(done.images) > 1:
        grid = await asyncio.to_thread(image_grid, list(done.images))
        files.append(discord.File(io.BytesIO(grid), filename=GRID_FILE))
    for index, png in enumerate(done.images):
        seed = seeds[index] if index < len(seeds) else None
        files.append(discord.File(io.BytesIO(png), filename=picture_file(index, seed)))
    embed = discord.Embed(
        description=f"{imagine_render.describe(job)}\n{imagine_render.seeds_text(seeds)}",
        colour=BRAND,
    )
    embed.set_image(url=f"attachment://{files[0].filename}")
    embed.set_footer(text="Re-roll: new seeds · V1 to V4: more like that picture · Delete: remove")
    progress = await notifier.job_message(bot, job)
    message = await notifier.send_to_member(
        bot,
        job,
        content=f"<@{job.owner_id}> your images are ready.",
        embed=embed,
        files=files,
        view=imagine_views.result_view(job.id, seeds[: len(done.images)]),
        allowed_mentions=_owner(job),
    )
    await bot.service.backend.repos.jobs.set_message(job.id, message.channel.id, message.id)
    if progress is not None and progress.id != message.id:
        # The result is out: tidying the progress message away must not make delivery try
        # again (that would post the pictures twice), so any failure here is only logged.
        try:
            await progress.delete()
        except (discord.HTTPException, discord.RateLimited) as exc:
            log.warning("job %s: could not delete its progress message: %s", job.id, exc)


async def _report_failure(bot: DreamBot, done: Finished) -> None:
    job = done.job
    count = int(job.params.get("count", len(done.seeds) or 1))
    if job.status is JobStatus.CANCELLED:
        text = f"🛑 Cancelled: {imagine_render.describe(job)}"
    else:
        reason = done.error or "No pictures came back from the worker."
        text = f"❌ I could not draw {imagine_render.describe(job)}\n{reason}"
    if done.refunded:
        images = "The image was" if count == 1 else f"The {count} images were"
        text += f"\n{images} refunded to your quota."
    message = await notifier.job_message(bot, job)
    if message is not None:
        await message.edit(content=text, allowed_mentions=imagine_render.NO_MENTIONS, view=None)
    else:
        await notifier.send_to_member(
            bot, job, content=f"<@{job.owner_id}> {text}", allowed_mentions=_owner(job)
        )
