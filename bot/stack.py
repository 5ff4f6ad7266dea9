"""`dreambot up` and `dreambot bot`: run the pieces, and stop every one of them cleanly.

``up`` starts the embedded Redis (when REDIS_URL is empty), one worker process serving both queues
(``dreambot worker --queue all``) and the bot, and
on SIGINT/SIGTERM (or when any piece dies) stops them in reverse order: bot, worker, Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import discord

from bot.config import BotSettings
from bot.frontends.discord.client import DreamBot, apply_api_base
from bot.queue import JobQueue
from bot.service import Backend, DreamService, ModelHost
from storage.blobs import BlobStore
from storage.config import StorageSettings
from storage.db import Database
from storage.errors import ConfigError, DreambotError
from storage.redis_server import EmbeddedRedis
from storage.repos import Repos

__all__ = ["Wiring", "run_bot", "run_up"]


@dataclass(frozen=True)
class Wiring:
    """What the composition root hands the bot from the workers' side: the preset a training
    spec names, the CLIP merges file for exact prompt token counts (None: a lower bound), and
    the Hub host of the models (None: hosting off)."""

    preset: str = "sd-v1"
    bpe_path: Path | None = None
    host: ModelHost | None = None


log = logging.getLogger(__name__)

WORKER_STOP_TIMEOUT_S = 30.0


@dataclass
class _Stop:
    """Why the stack is stopping: a signal (clean, exit 0) or a failed piece (exit 1)."""

    event: asyncio.Event = field(default_factory=asyncio.Event)
    reason: str = ""
    failed: bool = False

    def set(self, reason: str, *, failed: bool) -> None:
        if not self.event.is_set():
            self.reason, self.failed = reason, failed
            self.event.set()


async def _run_client(client: DreamBot, token: str, stop: _Stop) -> None:
    try:
        await client.start(token)
    except discord.LoginFailure:
        stop.set("Discord refused DISCORD_TOKEN; copy the bot token again.", failed=True)
    except (OSError, aiohttp.ClientError, discord.HTTPException, discord.GatewayNotFound) as exc:
        stop.set(f"could not reach Discord ({exc.__class__.__name__}: {exc})", failed=True)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        if stop.event.is_set():  # closing mid-handshake raises; we are stopping anyway
            return
        log.exception("the bot stopped with an error")
        stop.set(f"the bot stopped with an error: {exc}", failed=True)
    else:
        stop.set("the bot disconnected", failed=True)


async def _watch_worker(proc: asyncio.subprocess.Process, stop: _Stop) -> None:
    code = await proc.wait()
    stop.set(f"the worker exited with code {code}", failed=True)


async def _stop_worker(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), WORKER_STOP_TIMEOUT_S)
    except TimeoutError:
        log.warning("worker %s did not stop in time; killing it", proc.pid)
        proc.kill()
        await proc.wait()


def _install_signals(stop: _Stop) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(
            sig, functools.partial(stop.set, f"received {sig.name}", failed=False)
        )


async def _serve(
    settings: BotSettings,
    storage: StorageSettings,
    redis_url: str,
    *,
    with_worker: bool,
    wiring: Wiring,
) -> int:
    token = settings.require_token()
    stop = _Stop()
    _install_signals(stop)
    db = await Database.open(storage.db_path)
    store = BlobStore(storage.blob_store_url)
    try:
        queue = await JobQueue.connect(redis_url, store)
    except BaseException:
        await db.close()  # its thread would keep the process alive
        raise
    apply_api_base(settings)
    backend = Backend(settings, Repos(db), queue, store, wiring.host, wiring.preset)
    client = DreamBot(settings, DreamService(backend, bpe_path=wiring.bpe_path))
    tasks: list[asyncio.Task[None]] = []
    worker: asyncio.subprocess.Process | None = None
    try:
        if with_worker:
            env = {**os.environ, "REDIS_URL": redis_url}
            worker = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "dreambot",
                "worker",
                "--queue",
                "all",  # one process serves both queues, sharing the card's one copy of the model
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
            )
            log.info("worker pid %s", worker.pid)
            tasks.append(asyncio.create_task(_watch_worker(worker, stop)))
        tasks.append(asyncio.create_task(_run_client(client, token, stop)))
        await stop.event.wait()
    finally:
        log.info("stopping: %s", stop.reason or "shutdown")
        with contextlib.suppress(Exception):
            await client.close()
        if worker is not None:
            await _stop_worker(worker)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await queue.close()
        await db.close()
    if stop.failed:
        raise DreambotError(stop.reason)
    log.info("stopped cleanly")
    return 0


def run_up(
    settings: BotSettings,
    storage: StorageSettings,
    wiring: Wiring | None = None,
) -> int:
    """Embedded Redis (if REDIS_URL is empty) + one worker + the bot, until a signal."""
    settings.require_token()  # before anything starts
    redis: EmbeddedRedis | None = None
    redis_url = storage.redis_url
    if not redis_url:
        redis = EmbeddedRedis(storage.redis_dir, persist=True)
        redis_url = redis.start()
    try:
        return asyncio.run(
            _serve(settings, storage, redis_url, with_worker=True, wiring=wiring or Wiring())
        )
    finally:
        if redis is not None:
            redis.stop()
            log.info("embedded Redis stopped")


def run_bot(
    settings: BotSettings,
    storage: StorageSettings,
    wiring: Wiring | None = None,
) -> int:
    """Only the bot (workers run elsewhere against the same REDIS_URL and BLOB_URL)."""
    settings.require_token()
    if not storage.redis_url:
        raise ConfigError(
            "REDIS_URL is not set. `dreambot bot` runs the bot alone and needs the Redis that "
            "the workers use; use `dreambot up` to run everything on one machine."
        )
    return asyncio.run(
        _serve(settings, storage, storage.redis_url, with_worker=False, wiring=wiring or Wiring())
    )
