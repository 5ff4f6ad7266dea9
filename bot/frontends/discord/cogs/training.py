"""/train: photos in, a per-photo report, consent, then a queued training with a progress
message (see ``training_views`` for the steps after the command)."""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from bot.frontends.discord.client import DreamBot
from bot.frontends.discord.render import actor_of
from bot.frontends.discord.training_messages import CancelTraining
from bot.frontends.discord.training_views import Draft, fetch_photos, show_report
from bot.service.training import MODEL_NAME_MAX, TrainRequest

__all__ = ["TrainingCog", "setup"]

Photo = discord.Attachment


class TrainingCog(commands.Cog):
    def __init__(self, bot: DreamBot) -> None:
        self.bot = bot

    @app_commands.command(name="train")
    @app_commands.guild_only()
    @app_commands.describe(
        class_name="What the photos show, in one word: person, man, woman, dog, cat, mug…",
        token="A rare word that will mean your subject in prompts, e.g. sks",
        photo1="A photo of your subject (3 to 10 here; more can be added after)",
        photo2="Another photo",
        photo3="Another photo",
        photo4="Another photo",
        photo5="Another photo",
        photo6="Another photo",
        photo7="Another photo",
        photo8="Another photo",
        photo9="Another photo",
        photo10="Another photo",
        name="A name for the model (default: token-class, e.g. sks-dog)",
        mode="LoRA (small and fast, the default) or a full fine-tune",
    )
    @app_commands.choices(
        mode=[
            app_commands.Choice(name="LoRA: small and fast (default)", value="lora"),
            app_commands.Choice(name="Full fine-tune: larger, slower", value="full"),
        ]
    )
    async def train(
        self,
        interaction: discord.Interaction,
        class_name: app_commands.Range[str, 1, 40],
        token: app_commands.Range[str, 1, 40],
        photo1: Photo,
        photo2: Photo,
        photo3: Photo,
        photo4: Photo | None = None,
        photo5: Photo | None = None,
        photo6: Photo | None = None,
        photo7: Photo | None = None,
        photo8: Photo | None = None,
        photo9: Photo | None = None,
        photo10: Photo | None = None,
        name: app_commands.Range[str, 1, MODEL_NAME_MAX] | None = None,
        mode: app_commands.Choice[str] | None = None,
    ) -> None:
        """Train your own image model on 3 to 25 photos of one subject: you, a pet, a thing."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        actor = actor_of(interaction)
        training = self.bot.service.training
        request = TrainRequest.parse(
            class_name, token, name=name, method=mode.value if mode else "lora"
        )
        await training.prepare(actor, request)
        given = (photo1, photo2, photo3, photo4, photo5, photo6, photo7, photo8, photo9, photo10)
        attachments = [photo for photo in given if photo is not None]
        photos = await fetch_photos(attachments, training.rules(request))
        report = await training.check(request, photos)
        room = len(report.photos) < self.bot.settings.photos_max
        draft = Draft(request, report, actor.user_id, interaction.channel_id or 0)
        await show_report(
            interaction,
            draft,
            can_add=room and isinstance(interaction.channel, discord.TextChannel),
        )


async def setup(bot: DreamBot) -> None:
    bot.add_dynamic_items(CancelTraining)
    await bot.add_cog(TrainingCog(bot))
