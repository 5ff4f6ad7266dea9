"""All settings, built once: storage's, the bot's and the trainer's, from one ``.env``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bot.config import BotSettings
from storage.config import StorageSettings, load_all
from trainer.config import TrainerSettings

__all__ = ["Settings", "load_settings"]


@dataclass(frozen=True)
class Settings:
    """Each side's settings; a command gets this and hands each side its part."""

    storage: StorageSettings
    bot: BotSettings
    trainer: TrainerSettings

    @property
    def train_resolution(self) -> int:
        """The bot's TRAIN_RESOLUTION, which local training uses too."""
        return self.bot.train_resolution


def load_settings(env_file: Path | str | None = ".env") -> Settings:
    """Read every side's variables; one ConfigError names every bad one."""
    storage, bot, trainer = load_all(
        StorageSettings, BotSettings, TrainerSettings, env_file=env_file
    )
    return Settings(storage=storage, bot=bot, trainer=trainer)
