"""The whole product on the tiny preset: the real discord.py client (SimCord), the real service
over SQLite, Redis and the blob store, and a real worker process (`dreambot worker`).

A member trains a model with /train, is mentioned when it is ready, draws with it through
/imagine, and /forget then leaves nothing of theirs: no rows, no blobs, no Redis keys.
"""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from pydantic import SecretStr
from redis.asyncio import Redis

from bot.config import BotSettings
from bot.delivery import DELIVERY_EVERY_S
from bot.frontends.discord.training_views import CONSENT_LABEL
from bot.queue import JobQueue
from bot.service import Backend
from storage.blobs import BlobStore
from storage.db import Database
from storage.redis_server import EmbeddedRedis
from storage.repos import Repos
from tests.bot.discord.conftest import World, expected_errors, service, simcord_bot, world
from tests.bot.discord.training_support import photos

pytestmark = [pytest.mark.e2e, pytest.mark.queue, pytest.mark.slow]

__all__ = ["expected_errors", "service", "simcord_bot", "world"]

E2E_DB = 9  # a Redis database of its own on the session's test server
STEPS = 30
# Every table that holds a member's data, and the column naming them.
MEMBER_TABLES = {
    "jobs": "owner_id",
    "models": "owner_id",
    "usage_ledger": "user_id",
    "consents": "user_id",
    "limit_overrides": "user_id",
    "users": "id",
}


@pytest.fixture
def bot_settings() -> BotSettings:
    return BotSettings(  # type: ignore[call-arg]
        _env_file=None,
        discord_token=SecretStr("simcord-token"),
        train_resolution=64,
        train_steps=STEPS,  # the toy learns nothing in so few; this proves the whole path
        train_class_images=2,
    )


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> str:
    return redis_server.url.rsplit("/", 1)[0] + f"/{E2E_DB}"


@pytest.fixture
async def backend(
    tmp_path: Path, redis_url: str, bot_settings: BotSettings
) -> AsyncIterator[Backend]:
    client = Redis.from_url(redis_url)
    await client.flushdb()
    await client.aclose()
    store = BlobStore((tmp_path / "blobs").resolve().as_uri())
    db = await Database.open(tmp_path / "dreambot.sqlite3")
    queue = await JobQueue.connect(redis_url, store)
    yield Backend(bot_settings, Repos(db), queue, store, preset="tiny")
    await queue.close()
    await db.close()


@pytest.fixture
def worker(tmp_path: Path, redis_url: str, backend: Backend) -> Iterator[Path]:
    """`dreambot worker` on both queues, as an operator runs it; yields its log file."""
    log_path = tmp_path / "worker.log"
    env = {
        **os.environ,  # TINY_BASE=random (tests/conftest.py): this tests the path, not the art
        "MODEL_PRESET": "tiny",
        "REDIS_URL": redis_url,
        "BLOB_URL": backend.store.url,
        "DATA_DIR": str(tmp_path / "worker-data"),
        "WORKER_XLA": "false",
    }
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dreambot", "worker"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
        try:
            yield log_path
        finally:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def _until(world: World, worker_log: Path, done: Any, what: str, limit_s: float) -> Any:
    """Let real time pass for the worker and virtual time for the bot's delivery loop until
    ``done()`` returns something."""
    deadline = time.monotonic() + limit_s
    while (found := done()) is None:
        assert time.monotonic() < deadline, f"no {what} in {limit_s} s:\n{worker_log.read_text()}"
        await asyncio.to_thread(time.sleep, 0.25)
        await world.env.advance_time(DELIVERY_EVERY_S)
    return found


def _mentioning(world: World, start: str) -> Any:
    for message in world.channel.history(viewer=world.alice):
        if message.content.startswith(f"<@{world.alice.id}> {start}"):
            return message
    return None


async def _member_rows(backend: Backend, user_id: int) -> dict[str, int]:
    counts = {}
    for table, column in MEMBER_TABLES.items():
        row = await backend.repos.db.fetchone(
            f"SELECT COUNT(*) FROM {table} WHERE {column} = ?", (user_id,)
        )
        counts[table] = int(row[0]) if row is not None else 0
    return counts


def _blobs(tmp_path: Path) -> list[str]:
    """Every object in the blob store (a folder here), as keys."""
    root = tmp_path / "blobs"
    return [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]


async def _redis_text(backend: Backend) -> str:
    """Every key, and every member of every sorted set, of the bot's Redis database."""
    redis = backend.queue.redis
    parts = []
    for key in await redis.keys("*"):
        parts.append(key.decode())
        if await redis.type(key) == b"zset":
            parts += [m.decode() for m in await redis.zrange(key, 0, -1)]
    return "\n".join(parts)


async def test_train_then_imagine_then_forget_through_discord(
    world: World, backend: Backend, worker: Path, tmp_path: Path
) -> None:
    alice = world.alice.id
    report = await world.alice.slash(
        world.channel, "train", class_name="dog", token="sks", name="rex", **photos(1, 2, 3)
    )
    await world.alice.click(report.response, label=CONSENT_LABEL)
    [job] = await backend.repos.jobs.for_owner(alice)

    ready = await _until(
        world, worker, lambda: _mentioning(world, "your model **rex** is ready"), "model", 900
    )
    assert alice in [user.id for user in ready.mentions]
    card = next(m for m in world.channel.history(viewer=world.alice) if m.id == job.message_id)
    assert card.embeds[0].title == "Training rex: done"
    [samples] = card.attachments
    assert Image.open(io.BytesIO(await samples.read())).format == "PNG"
    [model] = await backend.repos.models.for_owner(alice)
    assert (model.name, model.is_default) == ("rex", True)
    trained = await backend.repos.jobs.get(job.id)
    assert trained is not None and trained.delivered_at is not None

    await world.alice.slash(world.channel, "imagine", prompt="a photo of sks dog", count=2)
    images = await _until(
        world, worker, lambda: _mentioning(world, "your images are ready"), "images", 300
    )
    names = sorted(a.filename for a in images.attachments)
    assert len(names) == 3 and "grid.png" in names  # the grid and both pictures
    for attachment in images.attachments:
        assert Image.open(io.BytesIO(await attachment.read())).format == "PNG"
    assert "rex" in images.embeds[0].description

    ids = [j.id for j in await backend.repos.jobs.for_owner(alice)] + [model.id]
    assert len(ids) == 3
    before = await _redis_text(backend)
    assert [i for i in ids if i in before]  # the check below can fail: Redis names them now
    assert [k for k in _blobs(tmp_path) if any(i in k for i in ids)]

    shown = await world.alice.slash(world.channel, "forget")
    done = await world.alice.click(shown.response, label="Delete everything")
    assert done.response.content.startswith("Done. Deleted from this server:")

    assert await _member_rows(backend, alice) == dict.fromkeys(MEMBER_TABLES, 0)
    left = [m.id for m in world.channel.history(viewer=world.alice)]
    assert card.id not in left and images.id not in left  # the pictures are gone from Discord
    assert [k for k in _blobs(tmp_path) if any(i in k for i in ids)] == []
    redis = await _redis_text(backend)
    assert [i for i in ids if i in redis] == [] and str(alice) not in redis
