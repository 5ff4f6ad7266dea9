"""One Settings object, read from the environment and ``.env``, built once by the entry point."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from storage.errors import ConfigError

__all__ = ["Settings", "load_settings"]

PresetName = Literal["sd-v1", "tiny"]


class Settings(BaseSettings):
    """Every knob of dreambot. Field names map to upper-case environment variables."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        validate_default=True,
        env_ignore_empty=True,
    )

    # Discord
    discord_token: SecretStr | None = Field(default=None, description="Bot token")
    dev_guild_id: int | None = Field(default=None, description="Sync commands to one guild fast")
    discord_api_base: str = ""
    discord_gateway_url: str = ""

    # Where state lives
    data_dir: Path = Field(default=Path("data"))
    database_path: Path | None = None
    blob_url: str = ""
    redis_url: str = ""

    # Models
    model_preset: PresetName = "sd-v1"
    weights_dir: Path | None = None
    bpe_path: Path | None = None
    hf_token: SecretStr | None = None
    hf_namespace: str = ""

    # Quota defaults (a guild admin may override per guild and per user)
    quota_train_per_month: int = Field(default=3, ge=0)
    quota_images_per_day: int = Field(default=50, ge=0)
    max_concurrent_jobs_per_user: int = Field(default=1, ge=1)

    # Photo intake
    photos_min: int = Field(default=3, ge=1)
    photos_max: int = Field(default=25, ge=1)
    photo_max_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    photo_max_pixels: int = Field(default=50_000_000, ge=1)
    train_resolution: int = Field(default=512, ge=64)
    person_classes: str = "person,man,woman,boy,girl,face,child,baby"

    @model_validator(mode="after")
    def _derive_paths(self) -> Settings:
        if self.photos_min > self.photos_max:
            raise ValueError("PHOTOS_MIN must not be larger than PHOTOS_MAX")
        if self.database_path is None:
            self.database_path = self.data_dir / "dreambot.sqlite3"
        if not self.blob_url:
            self.blob_url = (self.data_dir / "blobs").resolve().as_uri()
        return self

    @property
    def db_path(self) -> Path:
        assert self.database_path is not None
        return self.database_path

    @property
    def person_class_set(self) -> frozenset[str]:
        return frozenset(w.strip().lower() for w in self.person_classes.split(",") if w.strip())


def load_settings(**overrides: object) -> Settings:
    """Build Settings, turning a validation failure into a one-paragraph ConfigError."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        parts = []
        for err in exc.errors():
            loc = [str(p) for p in err.get("loc", ()) if p != "__root__"]
            value = err.get("input")
            msg = err.get("msg", "invalid value")
            if not loc:  # a rule across fields: the message names the variables itself
                parts.append(msg.removeprefix("Value error, "))
                continue
            name = loc[0].upper()
            secret = "TOKEN" in name or isinstance(value, dict)
            parts.append(f"{name}: {msg}" + ("" if secret else f" (got {value!r})"))
        raise ConfigError(
            "Invalid configuration — " + "; ".join(parts) + ". Fix the variable in your "
            "environment or .env file (see .env.example for every setting)."
        ) from None
