"""/forget: a member deletes everything of theirs in this server, after confirming."""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from bot.frontends.discord.client import DreamBot
from bot.frontends.discord.render import actor_of, quietly, send_error
from bot.service import DreamService
from bot.service.privacy import Footprint, ForgetReport

__all__ = ["ForgetView", "PrivacyCog", "forget_text", "setup"]

CONFIRM_TIMEOUT_S = 120.0
ERROR = discord.Colour.red()


def _plural(count: int, word: str, words: str | None = None) -> str:
    return f"{count} {word if count == 1 else words or word + 's'}"


def confirm_embed(footprint: Footprint) -> discord.Embed:
    """What /forget will delete, asked before anything is."""
    lines = [
        f"• your {_plural(footprint.models, 'model')} (on the Hugging Face Hub too, if there)",
        f"• your {_plural(footprint.jobs, 'job')}, with every photo you gave and every image "
        "made for you",
        "• your quota history, your own limits and your consent records",
    ]
    if footprint.active:
        one = footprint.active == 1
        lines.append(
            f"\n{_plural(footprint.active, 'job')} of yours {'is' if one else 'are'} queued or "
            f"running: {'it is' if one else 'they are'} cancelled first."
        )
    lines.append("\nThis can't be undone. Your data in other servers is not touched.")
    return discord.Embed(
        title="Delete everything of yours in this server?",
        description="\n".join(lines),
        colour=ERROR,
    )


def forget_text(report: ForgetReport) -> str:
    """What one /forget run did, in plain words."""
    if report.nothing:
        return "There was nothing of yours left to delete in this server."
    lines = ["Done. Deleted from this server:"]
    if report.models:
        lines.append(f"• {_plural(report.models, 'model')}")
    if report.hub_deleted:
        copies = _plural(report.hub_deleted, "model copy", "model copies")
        lines.append(f"• {copies} on the Hugging Face Hub")
    if report.jobs:
        lines.append(f"• {_plural(report.jobs, 'job')}")
    if report.files:
        lines.append(f"• {_plural(report.files, 'file')}: photos, images and model weights")
    if report.records:
        lines.append(f"• {_plural(report.records, 'quota, limit or consent record')}")
    if len(lines) == 1:
        lines = ["Done: what was left of your data in this server is gone."]
    if report.cancelled:
        lines.append(f"{_plural(report.cancelled, 'queued or running job')} cancelled first.")
    if report.stopping:
        one = report.stopping == 1
        lines.append(
            f"{_plural(report.stopping, 'job')} {'was' if one else 'were'} still running: "
            f"{'it stops' if one else 'they stop'} within a minute. Run `/forget` again then to "
            f"remove what is left of {'it' if one else 'them'}."
        )
    if report.hub_left:
        links = "\n".join(f"<{url}>" for url in report.hub_left)
        lines.append(
            "These models are also on the Hugging Face Hub and could not be removed from here; "
            f"ask a server admin to delete them:\n{links}"
        )
    lines.append("The server's log keeps only an anonymous note that someone used /forget.")
    return "\n".join(lines)


class ForgetView(discord.ui.View):
    """The confirm and keep buttons; only the member who ran /forget may press them."""

    def __init__(self, service: DreamService, origin: discord.Interaction) -> None:
        super().__init__(timeout=CONFIRM_TIMEOUT_S)
        self.service = service
        self.origin = origin

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        if interaction.user.id == self.origin.user.id:
            return True
        await interaction.response.send_message(
            "Only the member who ran /forget can confirm it.", ephemeral=True
        )
        return False

    @discord.ui.button(label="Delete everything", style=discord.ButtonStyle.danger)
    async def confirm(
        self, interaction: discord.Interaction, button: discord.ui.Button[ForgetView]
    ) -> None:
        self.stop()
        await interaction.response.edit_message(
            content="Deleting your data in this server…", embed=None, view=None
        )
        report = await self.service.privacy.forget(actor_of(interaction))
        for channel_id, message_id in report.messages:  # the pictures posted in channels
            channel = interaction.client.get_partial_messageable(channel_id)
            await quietly(channel.get_partial_message(message_id).delete())
        await interaction.edit_original_response(content=forget_text(report))

    @discord.ui.button(label="Keep my data", style=discord.ButtonStyle.secondary)
    async def keep(
        self, interaction: discord.Interaction, button: discord.ui.Button[ForgetView]
    ) -> None:
        self.stop()
        await interaction.response.edit_message(
            content="Nothing was deleted.", embed=None, view=None
        )

    async def on_timeout(self) -> None:
        await quietly(
            self.origin.edit_original_response(
                content="Nothing was deleted: the confirmation expired. Run /forget again if you "
                "still want to.",
                embed=None,
                view=None,
            )
        )

    async def on_error(
        self, interaction: discord.Interaction, error: Exception, item: discord.ui.Item[ForgetView]
    ) -> None:
        """Say what went wrong, and that running /forget again finishes what was started."""
        await send_error(interaction, error)
        if interaction.response.is_done():
            await interaction.edit_original_response(
                content="Deleting stopped part-way. Run `/forget` again to finish.",
                embed=None,
                view=None,
            )


class PrivacyCog(commands.Cog):
    def __init__(self, service: DreamService) -> None:
        self.service = service

    @app_commands.command(name="forget")
    @app_commands.guild_only()
    async def forget(self, interaction: discord.Interaction) -> None:
        """Delete all your photos, models, images and jobs in this server."""
        footprint = await self.service.privacy.footprint(actor_of(interaction))
        await interaction.response.send_message(
            embed=confirm_embed(footprint),
            view=ForgetView(self.service, interaction),
            ephemeral=True,
        )


async def setup(bot: DreamBot) -> None:
    await bot.add_cog(PrivacyCog(bot.service))
