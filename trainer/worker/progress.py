"""Progress of a running job, written to Redis under ``progress_key(job_id)``.

The TensorFlow thread reports after every step; a report is written when the stage changes, at
the last step, or when ``every_s`` seconds have passed since the last write (about 2 s), so a
fast training does not flood Redis. Writes go through one writer task on the event loop, in
the order they were made, and every key expires (``PROGRESS_TTL_S``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from storage.jobs import PROGRESS_TTL_S, Progress, Stage, progress_key

__all__ = ["ProgressReporter", "ProgressWriter"]

log = logging.getLogger(__name__)


class ProgressWriter:
    """Serialises progress writes from any thread onto one task of the event loop."""

    def __init__(self, redis: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.redis = redis
        self.loop = loop
        self._queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self._task = loop.create_task(self._drain())

    def put(self, progress: Progress) -> None:
        """Queue a write; safe to call from any thread."""
        item = (progress_key(progress.job_id), progress.to_json())
        self.loop.call_soon_threadsafe(self._queue.put_nowait, item)

    async def _drain(self) -> None:
        while True:
            key, value = await self._queue.get()
            try:
                await self.redis.set(key, value, ex=PROGRESS_TTL_S)
            except Exception:  # progress is advisory: a failed write must not fail the job
                log.warning("could not write progress to %s", key, exc_info=True)
            finally:
                self._queue.task_done()

    async def flush(self) -> None:
        """Wait until every queued write has been made."""
        await asyncio.sleep(0)  # let call_soon_threadsafe callbacks land first
        await self._queue.join()

    async def close(self) -> None:
        await self.flush()
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


class ProgressReporter:
    """One job's progress: stage changes are written at once, steps at most every ``every_s``."""

    def __init__(self, writer: ProgressWriter, job_id: str, every_s: float = 2.0) -> None:
        self.writer = writer
        self.job_id = job_id
        self.every_s = every_s
        self.last: Progress | None = None
        self._written_at = float("-inf")

    def stage(self, stage: Stage, message: str = "", *, step: int = 0, total: int = 0) -> None:
        self._write(Progress(self.job_id, stage.value, step=step, total=total, message=message))

    def step(
        self,
        stage: Stage,
        step: int,
        total: int,
        *,
        loss: float | None = None,
        eta_s: float | None = None,
        message: str = "",
    ) -> None:
        changed = self.last is None or self.last.stage != stage.value
        due = time.monotonic() - self._written_at >= self.every_s
        if changed or due or step >= total:
            self._write(
                Progress(
                    self.job_id,
                    stage.value,
                    step=step,
                    total=total,
                    loss=loss,
                    eta_s=eta_s,
                    message=message,
                )
            )

    def _write(self, progress: Progress) -> None:
        self.last = progress
        self._written_at = time.monotonic()
        self.writer.put(progress)
