"""/quota, /queue and /cancel: a member's own limits and jobs."""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from bot.frontends.discord.client import DreamBot
from bot.frontends.discord.render import actor_of, job_line, quota_embed, reply
from bot.service import DreamService

__all__ = ["AccountCog", "setup"]


class AccountCog(commands.Cog):
    def __init__(self, service: DreamService) -> None:
        self.service = service

    @app_commands.command(name="quota")
    async def quota(self, interaction: discord.Interaction) -> None:
        """How many trainings and images you have left here, and when they reset."""
        status = await self.service.quota(actor_of(interaction))
        await reply(interaction, embed=quota_embed(status))

    @app_commands.command(name="queue")
    async def queue(self, interaction: discord.Interaction) -> None:
        """Your queued and running jobs, with their place in the queue."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        jobs = await self.service.jobs.active(actor_of(interaction))
        if not jobs:
            await reply(interaction, "You have no jobs queued or running.")
            return
        embed = discord.Embed(title="Your jobs", colour=discord.Colour.blurple())
        embed.description = "\n".join(job_line(item.job, item.status) for item in jobs)
        await reply(interaction, embed=embed)

    @app_commands.command(name="cancel")
    @app_commands.describe(job="The job to cancel (your most recent when left out)")
    async def cancel(self, interaction: discord.Interaction, job: str | None = None) -> None:
        """Cancel one of your queued or running jobs; its quota is given back."""
        actor = actor_of(interaction)
        if job is None:
            mine = await self.service.jobs.active(actor)
            if not mine:
                await reply(interaction, "You have no jobs queued or running.")
                return
            job = mine[-1].job.id
        cancelled = await self.service.jobs.cancel(actor, job)
        await reply(interaction, f"Cancelled `{cancelled.id}`; its quota was given back.")

    @cancel.autocomplete("job")
    async def _job_choices(
        self, interaction: discord.Interaction, typed: str
    ) -> list[app_commands.Choice[str]]:
        mine = await self.service.jobs.active(actor_of(interaction))
        return [
            app_commands.Choice(
                name=job_line(item.job, item.status, plain=True)[:100], value=item.job.id
            )
            for item in mine
            if typed.lower() in item.job.id.lower() + str(item.job.params).lower()
        ][:25]


async def setup(bot: DreamBot) -> None:
    await bot.add_cog(AccountCog(bot.service))
