"""/admin: limits, the queue, bans, the channel allow-list, the prompt blocklist and usage.

Visible by default only to members with Manage Server (a server may change that in its
Integrations settings); the service checks the permission again on every call.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

import discord
from discord import app_commands
from discord.ext import commands

from bot.frontends.discord.client import DreamBot
from bot.frontends.discord.render import BRAND, actor_of, job_line, quietly, reply, send_error
from bot.service import DreamService
from bot.service.admin import MAX_LIMIT, QuotaChange, QuotaReport, UsageDay
from bot.service.lifecycle import ActiveJob
from storage.records import LimitKind

__all__ = ["AdminCog", "QueueView", "setup"]

LIMIT_CHOICES = [app_commands.Choice(name=kind.label, value=kind.value) for kind in LimitKind]
# Discord caps: a select menu lists 25 options; an embed holds 25 fields and 6000 characters.
MAX_OPTIONS = 25
EMBED_BUDGET = 5500
QUEUE_VIEW_TIMEOUT_S = 300.0


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _fit(lines: Sequence[str], limit: int) -> str:
    """Join lines up to ``limit`` characters, saying how many did not fit."""
    out: list[str] = []
    used = 0
    for index, line in enumerate(lines):
        more = f"… and {len(lines) - index} more"
        if used + len(line) + 1 > limit - len(more) - 1:
            out.append(more)
            break
        out.append(line)
        used += len(line) + 1
    return "\n".join(out)


def _change_text(change: QuotaChange) -> str:
    who = "this server" if change.user_id is None else f"<@{change.user_id}>"
    label = change.kind.label
    if change.after is not None:
        was = "" if change.before is None else f" (was {change.before})"
        return f"Set {label} for {who} to **{change.after}**{was}."
    if change.before is None:
        whose = "its" if change.user_id is None else "their"
        return f"{who} had no {label} of {whose} own; **{change.applies}** applies."
    source = "the bot's default" if change.user_id is None else "this server's limit"
    return f"Reset {label} for {who}: {source}, **{change.applies}**, applies now."


def _quota_embed(report: QuotaReport) -> discord.Embed:
    member = report.member
    if member is None:
        embed = discord.Embed(title="Limits in this server", colour=BRAND)
        for kind in LimitKind:
            own = report.guild[kind]
            value = (
                f"**{report.defaults[kind]}** (the bot's default)"
                if own is None
                else f"**{own}** (set here; the bot's default is {report.defaults[kind]})"
            )
            embed.add_field(name=kind.label.capitalize(), value=value, inline=False)
        embed.set_footer(text="A member's own limit wins over these: /admin quota show member")
        return embed
    embed = discord.Embed(title="A member's limits", description=f"<@{member.user_id}>")
    embed.colour = BRAND
    for usage in member.status.all:
        own = member.overrides.get(usage.kind)
        source = "their own limit" if own is not None else "this server's limit"
        line = f"**{usage.left}** of {usage.limit} left · {source}"
        if own is not None:
            line += f" (server: {report.effective(usage.kind)})"
        embed.add_field(name=usage.kind.label.capitalize(), value=line, inline=False)
    return embed


def _queue_embed(jobs: Sequence[ActiveJob]) -> discord.Embed:
    embed = discord.Embed(title="Queued and running jobs here", colour=BRAND)
    lines = [f"{job_line(item.job, item.status)} · <@{item.job.owner_id}>" for item in jobs]
    embed.description = _fit(lines, 4000) if lines else "Nothing is queued or running here."
    return embed


def _usage_embed(days: Sequence[UsageDay], span: int) -> discord.Embed:
    embed = discord.Embed(title=f"Usage here, last {_plural(span, 'day')}", colour=BRAND)
    embed.set_footer(text="UTC days. Counts what was used or is held by queued jobs, not refunds.")
    if not days:
        embed.description = "Nobody used the bot here in that time."
        return embed
    shown = days[: MAX_OPTIONS - 1] if len(days) > MAX_OPTIONS else days
    per_field = min(1024, EMBED_BUDGET // len(shown))
    for day in shown:
        lines = [
            f"<@{m.user_id}> · {_plural(m.trainings, 'training')} · {_plural(m.images, 'image')}"
            for m in day.members
        ]
        name = date.fromisoformat(day.day).strftime("%a %d %b %Y")
        embed.add_field(name=name, value=_fit(lines, per_field), inline=False)
    if len(shown) < len(days):
        embed.add_field(name="…", value=f"{_plural(len(days) - len(shown), 'older day')} more")
    return embed


def _channels_text(channels: Sequence[int]) -> str:
    if not channels:
        return "Members can use the bot in every channel here."
    where = ", ".join(f"<#{c}>" for c in channels)
    return f"Members can use the bot only in: {where}. Admins can use it anywhere."


def _words_text(words: Sequence[str]) -> str:
    if not words:
        return "The prompt blocklist is empty."
    return f"Blocked words ({len(words)}): " + ", ".join(f"`{w}`" for w in words)


class QueueView(discord.ui.View):
    """The admin's queue with a menu to cancel one job; it refreshes after each cancel."""

    def __init__(self, service: DreamService, jobs: Sequence[ActiveJob]) -> None:
        super().__init__(timeout=QUEUE_VIEW_TIMEOUT_S)
        self.service = service
        self.origin: discord.Interaction | None = None
        menu: discord.ui.Select[QueueView] = discord.ui.Select(
            placeholder="Cancel a job…",
            custom_id="admin:queue:cancel",
            options=[
                discord.SelectOption(
                    label=job_line(item.job, item.status, plain=True)[:100],
                    value=item.job.id,
                )
                for item in jobs[:MAX_OPTIONS]
            ],
        )
        menu.callback = self._cancel  # type: ignore[method-assign]
        self.menu = menu
        self.add_item(menu)

    async def _cancel(self, interaction: discord.Interaction) -> None:
        actor = actor_of(interaction)
        job = await self.service.admin.cancel(actor, self.menu.values[0])
        jobs = await self.service.admin.queue(actor)
        view = QueueView(self.service, jobs) if jobs else None
        if view is not None:
            view.origin = self.origin
        self.stop()
        await interaction.response.edit_message(
            content=f"Cancelled `{job.id}` of <@{job.owner_id}>; their quota was given back.",
            embed=_queue_embed(jobs),
            view=view,
        )

    async def on_timeout(self) -> None:
        if self.origin is not None:
            await quietly(self.origin.edit_original_response(view=None))

    async def on_error(
        self, interaction: discord.Interaction, error: Exception, item: discord.ui.Item[QueueView]
    ) -> None:
        await send_error(interaction, error)


