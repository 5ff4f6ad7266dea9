"""How things look in Discord: the member (``Actor``) of an interaction, progress bars, quota
and error replies. Cogs build their replies from these so every command looks alike."""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Awaitable, Sequence
from datetime import datetime

import discord
from discord import app_commands
from PIL import Image

from bot.errors import render_error
from bot.queue import JobState
from bot.queue import JobStatus as QueueStatus
from bot.service import Actor, QuotaStatus, Usage
from storage.records import Job, JobKind

__all__ = [
    "BRAND",
    "actor_of",
    "image_grid",
    "job_line",
    "job_title",
    "progress_bar",
    "quota_embed",
    "reply",
    "send_error",
    "timestamp",
    "unwrap",
]

log = logging.getLogger(__name__)

BRAND = discord.Colour.blurple()
ERROR = discord.Colour.red()


def actor_of(interaction: discord.Interaction) -> Actor:
    """The member behind an interaction. ``is_admin`` is their Manage Server permission as
    Discord resolved it for this interaction (not whether the command was visible to them)."""
    perms = interaction.permissions
    return Actor(
        user_id=interaction.user.id,
        guild_id=interaction.guild_id,
        channel_id=interaction.channel_id,
        name=interaction.user.display_name,
        is_admin=interaction.guild_id is not None and (perms.manage_guild or perms.administrator),
    )


def progress_bar(fraction: float, width: int = 20) -> str:
    """``▰▰▰▱▱▱ 50%``: a text bar that renders the same on every Discord client."""
    fraction = min(1.0, max(0.0, fraction))
    filled = round(fraction * width)
    return "▰" * filled + "▱" * (width - filled) + f" {fraction * 100:.0f}%"


def timestamp(when: datetime, style: str = "R") -> str:
    """A Discord timestamp: each member sees it in their own time zone (``R``: "in 3 hours")."""
    return f"<t:{int(when.timestamp())}:{style}>"


def _usage_line(usage: Usage) -> str:
    line = f"**{usage.left}** of {usage.limit} left"
    if usage.resets_at is not None:
        line += f" · resets {timestamp(usage.resets_at)}"
    return line


def quota_embed(status: QuotaStatus) -> discord.Embed:
    embed = discord.Embed(title="Your quota here", colour=BRAND)
    for usage in status.all:
        embed.add_field(name=usage.kind.label.capitalize(), value=_usage_line(usage), inline=False)
    return embed


def unwrap(error: BaseException) -> BaseException:
    """The exception a command really raised (discord.py wraps it in CommandInvokeError)."""
    while isinstance(error, app_commands.CommandInvokeError):
        error = error.original
    return error


async def reply(
    interaction: discord.Interaction,
    content: str | None = None,
    *,
    ephemeral: bool = True,
    **kwargs: object,
) -> None:
    """Answer an interaction whether or not it was already acknowledged (deferred)."""
    if interaction.response.is_done():
        await interaction.followup.send(content, ephemeral=ephemeral, **kwargs)  # type: ignore[call-overload]
    else:
        await interaction.response.send_message(content, ephemeral=ephemeral, **kwargs)  # type: ignore[call-overload]


async def send_error(interaction: discord.Interaction, error: BaseException) -> None:
    """Render any error for the member: their own words for a UserFacingError, else a short
    apology with an error id that is also logged with the traceback."""
    original = unwrap(error)
    if isinstance(original, app_commands.CheckFailure | app_commands.TransformerError):
        text = str(original) or "You can't use that here."
    else:
        name = interaction.command.qualified_name if interaction.command else "interaction"
        text = render_error(original, context=f"/{name} by {interaction.user.id}")
    try:
        await reply(interaction, text, ephemeral=True)
    except (discord.HTTPException, discord.RateLimited):
        log.warning("could not tell user %s about an error", interaction.user.id, exc_info=True)


def job_title(job: Job) -> str:
    """What a job is, in a few words: the model it trains, or the prompt it draws."""
    if job.kind is JobKind.TRAIN:
        name = job.params.get("name") or job.params.get("identifier", "model")
        return f"training **{name}**"
    prompt = str(job.params.get("prompt", ""))
    return f"imagine “{prompt[:60]}{'…' if len(prompt) > 60 else ''}”"


def job_line(job: Job, status: QueueStatus, *, plain: bool = False) -> str:
    """One line per job for /queue and /admin queue: what, where it stands, how far."""
    where: str
    if status.state is JobState.QUEUED:
        where = "next in line" if status.position == 0 else f"{status.position} ahead in the queue"
    elif status.progress is not None and status.progress.total:
        p = status.progress
        where = f"{p.stage.replace('_', ' ')} {p.step}/{p.total}"
    else:
        where = str(status.state).replace("_", " ")
    line = f"{job_title(job)} · {where}"
    if plain:
        return f"{job.id} · " + line.replace("**", "").replace("“", '"').replace("”", '"')
    return f"`{job.id}` {line}"


def image_grid(pngs: Sequence[bytes], *, gap: int = 4) -> bytes:
    """One PNG with the images side by side (2 in a row, 4 in a 2x2 grid), for one attachment
    that Discord shows large; the images keep their own size."""
    if not pngs:
        raise ValueError("a grid needs at least one image")
    images = [Image.open(io.BytesIO(data)).convert("RGB") for data in pngs]
    width, height = images[0].size
    columns = 1 if len(images) == 1 else 2
    rows = math.ceil(len(images) / columns)
    sheet = Image.new(
        "RGB",
        (columns * width + (columns - 1) * gap, rows * height + (rows - 1) * gap),
        (32, 34, 37),
    )
    for index, image in enumerate(images):
        if image.size != (width, height):
            image = image.resize((width, height))
        row, column = divmod(index, columns)
        sheet.paste(image, (column * (width + gap), row * (height + gap)))
    out = io.BytesIO()
    sheet.save(out, format="PNG")
    return out.getvalue()


async def quietly(edit: Awaitable[object]) -> None:
    """Tidy a message after the fact (a view that timed out): a message the member dismissed,
    or an interaction token that expired, is nothing to report."""
    try:
        await edit
    except (discord.HTTPException, discord.RateLimited) as exc:
        log.info("could not tidy a message: %s", exc)
