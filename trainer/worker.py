"""The arq worker process (`dreambot worker`).

Today it serves the ``ping`` health function on both queues; the training and generation job
functions named in :mod:`storage.jobs` join it with the queue work. It runs arq's own signal
handling, so SIGINT/SIGTERM finish the current job's bookkeeping and exit cleanly.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Any

from arq.connections import RedisSettings
from arq.worker import Worker, func

from storage.errors import ConfigError
from storage.jobs import GENERATE_QUEUE, TRAIN_QUEUE

__all__ = ["QUEUES", "build_worker", "ping", "run_worker"]

log = logging.getLogger(__name__)

QUEUES = {"train": TRAIN_QUEUE, "generate": GENERATE_QUEUE}


async def ping(ctx: dict[str, Any]) -> dict[str, Any]:
    """Say which worker answered: lets the bot and tests see that a worker is alive."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "queue": ctx.get("queue_name")}


async def _startup(ctx: dict[str, Any]) -> None:
    log.info("worker %s ready on %s", os.getpid(), ctx.get("queue_name"))


def build_worker(redis_url: str, queue: str = "train", *, burst: bool = False) -> Worker:
    if not redis_url:
        raise ConfigError(
            "REDIS_URL is empty. A standalone worker must point at the bot's Redis "
            "(for example REDIS_URL=redis://gpu-host:6379/0); `dreambot up` sets it for its own."
        )
    if queue not in QUEUES:
        raise ConfigError(f"unknown queue {queue!r}; choose one of {', '.join(QUEUES)}")
    queue_name = QUEUES[queue]
    return Worker(
        functions=[func(ping, name="ping")],
        queue_name=queue_name,
        redis_settings=RedisSettings.from_dsn(redis_url),
        on_startup=_startup,
        ctx={"queue_name": queue_name},
        burst=burst,
        handle_signals=True,
    )


def run_worker(redis_url: str, queue: str = "train") -> int:
    """Run until SIGINT/SIGTERM; returns the process exit code."""
    asyncio.set_event_loop(asyncio.new_event_loop())
    worker = build_worker(redis_url, queue)
    worker.run()
    log.info("worker %s stopped", os.getpid())
    return 0
