"""The buttons under an /imagine result: Re-roll, V1..V4 (variations) and Delete.

Each is a :class:`discord.ui.DynamicItem` whose ``custom_id`` carries the job id, so a button
keeps working after a restart, on a message posted by a bot process long gone; ``setup`` of the
imagine cog registers them with ``bot.add_dynamic_items``.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Self, cast

import discord

from bot.frontends.discord import imagine_render  # a module: see imagine_messages
from bot.frontends.discord.render import actor_of, reply, send_error

if TYPE_CHECKING:
    from bot.frontends.discord.client import DreamBot

__all__ = ["DYNAMIC_ITEMS", "DeleteButton", "RerollButton", "VariationButton", "result_view"]

_JOB = r"(?P<job>[0-9A-Za-z][0-9A-Za-z_-]{0,63})"

Button = discord.ui.Button[discord.ui.View]


def _bot(interaction: discord.Interaction) -> DreamBot:
    return cast("DreamBot", interaction.client)


async def _answer(interaction: discord.Interaction, run: Callable[[], Awaitable[None]]) -> None:
    """Run a button's work and show any error to the member the way commands do (discord.py
    only logs an error raised in a dynamic item's callback)."""
    try:
        await run()
    except Exception as exc:
        await send_error(interaction, exc)


class RerollButton(discord.ui.DynamicItem[Button], template=rf"imagine:reroll:{_JOB}"):
    """The same request again with new seeds, charged to whoever clicks."""

    def __init__(self, job_id: str) -> None:
        super().__init__(
            discord.ui.Button(
                label="Re-roll",
                emoji="🔄",
                style=discord.ButtonStyle.primary,
                custom_id=f"imagine:reroll:{job_id}",
                row=0,
            )
        )
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ) -> Self:
        return cls(match["job"])

    async def callback(self, interaction: discord.Interaction) -> None:
        async def run() -> None:
            await interaction.response.defer(ephemeral=True, thinking=True)
            bot = _bot(interaction)
            queued = await bot.service.imagine.reroll(actor_of(interaction), self.job_id)
            await imagine_render.post_progress(bot, queued)
            await reply(interaction, "Re-rolling. " + imagine_render.queued_reply(queued))

        await _answer(interaction, run)


class VariationButton(
    discord.ui.DynamicItem[Button],
    template=rf"imagine:vary:{_JOB}:(?P<index>[0-9]):(?P<seed>[0-9]{{1,19}})",
):
    """More pictures like picture ``index + 1``: same request, seeds near its ``seed`` (carried
    in the button, so it names the picture shown even when another one went missing)."""

    def __init__(self, job_id: str, index: int, seed: int) -> None:
        super().__init__(
            discord.ui.Button(
                label=f"V{index + 1}",
                style=discord.ButtonStyle.secondary,
                custom_id=f"imagine:vary:{job_id}:{index}:{seed}",
                row=1,
            )
        )
        self.job_id = job_id
        self.index = index
        self.seed = seed

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ) -> Self:
        return cls(match["job"], int(match["index"]), int(match["seed"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        async def run() -> None:
            await interaction.response.defer(ephemeral=True, thinking=True)
            bot = _bot(interaction)
            actor = actor_of(interaction)
            queued = await bot.service.imagine.vary(actor, self.job_id, self.seed)
            await imagine_render.post_progress(bot, queued)
            text = imagine_render.queued_reply(queued)
            await reply(interaction, f"Variations of picture {self.index + 1}. {text}")

        await _answer(interaction, run)


class DeleteButton(discord.ui.DynamicItem[Button], template=rf"imagine:delete:{_JOB}"):
    """Delete the result message and its stored pictures (the member who asked, or an admin)."""

    def __init__(self, job_id: str) -> None:
        super().__init__(
            discord.ui.Button(
                label="Delete",
                emoji="🗑️",
                style=discord.ButtonStyle.danger,
                custom_id=f"imagine:delete:{job_id}",
                row=0,
            )
        )
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ) -> Self:
        return cls(match["job"])

    async def callback(self, interaction: discord.Interaction) -> None:
        async def run() -> None:
            await interaction.response.defer(ephemeral=True, thinking=True)
            bot = _bot(interaction)
            await bot.service.imagine.delete_outputs(actor_of(interaction), self.job_id)
            if interaction.message is not None:
                with contextlib.suppress(discord.NotFound):
                    await interaction.message.delete()
            await reply(interaction, "Deleted those pictures.")

        await _answer(interaction, run)


DYNAMIC_ITEMS: tuple[type[discord.ui.DynamicItem[Any]], ...] = (
    RerollButton,
    VariationButton,
    DeleteButton,
)


def result_view(job_id: str, seeds: Sequence[int]) -> discord.ui.View:
    """Re-roll and Delete on the first row; on the second one variation button per picture
    shown, in order, each with that picture's seed."""
    view = discord.ui.View(timeout=None)
    view.add_item(RerollButton(job_id))
    view.add_item(DeleteButton(job_id))
    for index, seed in enumerate(seeds):
        view.add_item(VariationButton(job_id, index, seed))
    return view
