"""Shared fixtures: real SQLite in tmp_path, a private redis-server, Settings built directly."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from bot.config import Settings
from storage.db import Database
from storage.redis_server import EmbeddedRedis
from storage.repos import Repos


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    """A private redis-server on a free loopback port, no persistence, stopped after the session."""
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), persist=False)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(_env_file=None, data_dir=tmp_path / "data")  # type: ignore[call-arg]


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = await Database.open(tmp_path / "dreambot.sqlite3")
    yield database
    await database.close()


@pytest.fixture
def repos(db: Database) -> Repos:
    return Repos(db)


def _has_gpu() -> bool:
    return Path("/dev/nvidia0").exists() or Path("/dev/dri/renderD128").exists()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `gpu` run only where a GPU is present."""
    if _has_gpu():
        return
    skip = pytest.mark.skip(reason="needs a GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
