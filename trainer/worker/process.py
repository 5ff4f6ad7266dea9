"""The worker process: arq workers for one or both queues, sharing one TensorFlow thread.

``--queue all`` runs an arq ``Worker`` per queue in one process and one event loop. Both hand
their TensorFlow work to the same thread (:mod:`trainer.worker.tfthread`), so the card holds one
copy of the base model, and a generation request that arrives during a training runs between
two training steps instead of after the training.

**Crash recovery.** arq claims a job with an in-progress key that lives as long as the longest
job timeout (hours for training), and runs the job again only when that key expires. Here the
claim lives ``RECOVERY_WINDOW_S`` instead, and a heartbeat task renews it three times per
window for every job this process runs. A live worker keeps its jobs; when a worker dies (or its
machine does) the claim lapses within the window, and any worker polling the queue starts the
job again: a training resumes from its last checkpoint in the blob store, and a finished job
returns its stored result. The heartbeat runs on the event loop, which never runs TensorFlow,
so a long training step does not delay it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import time
import uuid
from typing import Any

from arq import create_pool
from arq.connections import ArqRedis, RedisSettings
from arq.constants import in_progress_key_prefix
from arq.worker import Worker, func

from storage.errors import ConfigError
from storage.jobs import GENERATE_FUNCTION, QUEUES, TRAIN_FUNCTION, worker_key
from trainer.config import WorkerConfig
from trainer.worker.jobs import generate_images, train_model
from trainer.worker.progress import ProgressWriter
from trainer.worker.runtime import Runtime

__all__ = ["QUEUE_CHOICES", "ClaimingWorker", "WorkerGroup", "build_worker", "ping", "queues_for"]

log = logging.getLogger(__name__)

QUEUE_CHOICES = ("train", "generate", "all")
# arq's own timeout is a backstop behind the job's own, which stops the body cleanly first.
_TIMEOUT_GRACE_S = 60


async def ping(ctx: dict[str, Any]) -> dict[str, Any]:
    """Say which worker answered: lets the bot and tests see that a worker is alive."""
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "queue": ctx.get("queue_name"),
        "started_at": time.time(),
    }


async def _startup(ctx: dict[str, Any]) -> None:
    log.info("worker %s ready on %s", os.getpid(), ctx.get("queue_name"))


def queues_for(queue: str) -> list[str]:
    """``train``, ``generate`` or ``all`` as the queue names (``train`` first)."""
    if queue == "all":
        return list(QUEUES)
    if queue not in QUEUES:
        raise ConfigError(f"unknown queue {queue!r}; choose one of {', '.join(QUEUE_CHOICES)}")
    return [queue]


class ClaimingWorker(Worker):  # type: ignore[misc]
    """An arq worker whose claim on a running job lives ``claim_s``, not the longest timeout
    (arq 0.28 reads ``in_progress_timeout_s`` when it claims a job); the group's heartbeat
    renews the claim while the job runs."""

    def __init__(self, *args: Any, claim_s: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if claim_s is not None:
            self.in_progress_timeout_s = claim_s


def build_worker(
    redis_url: str,
    queue: str = "train",
    *,
    runtime: Runtime | None = None,
    config: WorkerConfig | None = None,
    burst: bool = False,
) -> Worker:
    """One arq worker for one queue. Without a runtime it serves only ``ping`` (with arq's
    defaults, unless ``config`` is given)."""
    if not redis_url:
        raise ConfigError(
            "REDIS_URL is empty. A standalone worker must point at the bot's Redis "
            "(for example REDIS_URL=redis://gpu-host:6379/0); `dreambot up` sets it for its own."
        )
    if queue not in QUEUES:
        raise ConfigError(f"unknown queue {queue!r}; choose one of {', '.join(QUEUE_CHOICES)}")
    queue_name = QUEUES[queue]
    functions = [func(ping, name="ping")]
    ctx: dict[str, Any] = {"queue_name": queue_name}
    options: dict[str, Any] = {}
    config = runtime.config if runtime is not None else config
    if config is not None:
        options = {
            "claim_s": config.recovery_window_s,
            "max_tries": config.max_tries,
            "poll_delay": config.poll_s,
            "keep_result": config.keep_result_s,
        }
    if runtime is not None and config is not None:
        if queue == "train":
            timeout = config.train_timeout_s
            functions.append(
                func(train_model, name=TRAIN_FUNCTION, timeout=timeout + _TIMEOUT_GRACE_S)
            )
        else:
            timeout = config.generate_timeout_s
            functions.append(
                func(generate_images, name=GENERATE_FUNCTION, timeout=timeout + _TIMEOUT_GRACE_S)
            )
        ctx["runtime"] = runtime
    worker = ClaimingWorker(
        functions=functions,
        queue_name=queue_name,
        redis_settings=RedisSettings.from_dsn(redis_url),
        on_startup=_startup,
        ctx=ctx,
        burst=burst,
        handle_signals=False,
        allow_abort_jobs=True,
        # One TensorFlow job at a time: the TF thread runs one body; a second claimed job would
        # only wait there while another worker could have started it.
        max_jobs=1,
        **options,
    )
    ctx["arq_worker"] = worker
    return worker


class WorkerGroup:
    """The arq workers of one process, their heartbeat and the progress writer."""

    def __init__(self, runtime: Runtime, redis_url: str, queue: str = "all") -> None:
        self.runtime = runtime
        self.redis_url = redis_url
        self.queues = queues_for(queue)
        self.worker_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.workers: list[Worker] = []
        self._redis: ArqRedis | None = None
        self._tasks: list[asyncio.Task[Any]] = []

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if not self.redis_url:
            build_worker(self.redis_url)  # raises the REDIS_URL explanation
        self._redis = await create_pool(RedisSettings.from_dsn(self.redis_url))
        self.runtime.writer = ProgressWriter(self._redis, loop)
        self.workers = [build_worker(self.redis_url, q, runtime=self.runtime) for q in self.queues]
        self._tasks = [loop.create_task(w.async_run()) for w in self.workers]
        self._tasks.append(loop.create_task(self._heartbeat()))

    def running_jobs(self) -> list[str]:
        return [job_id for worker in self.workers for job_id in worker.tasks]

    async def _heartbeat(self) -> None:
        """Renew the claim on every running job, and say this worker is alive."""
        assert self._redis is not None
        config: WorkerConfig = self.runtime.config
        window_ms = int(config.recovery_window_s * 1000)
        while True:
            try:
                jobs = self.running_jobs()
                async with self._redis.pipeline(transaction=False) as pipe:
                    for job_id in jobs:
                        pipe.pexpire(in_progress_key_prefix + job_id, window_ms)
                    pipe.set(worker_key(self.worker_id), self._presence(jobs), px=window_ms)
                    await pipe.execute()
            except asyncio.CancelledError:
                raise
            except Exception:  # Redis away for a moment: try again on the next beat
                log.warning("heartbeat failed", exc_info=True)
            await asyncio.sleep(config.heartbeat_s)

    def _presence(self, jobs: list[str]) -> str:
        return json.dumps(
            {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "queues": [QUEUES[q] for q in self.queues],
                "jobs": jobs,
                "at": time.time(),
            }
        )

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Stop taking jobs; running jobs stop at their next step and go back on the queue."""
        for worker in self.workers:
            worker.handle_sig(sig)

    async def wait(self) -> None:
        await asyncio.gather(*self._tasks[: len(self.workers)], return_exceptions=True)

    async def close(self) -> None:
        self.stop(signal.SIGTERM)
        for worker in self.workers:
            # Let each running job stop at its step boundary and arq record it (back on the
            # queue); then arq's close finds nothing left to cancel.
            await asyncio.gather(*worker.tasks.values(), return_exceptions=True)
            worker.tasks.clear()
            await worker.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.runtime.writer is not None:
            await self.runtime.writer.close()
            self.runtime.writer = None
        if self._redis is not None:
            await self._redis.delete(worker_key(self.worker_id))
            await self._redis.aclose()
            self._redis = None

    async def run(self) -> None:
        """Serve until SIGINT/SIGTERM, then stop cleanly."""
        loop = asyncio.get_running_loop()
        await self.start()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop, sig)
        try:
            await self.wait()
        finally:
            await self.close()
