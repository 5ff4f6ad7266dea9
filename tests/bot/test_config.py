"""Settings: defaults, environment and .env, and one clear paragraph for a bad value."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bot.config import Settings, load_settings
from storage.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_derive_paths_from_data_dir(tmp_path: Path) -> None:
    s = Settings(_env_file=None, data_dir=tmp_path)  # type: ignore[call-arg]
    assert s.db_path == tmp_path / "dreambot.sqlite3"
    assert s.blob_url == (tmp_path / "blobs").resolve().as_uri()
    assert s.redis_url == "" and s.model_preset == "sd-v1"
    assert "person" in s.person_class_set


def test_environment_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MODEL_PRESET", "tiny")
    monkeypatch.setenv("QUOTA_IMAGES_PER_DAY", "7")
    monkeypatch.setenv("DISCORD_TOKEN", "secret-token")
    monkeypatch.setenv("BLOB_URL", "memory://x")
    s = Settings(_env_file=None, data_dir=tmp_path)  # type: ignore[call-arg]
    assert (s.model_preset, s.quota_images_per_day, s.blob_url) == ("tiny", 7, "memory://x")
    assert s.discord_token is not None and "secret-token" not in repr(s)


def test_env_example_documents_every_field_and_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    example = (ROOT / ".env.example").read_text()
    for name in Settings.model_fields:
        assert f"\n{name.upper()}=" in "\n" + example, f"{name.upper()} missing in .env.example"
    shutil.copy(ROOT / ".env.example", tmp_path / ".env")
    monkeypatch.chdir(tmp_path)
    s = load_settings()
    assert s.dev_guild_id is None and s.weights_dir is None  # empty lines mean "default"


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("QUOTA_IMAGES_PER_DAY", "lots"),
        ("MODEL_PRESET", "sd-xl"),
        ("DEV_GUILD_ID", "my server"),
        ("PHOTOS_MIN", "-1"),
    ],
)
def test_invalid_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, var: str, value: str
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as err:
        load_settings()
    message = str(err.value)
    assert var in message and "\n" not in message and ".env.example" in message


def test_token_value_is_never_echoed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DISCORD_TOKEN", "hunter2")
    monkeypatch.setenv("PHOTOS_MIN", "30")
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert "hunter2" not in str(err.value) and "PHOTOS_MIN" in str(err.value)
