"""Where data lives (DATA_DIR, DATABASE_PATH, BLOB_URL, REDIS_URL); how each side loads settings.

Settings are split by owner: this module reads the storage variables, ``bot.config`` the Discord,
quota and photo ones, ``trainer.config`` the model ones. All read the same ``.env`` (the
environment wins), each variable in exactly one class, and each class is frozen once built. The
composition root (``dreambot.config``) builds them once and passes them down; tests construct
them directly.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from storage.errors import ConfigError

__all__ = ["ENV_CONFIG", "StorageSettings", "load_all", "require_extra"]

ENV_CONFIG = SettingsConfigDict(
    env_file=".env",
    env_file_encoding="utf-8",
    extra="ignore",  # one .env holds every side's variables; each class reads its own
    validate_default=True,
    env_ignore_empty=True,  # an empty line in .env means "use the default"
    frozen=True,
)


class StorageSettings(BaseSettings):
    """Where the database, the blob store and the queue live. Field names are the variables."""

    model_config = ENV_CONFIG

    data_dir: Path = Field(default=Path("data"), description="database, Redis data, local blobs")
    database_path: Path | None = Field(default=None, description="SQLite file")
    blob_url: str = Field(default="", description="any fsspec URL: file://, s3://, hf://")
    redis_url: str = Field(default="", description="empty: `dreambot up` embeds its own")

    @property
    def db_path(self) -> Path:
        """``DATABASE_PATH``, or ``$DATA_DIR/dreambot.sqlite3``."""
        return self.database_path or self.data_dir / "dreambot.sqlite3"

    @property
    def blob_store_url(self) -> str:
        """``BLOB_URL``, or the ``file://`` URL of ``$DATA_DIR/blobs``."""
        return self.blob_url or (self.data_dir / "blobs").resolve().as_uri()

    @property
    def redis_dir(self) -> Path:
        """Where the embedded Redis keeps its append-only file."""
        return self.data_dir / "redis"


def _problems(exc: ValidationError) -> list[str]:
    """One phrase per bad variable, never echoing a secret's value."""
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
    return parts


def load_all(*classes: type[BaseSettings], env_file: Path | str | None = ".env") -> tuple[Any, ...]:
    """Build each settings class from the environment and ``env_file``, in order.

    Every bad variable of every class is named in one paragraph (a ConfigError), so a person
    fixes them all in one go instead of one per start.
    """
    built: list[BaseSettings] = []
    problems: list[str] = []
    for cls in classes:
        try:
            built.append(cls(_env_file=env_file))  # type: ignore[call-arg]
        except ValidationError as exc:
            problems.extend(_problems(exc))
    if problems:
        raise ConfigError(
            f"Invalid configuration — {'; '.join(problems)}. Fix the variable in your "
            "environment or .env file (see .env.example for every setting)."
        )
    return tuple(built)


def require_extra(module: str, extra: str, command: str) -> None:
    """Stop a command whose extra is not installed with a message that says which to install
    (each process installs only its own: the bot host has no TensorFlow, a worker no discord.py)."""
    if importlib.util.find_spec(module) is None:
        raise ConfigError(
            f"`dreambot {command}` needs {module}, which this install lacks: "
            f"pip install -e '.[{extra}]'"
        )