class AdminCog(commands.Cog):
    admin = app_commands.Group(
        name="admin",
        description="Server settings for the bot (Manage Server)",
        guild_only=True,
        default_permissions=discord.Permissions(manage_guild=True),
    )
    quota = app_commands.Group(name="quota", description="Limits here", parent=admin)
    channels = app_commands.Group(
        name="channels", description="Where members may use the bot", parent=admin
    )
    blocklist = app_commands.Group(
        name="blocklist", description="Words /imagine refuses in prompts", parent=admin
    )

    def __init__(self, service: DreamService) -> None:
        self.service = service

    # -- quota -----------------------------------------------------------------------------

    @quota.command(name="set")
    @app_commands.describe(
        limit="Which limit",
        value=f"The new value (0 to {MAX_LIMIT}; 0 turns it off)",
        member="Only for this member (leave out for the whole server)",
    )
    @app_commands.choices(limit=LIMIT_CHOICES)
    async def quota_set(
        self,
        interaction: discord.Interaction,
        limit: str,
        value: app_commands.Range[int, 0, MAX_LIMIT],
        member: discord.Member | None = None,
    ) -> None:
        """Set a limit for the whole server or for one member."""
        change = await self.service.admin.quota_set(
            actor_of(interaction), LimitKind(limit), value, member.id if member else None
        )
        await reply(interaction, _change_text(change))

    @quota.command(name="reset")
    @app_commands.describe(
        limit="Which limit", member="Only this member's own limit (leave out for the server's)"
    )
    @app_commands.choices(limit=LIMIT_CHOICES)
    async def quota_reset(
        self, interaction: discord.Interaction, limit: str, member: discord.Member | None = None
    ) -> None:
        """Drop the server's or a member's own limit, so the one above applies again."""
        change = await self.service.admin.quota_set(
            actor_of(interaction), LimitKind(limit), None, member.id if member else None
        )
        await reply(interaction, _change_text(change))

    @quota.command(name="show")
    @app_commands.describe(member="Show this member's limits and what they have left")
    async def quota_show(
        self, interaction: discord.Interaction, member: discord.Member | None = None
    ) -> None:
        """The server's limits beside the bot's defaults, or one member's limits."""
        report = await self.service.admin.quota_show(
            actor_of(interaction), member.id if member else None
        )
        await reply(interaction, embed=_quota_embed(report))

    # -- queue -----------------------------------------------------------------------------

    @admin.command(name="queue")
    async def queue(self, interaction: discord.Interaction) -> None:
        """Every queued and running job in this server, with a menu to cancel one."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        jobs = await self.service.admin.queue(actor_of(interaction))
        if not jobs:
            await reply(interaction, embed=_queue_embed(jobs))
            return
        view = QueueView(self.service, jobs)
        view.origin = interaction
        await reply(interaction, embed=_queue_embed(jobs), view=view)

    # -- bans ------------------------------------------------------------------------------

    @admin.command(name="ban")
    @app_commands.describe(member="The member to stop using the bot here")
    async def ban(self, interaction: discord.Interaction, member: discord.Member) -> None:
        """Stop a member from using the bot here; their queued jobs are cancelled."""
        perms = member.guild_permissions
        cancelled = await self.service.admin.ban(
            actor_of(interaction),
            member.id,
            target_is_admin=perms.manage_guild or perms.administrator,
        )
        text = f"Banned {member.mention}: they can't use the bot here any more."
        if cancelled:
            text += f" {_plural(cancelled, 'queued or running job')} cancelled."
        await reply(interaction, text + " Their models stay until they `/forget` or you unban.")

    @admin.command(name="unban")
    @app_commands.describe(member="The member to let use the bot again")
    async def unban(self, interaction: discord.Interaction, member: discord.User) -> None:
        """Let a banned member use the bot here again."""
        await self.service.admin.unban(actor_of(interaction), member.id)
        await reply(interaction, f"Unbanned {member.mention}: they can use the bot here again.")

    # -- channels --------------------------------------------------------------------------

    @channels.command(name="add")
    @app_commands.describe(channel="A channel where members may use the bot")
    async def channels_add(
        self, interaction: discord.Interaction, channel: discord.TextChannel
    ) -> None:
        """Allow the bot in a channel; once the list has one, members can use only those."""
        allowed = await self.service.admin.allow_channel(actor_of(interaction), channel.id)
        await reply(interaction, _channels_text(allowed))

    @channels.command(name="remove")
    @app_commands.describe(channel="The channel to take off the list")
    async def channels_remove(
        self, interaction: discord.Interaction, channel: discord.TextChannel
    ) -> None:
        """Take a channel off the allow-list."""
        allowed = await self.service.admin.disallow_channel(actor_of(interaction), channel.id)
        await reply(interaction, _channels_text(allowed))

    @channels.command(name="list")
    async def channels_list(self, interaction: discord.Interaction) -> None:
        """The channels members may use the bot in."""
        await reply(
            interaction, _channels_text(await self.service.admin.channels(actor_of(interaction)))
        )

    @channels.command(name="clear")
    async def channels_clear(self, interaction: discord.Interaction) -> None:
        """Empty the allow-list: members may use the bot in every channel."""
        allowed = await self.service.admin.clear_channels(actor_of(interaction))
        await reply(interaction, _channels_text(allowed))

    # -- blocklist -------------------------------------------------------------------------

    @blocklist.command(name="add")
    @app_commands.describe(words="Words to block, separated by spaces or commas")
    async def blocklist_add(self, interaction: discord.Interaction, words: str) -> None:
        """Block words in /imagine prompts (whole words, any case)."""
        added, all_words = await self.service.admin.block_words(actor_of(interaction), words)
        blocked = ", ".join(f"`{w}`" for w in added)
        await reply(interaction, f"Blocked {blocked}. {_words_text(all_words)}")

    @blocklist.command(name="remove")
    @app_commands.describe(words="Words to allow again, separated by spaces or commas")
    async def blocklist_remove(self, interaction: discord.Interaction, words: str) -> None:
        """Allow blocked words again."""
        gone, all_words = await self.service.admin.unblock_words(actor_of(interaction), words)
        removed = ", ".join(f"`{w}`" for w in gone)
        await reply(interaction, f"Removed {removed}. {_words_text(all_words)}")

    @blocklist.command(name="list")
    async def blocklist_list(self, interaction: discord.Interaction) -> None:
        """The words /imagine refuses in prompts here."""
        await reply(
            interaction, _words_text(await self.service.admin.blocklist(actor_of(interaction)))
        )

    # -- usage -----------------------------------------------------------------------------

    @admin.command(name="usage")
    @app_commands.describe(days="How many days back, today included (1 to 31; 7 if left out)")
    async def usage(
        self, interaction: discord.Interaction, days: app_commands.Range[int, 1, 31] = 7
    ) -> None:
        """Trainings and images each member used here, per day."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        per_day = await self.service.admin.usage(actor_of(interaction), days)
        await reply(interaction, embed=_usage_embed(per_day, days))


async def setup(bot: DreamBot) -> None:
    await bot.add_cog(AdminCog(bot.service))
