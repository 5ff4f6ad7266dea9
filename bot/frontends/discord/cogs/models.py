"""/models list | info | rename | default | delete | export: a member's own models."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.frontends.discord.client import DreamBot
from bot.frontends.discord.render import (
    BRAND,
    actor_of,
    image_grid,
    quietly,
    reply,
    send_error,
    timestamp,
)
from bot.service import Actor, DreamService
from bot.service.models import MODEL_NAME_MAX, size_text
from storage.records import ModelRecord

__all__ = ["ConfirmDelete", "ModelsCog", "setup"]

CONFIRM_TIMEOUT_S = 120


def _line(model: ModelRecord) -> str:
    default = " · **default**" if model.is_default else ""
    return (
        f"**{model.name}**{default} · `{model.identifier} {model.class_name}` · "
        f"{model.method.value} · {size_text(model.size_bytes)} · made {timestamp(model.created_at)}"
    )


class ConfirmDelete(discord.ui.View):
    """Delete happens only after the member confirms, on their own ephemeral message."""

    def __init__(self, service: DreamService, actor: Actor, model: ModelRecord) -> None:
        super().__init__(timeout=CONFIRM_TIMEOUT_S)
        self.service = service
        self.actor = actor
        self.model = model
        self.message: discord.InteractionMessage | None = None

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        return interaction.user.id == self.actor.user_id

    @discord.ui.button(label="Delete it", style=discord.ButtonStyle.danger, emoji="🗑️")
    async def confirm(
        self, interaction: discord.Interaction, button: discord.ui.Button[Any]
    ) -> None:
        await interaction.response.defer()
        self.stop()
        deleted = await self.service.models.delete(self.actor, self.model.id)
        await interaction.edit_original_response(
            content=f"Deleted **{deleted.name}**, with its files.", view=None
        )

    @discord.ui.button(label="Keep it", style=discord.ButtonStyle.secondary)
    async def keep(self, interaction: discord.Interaction, button: discord.ui.Button[Any]) -> None:
        self.stop()
        await interaction.response.edit_message(
            content=f"Kept **{self.model.name}**; nothing was deleted.", view=None
        )

    async def on_error(
        self, interaction: discord.Interaction, error: Exception, item: discord.ui.Item[Any]
    ) -> None:
        await send_error(interaction, error)

    async def on_timeout(self) -> None:
        if self.message is not None:
            await quietly(
                self.message.edit(
                    content=f"Nothing was deleted: **{self.model.name}** stays.", view=None
                )
            )


class ModelsCog(commands.GroupCog, group_name="models"):
    """Your trained models: list, inspect, rename, pick the default, delete, export."""

    def __init__(self, service: DreamService) -> None:
        self.service = service
        super().__init__()

    async def _model_choices(
        self, interaction: discord.Interaction, typed: str
    ) -> list[app_commands.Choice[str]]:
        mine = await self.service.models.choices(actor_of(interaction), typed)
        return [
            app_commands.Choice(name=f"{m.name} ({m.identifier} {m.class_name})"[:100], value=m.id)
            for m in mine
        ][:25]

    @app_commands.command(name="list")
    async def list_models(self, interaction: discord.Interaction) -> None:
        """Your models in this server; the default is the one /imagine uses."""
        models = await self.service.models.mine(actor_of(interaction))
        if not models:
            await reply(interaction, "You have no models here yet. `/train` makes one.")
            return
        embed = discord.Embed(title="Your models", colour=BRAND)
        embed.description = "\n".join(_line(m) for m in models)
        await reply(interaction, embed=embed)

    @app_commands.command(name="info")
    @app_commands.describe(model="One of your models")
    async def info(self, interaction: discord.Interaction, model: str) -> None:
        """What one of your models learned, how, and how to prompt it."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        found = await self.service.models.info(actor_of(interaction), model)
        m = found.model
        embed = discord.Embed(title=m.name + (" (default)" if m.is_default else ""), colour=BRAND)
        embed.add_field(name="Class", value=m.class_name)
        embed.add_field(name="Identifier", value=f"`{m.identifier}`")
        embed.add_field(name="Method", value=m.method.value)
        embed.add_field(name="Base", value=m.preset)
        embed.add_field(name="Size", value=size_text(m.size_bytes))
        embed.add_field(name="Made", value=timestamp(m.created_at, "f"))
        embed.add_field(
            name="Try",
            value=f"`/imagine prompt: {found.sample_prompt} on the beach`",
            inline=False,
        )
        embed.set_footer(text=f"id {m.id}")
        if not found.samples:
            await reply(interaction, embed=embed)
            return
        grid = await asyncio.to_thread(image_grid, list(found.samples))
        embed.set_image(url="attachment://samples.png")
        await reply(interaction, embed=embed, file=discord.File(io.BytesIO(grid), "samples.png"))

    @app_commands.command(name="rename")
    @app_commands.describe(model="One of your models", name="Its new name")
    async def rename(
        self,
        interaction: discord.Interaction,
        model: str,
        name: app_commands.Range[str, 1, MODEL_NAME_MAX],
    ) -> None:
        """Give one of your models a new name."""
        renamed = await self.service.models.rename(actor_of(interaction), model, name)
        await reply(interaction, f"Renamed to **{renamed.name}**.")

    @app_commands.command(name="default")
    @app_commands.describe(model="One of your models")
    async def default(self, interaction: discord.Interaction, model: str) -> None:
        """Pick the model /imagine uses when you don't name one."""
        chosen = await self.service.models.set_default(actor_of(interaction), model)
        await reply(
            interaction,
            f"**{chosen.name}** is now your default: `/imagine` uses it when you name no model.",
        )

    @app_commands.command(name="delete")
    @app_commands.describe(model="One of your models")
    async def delete(self, interaction: discord.Interaction, model: str) -> None:
        """Delete one of your models for good (after you confirm)."""
        actor = actor_of(interaction)
        found = await self.service.models.get(actor, model)
        view = ConfirmDelete(self.service, actor, found)
        await reply(
            interaction,
            f"Delete **{found.name}** (`{found.identifier} {found.class_name}`) and its files? "
            "This can't be undone.",
            view=view,
        )
        view.message = await interaction.original_response()

    @app_commands.command(name="export")
    @app_commands.describe(model="One of your models")
    async def export(self, interaction: discord.Interaction, model: str) -> None:
        """Download one of your models' weights (or get its Hugging Face link)."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        result = await self.service.models.export(
            actor_of(interaction), model, interaction.filesize_limit
        )
        name = result.model.name
        if result.files:
            files = [discord.File(io.BytesIO(data), filename=n) for n, data in result.files]
            await reply(
                interaction,
                f"**{name}**: keep both files in one folder; `model.json` names the base model "
                "the weights need.",
                files=files,
            )
        elif result.hub_url:
            await reply(
                interaction, f"**{name}** is too large to upload here. Get it from {result.hub_url}"
            )
        else:
            await reply(interaction, result.reason or f"**{name}** can't be exported here.")

    @info.autocomplete("model")
    @rename.autocomplete("model")
    @default.autocomplete("model")
    @delete.autocomplete("model")
    @export.autocomplete("model")
    async def _model_autocomplete(
        self, interaction: discord.Interaction, typed: str
    ) -> list[app_commands.Choice[str]]:
        return await self._model_choices(interaction, typed)


async def setup(bot: DreamBot) -> None:
    await bot.add_cog(ModelsCog(bot.service))
