"""/imagine: draw pictures with the base model or one of the member's own models."""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from bot.frontends.discord.client import DreamBot
from bot.frontends.discord.imagine_render import post_progress, queued_reply
from bot.frontends.discord.imagine_views import DYNAMIC_ITEMS
from bot.frontends.discord.render import actor_of, reply
from bot.service import DreamService
from bot.service.imagine import BASE_MODEL, ImagineRequest
from storage.records import ModelRecord
from storage.rules import DEFAULT_GUIDANCE, DEFAULT_IMAGES, DEFAULT_SAMPLER_STEPS, MAX_IMAGES
from storage.rules import MAX_SAMPLER_STEPS as MAX_STEPS

__all__ = ["MAX_SEED_OPTION", "ImagineCog", "setup"]

# Discord's integer options stop at 2**53; the sampler's seeds go higher, but no member types
# those (random seeds stay below 2**32).
MAX_SEED_OPTION = 2**53 - MAX_IMAGES
PROMPT_MAX_CHARS = 1000


def _choice_name(model: ModelRecord) -> str:
    default = " · default" if model.is_default else ""
    return f"{model.name} ({model.identifier} {model.class_name}){default}"[:100]


class ImagineCog(commands.Cog):
    def __init__(self, bot: DreamBot, service: DreamService) -> None:
        self.bot = bot
        self.service = service

    @app_commands.command(name="imagine")
    @app_commands.describe(
        prompt="What to draw, e.g. a photo of sks dog on the beach",
        model="One of your models (your default when left out)",
        negative="What to keep out of the picture",
        count=f"How many pictures (1 to {MAX_IMAGES})",
        steps=f"Denoising steps: more is slower and finer (default {DEFAULT_SAMPLER_STEPS})",
        guidance=f"How closely to follow the prompt (default {DEFAULT_GUIDANCE})",
        seed="Start from this seed to redraw a picture (random when left out)",
    )
    async def imagine(
        self,
        interaction: discord.Interaction,
        prompt: app_commands.Range[str, 1, PROMPT_MAX_CHARS],
        model: str | None = None,
        negative: app_commands.Range[str, 1, PROMPT_MAX_CHARS] | None = None,
        count: app_commands.Range[int, 1, MAX_IMAGES] = DEFAULT_IMAGES,
        steps: app_commands.Range[int, 1, MAX_STEPS] = DEFAULT_SAMPLER_STEPS,
        guidance: app_commands.Range[float, 0.0, None] = DEFAULT_GUIDANCE,
        seed: app_commands.Range[int, 0, MAX_SEED_OPTION] | None = None,
    ) -> None:
        """Draw pictures from a prompt, with your own model or the base model."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        request = ImagineRequest(
            prompt=prompt,
            model=model,
            negative=negative or "",
            count=count,
            steps=steps,
            guidance=guidance,
            seed=seed,
        )
        queued = await self.service.imagine.imagine(actor_of(interaction), request)
        await post_progress(self.bot, queued)
        await reply(interaction, queued_reply(queued))

    @imagine.autocomplete("model")
    async def _model_choices(
        self, interaction: discord.Interaction, typed: str
    ) -> list[app_commands.Choice[str]]:
        mine = await self.service.imagine.choices(actor_of(interaction), typed)
        mine.sort(key=lambda m: not m.is_default)  # the default first
        choices = [app_commands.Choice(name=_choice_name(m), value=m.id) for m in mine][:24]
        if typed.strip().lower() in BASE_MODEL + " model":
            choices.append(app_commands.Choice(name="Base model (none of yours)", value=BASE_MODEL))
        return choices


async def setup(bot: DreamBot) -> None:
    bot.add_dynamic_items(*DYNAMIC_ITEMS)
    await bot.add_cog(ImagineCog(bot, bot.service))
