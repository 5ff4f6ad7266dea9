"""The README's Discord section says what the bot really has: its invite URL carries the bot's
scopes and permissions, and its command table names every command the bot syncs."""

from __future__ import annotations

from pathlib import Path

from bot.frontends.discord.client import DreamBot, invite_url
from tests.bot.discord.conftest import World

README = Path(__file__).resolve().parents[3] / "README.md"


def _discord_section() -> str:
    text = README.read_text()
    return text[text.index("## In Discord") : text.index("\n## ", text.index("## In Discord") + 1)]


def test_the_invite_url_is_the_bots() -> None:
    assert invite_url("APPLICATION_ID") in _discord_section()


async def test_every_command_and_subcommand_is_in_the_table(
    world: World, simcord_bot: DreamBot
) -> None:
    section = _discord_section()
    commands = simcord_bot.tree.get_commands()
    assert {c.name for c in commands} >= {"train", "imagine", "models", "forget", "admin"}
    for command in commands:
        assert f"`/{command.name}" in section, command.name
        for sub in getattr(command, "commands", []):
            assert sub.name in section, f"/{command.name} {sub.name}"
