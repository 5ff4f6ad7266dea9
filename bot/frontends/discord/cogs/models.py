"""Placeholder: this feature's commands land here."""

from __future__ import annotations

from bot.frontends.discord.client import DreamBot


async def setup(bot: DreamBot) -> None:
    return None
