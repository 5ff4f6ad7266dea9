"""DreamBot: the discord.py client. Dependencies are injected; nothing connects at import time."""

from __future__ import annotations

import logging

import discord
import yarl
from discord import app_commands
from discord.ext import commands, tasks

from bot.config import BotSettings
from bot.delivery import DELIVERY_EVERY_S, Delivery
from bot.frontends.discord.notifier import DiscordNotifier
from bot.frontends.discord.render import send_error
from bot.service import DreamService

__all__ = ["INVITE_PERMISSIONS", "DreamBot", "apply_api_base", "invite_url", "quiet_voice_warnings"]

log = logging.getLogger(__name__)

# One cog per feature; each reads the use cases from ``bot.service``.
COG_MODULES: tuple[str, ...] = tuple(
    f"bot.frontends.discord.cogs.{name}"
    for name in ("account", "training", "imagine", "models", "admin", "privacy")
)

# The longest rate-limit wait discord.py may sleep through inside one call (its floor is 30 s).
RATE_LIMIT_WAIT_S = 30.0

# What the bot does in a channel: post and edit its messages, embeds and pictures, and open,
# post in and close private upload threads. The README's invite URL carries exactly these.
INVITE_PERMISSIONS = discord.Permissions(
    view_channel=True,
    send_messages=True,
    send_messages_in_threads=True,
    create_private_threads=True,
    manage_threads=True,
    embed_links=True,
    attach_files=True,
    read_message_history=True,
)


def invite_url(application_id: int | str) -> str:
    """The link a server admin opens to add the bot, with its scopes and permissions."""
    return (
        f"https://discord.com/oauth2/authorize?client_id={application_id}"
        f"&scope=bot+applications.commands&permissions={INVITE_PERMISSIONS.value}"
    )


def apply_api_base(settings: BotSettings) -> None:
    """Point discord.py at another Discord API and gateway (a proxy, or the project's test fake)."""
    if settings.discord_api_base:
        discord.http.Route.BASE = settings.discord_api_base.rstrip("/")
    if settings.discord_gateway_url:
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(settings.discord_gateway_url)


def quiet_voice_warnings() -> None:
    """The bot never joins voice: stop discord.py warning about missing voice libraries.

    It is a process-wide switch, so the entry point flips it, not an import.
    """
    discord.VoiceClient.warn_nacl = False
    discord.VoiceClient.warn_dave = False


class DreamBot(commands.Bot):
    """The bot. Slash commands only, so no privileged intents are needed."""

    def __init__(self, settings: BotSettings, service: DreamService) -> None:
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=discord.Intents.default(),
            help_command=None,
            # Servers only: bans, channels, the blocklist and quotas are a server's; Discord
            # then offers no command in a DM (the service refuses one there as well).
            allowed_contexts=app_commands.AppCommandContext(guild=True),
            # A rate limit longer than this raises instead of sleeping inside the call, so the
            # delivery loop backs that job off and goes on with the others.
            max_ratelimit_timeout=RATE_LIMIT_WAIT_S,
        )
        self.settings = settings
        self.service = service
        self.tree.on_error = self._on_app_command_error  # type: ignore[method-assign]
        self.delivery = Delivery(service, DiscordNotifier(self))

    async def _on_app_command_error(
        self, interaction: discord.Interaction, error: discord.app_commands.AppCommandError
    ) -> None:
        """The one place a command's error reaches the member (ephemeral, plain words)."""
        await send_error(interaction, error)

    async def setup_hook(self) -> None:
        for module in COG_MODULES:
            await self.load_extension(module)
        if self.settings.dev_guild_id:
            guild = discord.Object(id=self.settings.dev_guild_id)
            self.tree.copy_global_to(guild=guild)
            synced = await self.tree.sync(guild=guild)
        else:
            synced = await self.tree.sync()
        log.info("synced %d application commands", len(synced))
        self._deliver.start()

    async def close(self) -> None:
        self._deliver.cancel()  # every delivery step is safe to cut: the next start resumes it
        await super().close()

    @tasks.loop(seconds=DELIVERY_EVERY_S)
    async def _deliver(self) -> None:
        """Follow active jobs and deliver finished ones (a tasks.loop, so SimCord parks it)."""
        await self.delivery.run()

    @_deliver.before_loop
    async def _before_deliver(self) -> None:
        await self.wait_until_ready()  # channels and members are known from here on

    async def on_ready(self) -> None:
        log.info("logged in as %s in %d guilds", self.user, len(self.guilds))
        if self.application_id is not None:
            log.info("invite it to a server: %s", invite_url(self.application_id))
