"""The bot's settings: Discord, quotas and photo intake. Built once by the composition root.

Storage locations are ``storage.config.StorageSettings`` and model choices are the trainer's; the
bot never reads those variables itself. Frozen configs for one use are built from these, as
``PhotoRules.from_settings`` does.
"""

from __future__ import annotations

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings

from storage.config import ENV_CONFIG
from storage.errors import ConfigError
from storage.rules import (
    DEFAULT_CLASS_IMAGES,
    DEFAULT_TRAIN_STEPS,
    MAX_CLASS_IMAGES,
    MAX_TRAIN_STEPS,
)

__all__ = ["BotSettings"]


class BotSettings(BaseSettings):
    """Every knob of the chat side. Field names map to upper-case environment variables."""

    model_config = ENV_CONFIG

    # Discord
    discord_token: SecretStr | None = Field(default=None, description="Bot token")
    dev_guild_id: int | None = Field(default=None, description="Sync commands to one guild fast")
    discord_api_base: str = ""
    discord_gateway_url: str = ""

    # Quota defaults (a guild admin may override per guild and per user)
    quota_train_per_month: int = Field(default=3, ge=0)
    quota_images_per_day: int = Field(default=50, ge=0)
    quota_max_models: int = Field(default=5, ge=0)
    # Jobs (trainings and generations) one member may have queued or running at once.
    max_concurrent_jobs_per_user: int = Field(default=2, ge=1)

    # Photo intake, and the resolution the bot asks trainings at (photos are normalised to it)
    photos_min: int = Field(default=3, ge=1)
    photos_max: int = Field(default=25, ge=1)
    photo_max_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    photo_max_pixels: int = Field(default=50_000_000, ge=1)
    train_resolution: int = Field(default=512, ge=64)
    # What a /train asks the workers for: steps, and prior-preservation images of the class.
    train_steps: int = Field(default=DEFAULT_TRAIN_STEPS, ge=1, le=MAX_TRAIN_STEPS)
    train_class_images: int = Field(default=DEFAULT_CLASS_IMAGES, ge=0, le=MAX_CLASS_IMAGES)
    person_classes: str = "person,man,woman,boy,girl,face,child,baby"

    @model_validator(mode="after")
    def _check_photo_counts(self) -> BotSettings:
        if self.photos_min > self.photos_max:
            raise ValueError("PHOTOS_MIN must not be larger than PHOTOS_MAX")
        return self

    @property
    def person_class_set(self) -> frozenset[str]:
        return frozenset(w.strip().lower() for w in self.person_classes.split(",") if w.strip())

    def require_token(self) -> str:
        """The Discord token, or a ConfigError that says how to get one."""
        token = self.discord_token.get_secret_value().strip() if self.discord_token else ""
        if not token:
            raise ConfigError(
                "DISCORD_TOKEN is not set. Create an application at "
                "https://discord.com/developers/applications, add a bot, copy its token, and put "
                "DISCORD_TOKEN=<token> in your .env file (see .env.example)."
            )
        return token
