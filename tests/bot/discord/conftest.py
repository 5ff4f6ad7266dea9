"""The real bot (discord.py command tree, cogs, views) against SimCord's in-memory Discord, over a
real SQLite file, a real Redis (the session's private redis-server, one database for these
tests, emptied per test) and a real blob directory. No worker runs here: jobs stay queued
unless a test plays the worker's part through Redis.

``world`` gives a guild with a #general channel, two members (alice, bob) and an admin (mod,
with Manage Server)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import discord
import pytest
import simcord
from discord import app_commands
from pydantic import SecretStr
from redis.asyncio import Redis

from bot.config import BotSettings
from bot.frontends.discord.client import DreamBot
from bot.frontends.discord.render import unwrap
from bot.queue import JobQueue
from bot.service import Backend, DreamService
from storage.blobs import BlobStore
from storage.db import Database
from storage.errors import UserFacingError
from storage.redis_server import EmbeddedRedis
from storage.repos import Repos

pytestmark = pytest.mark.queue

BOT_TESTS_DB = 7


@pytest.fixture
def bot_settings() -> BotSettings:
    """The bot's settings as a test sees them: no .env, no environment, small photos allowed."""
    return BotSettings(  # type: ignore[call-arg]
        _env_file=None,
        discord_token=SecretStr("simcord-token"),
        train_resolution=64,
    )


@pytest.fixture
async def backend(
    tmp_path: Path, redis_server: EmbeddedRedis, bot_settings: BotSettings
) -> AsyncIterator[Backend]:
    url = redis_server.url.rsplit("/", 1)[0] + f"/{BOT_TESTS_DB}"
    client = Redis.from_url(url)
    await client.flushdb()
    await client.aclose()
    store = BlobStore((tmp_path / "blobs").resolve().as_uri())
    db = await Database.open(tmp_path / "dreambot.sqlite3")
    queue = await JobQueue.connect(url, store)
    yield Backend(bot_settings, Repos(db), queue, store)
    await queue.close()
    await db.close()


@pytest.fixture
def service(backend: Backend) -> DreamService:
    return DreamService(backend)


@pytest.fixture
def simcord_bot(bot_settings: BotSettings, service: DreamService) -> DreamBot:
    return DreamBot(bot_settings, service)


@pytest.fixture(autouse=True)
def expected_errors(simcord_env: Any) -> Iterator[None]:
    """Errors meant for the member (a UserFacingError or a failed check, rendered to them by the
    bot's one handler) are the bot working; any other error a test did not read fails it."""
    yield
    unread = simcord_env.errors_since(simcord_env._errors_acknowledged)  # what no test read
    simcord_env.errors  # noqa: B018 - reading them acknowledges them for SimCord's own check
    unexpected = [
        e for e in unread if not isinstance(unwrap(e), UserFacingError | app_commands.CheckFailure)
    ]
    if unexpected:
        raise unexpected[0]


@dataclass
class World:
    env: Any  # simcord.Env
    guild: Any
    channel: Any
    alice: Any
    bob: Any
    mod: Any


@pytest.fixture
def world(simcord_env: Any) -> World:
    guild = simcord_env.create_guild("Dreams")
    channel = guild.create_text_channel("general")
    alice = guild.add_member(simcord_env.create_user("alice"))
    bob = guild.add_member(simcord_env.create_user("bob"))
    managers = guild.create_role("Managers", permissions=discord.Permissions(manage_guild=True))
    mod = guild.add_member(simcord_env.create_user("mod"), roles=[managers])
    return World(simcord_env, guild, channel, alice, bob, mod)


def callback_types(env: Any, since: int = 0) -> list[int]:
    """Interaction callback types sent since ``since`` (4 message, 5 defer, 7 update, 9 modal)."""
    return [
        r.json["type"]
        for r in env.http_requests[since:]
        if r.method == "POST" and r.path.endswith("/callback")
    ]


__all__ = ["World", "callback_types", "simcord"]


@pytest.fixture
def downloads(world: World, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The attachment URLs the bot fetched from (SimCord's fake of) Discord's CDN."""
    cdn = world.env.backend.cdn
    fetched: list[str] = []
    real_get: Callable[[str], bytes | None] = cdn.get

    def get(url: str) -> bytes | None:
        fetched.append(url)
        return real_get(url)

    monkeypatch.setattr(cdn, "get", get)
    return fetched
