"""Settings split by owner: each variable read in one place, one .env, one paragraph per error."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from pydantic import ValidationError

from bot.config import BotSettings
from dreambot.config import load_settings
from storage.config import StorageSettings
from storage.errors import ConfigError
from trainer.config import TrainerSettings

ROOT = Path(__file__).resolve().parents[2]
OWNERS = (StorageSettings, BotSettings, TrainerSettings)


def _variables(text: str) -> set[str]:
    return {
        line.split("=", 1)[0]
        for line in text.splitlines()
        if "=" in line and not line.lstrip().startswith("#")
    }


def test_each_variable_has_one_owner_and_env_example_lists_exactly_them() -> None:
    fields = [name.upper() for cls in OWNERS for name in cls.model_fields]
    assert len(fields) == len(set(fields)), "a variable is read by two settings classes"
    assert {"DATA_DIR", "DATABASE_PATH", "BLOB_URL", "REDIS_URL"} == {
        n.upper() for n in StorageSettings.model_fields
    }
    assert {
        "MODEL_PRESET",
        "TINY_BASE",
        "WEIGHTS_DIR",
        "BPE_PATH",
        "HF_TOKEN",
        "HF_NAMESPACE",
        "TRAIN_TIMEOUT_S",
        "GENERATE_TIMEOUT_S",
        "RECOVERY_WINDOW_S",
        "JOB_MAX_TRIES",
        "RETRY_BACKOFF_S",
        "CHECKPOINT_EVERY",
        "MODEL_CACHE_SIZE",
        "WORKER_XLA",
        "QUEUE_POLL_S",
    } == {n.upper() for n in TrainerSettings.model_fields}
    assert _variables((ROOT / ".env.example").read_text()) == set(fields)


def test_defaults_derive_paths_from_data_dir(tmp_path: Path) -> None:
    s = StorageSettings(_env_file=None, data_dir=tmp_path)  # type: ignore[call-arg]
    assert s.db_path == tmp_path / "dreambot.sqlite3"
    assert s.blob_store_url == (tmp_path / "blobs").resolve().as_uri()
    assert s.redis_url == "" and s.redis_dir == tmp_path / "redis"
    explicit = StorageSettings(  # type: ignore[call-arg]
        _env_file=None, data_dir=tmp_path, database_path=tmp_path / "x.db", blob_url="memory://b"
    )
    assert (explicit.db_path, explicit.blob_store_url) == (tmp_path / "x.db", "memory://b")
    assert TrainerSettings(_env_file=None).model_preset == "sd-v1"  # type: ignore[call-arg]
    assert "person" in BotSettings(_env_file=None).person_class_set  # type: ignore[call-arg]


def test_settings_are_frozen(tmp_path: Path) -> None:
    s = StorageSettings(_env_file=None, data_dir=tmp_path)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        s.redis_url = "redis://elsewhere"  # type: ignore[misc]


def test_environment_wins_over_env_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("MODEL_PRESET=sd-v1\nQUOTA_IMAGES_PER_DAY=9\nREDIS_URL=\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MODEL_PRESET", "tiny")
    monkeypatch.setenv("DISCORD_TOKEN", "secret-token")
    monkeypatch.setenv("BLOB_URL", "memory://x")
    s = load_settings()
    assert (s.trainer.model_preset, s.bot.quota_images_per_day) == ("tiny", 9)
    assert (s.storage.blob_store_url, s.storage.redis_url) == ("memory://x", "")
    assert s.bot.discord_token is not None and "secret-token" not in repr(s)


def test_env_example_loads_with_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copy(ROOT / ".env.example", tmp_path / ".env")
    monkeypatch.chdir(tmp_path)
    s = load_settings()
    assert s.bot.dev_guild_id is None and s.trainer.weights_dir is None  # empty means default


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("QUOTA_IMAGES_PER_DAY", "lots"),
        ("MODEL_PRESET", "sd-xl"),
        ("DEV_GUILD_ID", "my server"),
        ("PHOTOS_MIN", "-1"),
        ("MAX_CONCURRENT_JOBS_PER_USER", "0"),
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


def test_every_bad_variable_of_every_side_is_named_at_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MODEL_PRESET", "sd-xl")
    monkeypatch.setenv("PHOTOS_MAX", "many")
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert "MODEL_PRESET" in str(err.value) and "PHOTOS_MAX" in str(err.value)


def test_token_value_is_never_echoed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DISCORD_TOKEN", "hunter2")
    monkeypatch.setenv("PHOTOS_MIN", "30")
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert "hunter2" not in str(err.value) and "PHOTOS_MIN" in str(err.value)


def test_the_bot_is_wired_with_the_workers_preset_vocabulary_and_hub(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from bot.cli import _wiring
    from dreambot.cli import Context
    from storage.hub import HubModelHost

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MODEL_PRESET", "tiny")
    monkeypatch.setenv("BPE_PATH", str(tmp_path / "merges.txt"))
    off = _wiring(Context(load_settings()))
    assert (off.preset, off.bpe_path, off.host) == ("tiny", tmp_path / "merges.txt", None)

    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    host = _wiring(Context(load_settings())).host
    assert isinstance(host, HubModelHost)
    assert host.url("alice/sks-dog") == "https://huggingface.co/alice/sks-dog"
