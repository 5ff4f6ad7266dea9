"""Shared fixtures: real SQLite in tmp_path, a private redis-server; Hypothesis profiles."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from storage.db import Database
from storage.redis_server import EmbeddedRedis
from storage.repos import Repos

# Property tests: a quick pass in the everyday `make test`, a thorough one in `make ci`. Tests
# take their example counts from the profile (never a fixed max_examples of their own).
settings.register_profile(
    "dev", max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "ci", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

# The tiny preset's pretrained base takes minutes to fit, once per DATA_DIR. Pipeline tests
# (CLI, worker, stack; and the worker processes they start, which inherit this) run on the random
# tiny preset instead; the tests of learning use the session's one fitted base
# (``tests/trainer/conftest.py``: ``pretrained_tiny``).
os.environ["TINY_BASE"] = "random"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    """A private redis-server on a free loopback port, no persistence, stopped after the session."""
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), persist=False)
    server.start()
    yield server
    server.stop()


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
