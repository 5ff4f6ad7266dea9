"""The bot's side of the job queue: enqueue by name with the job id, read progress and queue
position, wait for results, cancel.

Imports storage and arq only (never the trainer, never TensorFlow). A job's spec goes to the
blob store first and only its id goes on the queue, as arq's ``_job_id``, so enqueueing the
same id twice runs it once. Results come back as :class:`~storage.jobs.TrainResult` /
:class:`~storage.jobs.GenerateResult`; a failed job raises :class:`~storage.jobs.JobFailed`
(its message is for the user) and a cancelled one :class:`~storage.jobs.JobCancelled`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from arq import create_pool
from arq.connections import ArqRedis, RedisSettings
from arq.constants import (
    abort_jobs_ss,
    in_progress_key_prefix,
    job_key_prefix,
    result_key_prefix,
    retry_key_prefix,
)
from arq.jobs import Job, JobResult, deserialize_job, serialize_result
from redis.exceptions import RedisError, WatchError

from storage.blobs import BlobStore
from storage.errors import ConfigError, StorageError
from storage.jobs import (
    GENERATE_FUNCTION,
    GENERATE_QUEUE,
    PROGRESS_TTL_S,
    TRAIN_FUNCTION,
    TRAIN_QUEUE,
    WORKER_KEY_PREFIX,
    GenerateResult,
    GenerateSpec,
    JobCancelled,
    JobFailed,
    Progress,
    Stage,
    TrainResult,
    TrainSpec,
    progress_key,
    result_key,
    spec_key,
)

__all__ = ["JobQueue", "JobState", "JobStatus"]

log = logging.getLogger(__name__)

Result = TrainResult | GenerateResult
Spec = TrainSpec | GenerateSpec

# A queued job's arq key lives this long (arq's default is a day, shorter than a busy queue).
JOB_EXPIRES_S = PROGRESS_TTL_S


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETE = "complete"
    FAILED = "failed"
    CANCELLED = "cancelled"
    NOT_FOUND = "not_found"


@dataclass(frozen=True)
class JobStatus:
    """Where a job stands: state, waiting jobs ahead of it (queued only), last progress."""

    job_id: str
    state: JobState
    position: int | None = None
    progress: Progress | None = None
    error: str | None = None


def _parse(function: str, text: str | bytes) -> Result:
    if function == TRAIN_FUNCTION:
        return TrainResult.from_json(text)
    return GenerateResult.from_json(text)


def _failure(info: JobResult) -> JobFailed | JobCancelled:
    exc = info.result
    if isinstance(exc, asyncio.CancelledError):
        return JobCancelled()
    if isinstance(exc, JobFailed | JobCancelled):
        return exc
    # Anything else is the queue's or the worker's own trouble: the member gets plain words,
    # the log the detail.
    log.warning("job failed with an unexpected %s: %s", type(exc).__name__, exc)
    return JobFailed("The job failed on the worker. Please try again later.", "job_failed")


class JobQueue:
    """An arq connection and the blob store the specs go to; built once by the entry point."""

    def __init__(self, redis: ArqRedis, store: BlobStore) -> None:
        self.redis = redis
        self.store = store

    @classmethod
    async def connect(cls, redis_url: str, store: BlobStore) -> JobQueue:
        if not redis_url:
            raise ConfigError("REDIS_URL is empty: the bot needs the Redis its workers use.")
        settings = RedisSettings.from_dsn(redis_url)
        try:
            return cls(await create_pool(settings), store)
        except (OSError, RedisError) as exc:
            where = f"{settings.host}:{settings.port}"
            raise StorageError(
                f"could not reach Redis at {where} (REDIS_URL): {exc}. Start it, or use "
                "`dreambot up`, which runs its own."
            ) from exc

    async def close(self) -> None:
        await self.redis.aclose()

    # -- enqueue ---------------------------------------------------------------------------

    async def enqueue(self, spec: Spec) -> bool:
        """Write the spec, then queue its id; False when a job with this id already exists
        (queued, running or finished), which is then left exactly as it was."""
        job_id = spec.job_id
        function = TRAIN_FUNCTION if isinstance(spec, TrainSpec) else GENERATE_FUNCTION
        queue = TRAIN_QUEUE if function == TRAIN_FUNCTION else GENERATE_QUEUE
        if await self.redis.exists(job_key_prefix + job_id, result_key_prefix + job_id):
            return False
        await asyncio.to_thread(self.store.put, spec_key(job_id), spec.to_json().encode())
        job = await self.redis.enqueue_job(
            function, job_id, _job_id=job_id, _queue_name=queue, _expires=JOB_EXPIRES_S
        )
        if job is None:
            return False
        await self._write_progress(Progress(job_id, Stage.QUEUED.value, message="waiting"))
        return True

    async def _write_progress(self, progress: Progress) -> None:
        await self.redis.set(progress_key(progress.job_id), progress.to_json(), ex=PROGRESS_TTL_S)

    # -- reading ---------------------------------------------------------------------------

    async def _queue_of(self, job_id: str) -> str | None:
        """The queue a job waits or runs on (None once it left the queue)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zscore(TRAIN_QUEUE, job_id)
            pipe.zscore(GENERATE_QUEUE, job_id)
            train, generate = await pipe.execute()
        if train is not None:
            return TRAIN_QUEUE
        return GENERATE_QUEUE if generate is not None else None

    async def progress(self, job_id: str) -> Progress | None:
        raw = await self.redis.get(progress_key(job_id))
        return None if raw is None else Progress.from_json(raw)

    async def position(self, job_id: str) -> int | None:
        """How many waiting jobs are ahead of this one in its queue (0: it is next); None when
        it is not waiting (running, finished or unknown)."""
        queue = await self._queue_of(job_id)
        if queue is None or await self.redis.exists(in_progress_key_prefix + job_id):
            return None
        rank = await self.redis.zrank(queue, job_id)  # arq's own order: score, then id
        if rank is None:
            return None
        ahead = (
            [raw.decode() for raw in await self.redis.zrange(queue, 0, rank - 1)] if rank else []
        )
        if not ahead:
            return 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for other in ahead:
                pipe.exists(in_progress_key_prefix + other)
            running = await pipe.execute()
        return sum(1 for flag in running if not flag)

    async def outcome(self, job_id: str) -> Result | None:
        """The result of a finished job, None while it is not finished; raises JobFailed or
        JobCancelled for a job that ended without one."""
        info = await Job(job_id, self.redis).result_info()
        if info is not None:
            if not info.success:
                raise _failure(info)
            return _parse(info.function, info.result)
        if await self._queue_of(job_id) is not None:
            return None  # arq still holds the job: its result is not final until arq says so
        try:
            text = await asyncio.to_thread(self.store.get, result_key(job_id))
        except StorageError:
            return None
        data = json.loads(text)
        return _parse(TRAIN_FUNCTION if "model_id" in data else GENERATE_FUNCTION, text)

    async def result(
        self, job_id: str, *, timeout: float | None = None, poll_s: float = 0.2
    ) -> Result:
        """Wait for a job's result; raises TimeoutError after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            found = await self.outcome(job_id)
            if found is not None:
                return found
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} did not finish in {timeout} s")
            await asyncio.sleep(poll_s)

    async def status(self, job_id: str) -> JobStatus:
        progress = await self.progress(job_id)
        try:
            done = await self.outcome(job_id)
        except JobCancelled as exc:
            return JobStatus(job_id, JobState.CANCELLED, progress=progress, error=exc.message)
        except JobFailed as exc:
            return JobStatus(job_id, JobState.FAILED, progress=progress, error=exc.message)
        if done is not None:
            return JobStatus(job_id, JobState.COMPLETE, progress=progress)
        if await self._queue_of(job_id) is None:
            return JobStatus(job_id, JobState.NOT_FOUND, progress=progress)
        position = await self.position(job_id)
        state = JobState.RUNNING if position is None else JobState.QUEUED
        return JobStatus(job_id, state, position=position, progress=progress)

    async def workers(self) -> list[dict[str, Any]]:
        """Live worker processes (each renews its key every few seconds)."""
        found = []
        async for key in self.redis.scan_iter(match=WORKER_KEY_PREFIX + "*"):
            raw = await self.redis.get(key)
            if raw is not None:
                found.append(json.loads(raw))
        return found

    # -- cancel ----------------------------------------------------------------------------

    async def cancel(self, job_id: str) -> bool:
        """Cancel a queued or running job; False when it already ended (or never existed).

        A queued job leaves the queue at once (no worker may reach it for hours); a running
        one is aborted through arq, and its worker stops it within one training step.
        """
        queue = await self._queue_of(job_id)
        if queue is None:
            return False
        if await self._drop_queued(job_id, queue):
            await self._write_progress(Progress(job_id, Stage.CANCELLED.value, message="cancelled"))
            return True
        await self.redis.zadd(abort_jobs_ss, {job_id: int(time.time() * 1000)})
        return True

    async def _drop_queued(self, job_id: str, queue: str) -> bool:
        """Take a job nobody has claimed off its queue, recording arq's "aborted" result."""
        claim = in_progress_key_prefix + job_id
        async with self.redis.pipeline(transaction=True) as pipe:
            try:
                await pipe.watch(claim, job_key_prefix + job_id)
                if await pipe.exists(claim):
                    return False
                raw = await pipe.get(job_key_prefix + job_id)
                if raw is None:
                    return False
                job = deserialize_job(raw)
                now = int(time.time() * 1000)
                result = serialize_result(
                    job.function,
                    job.args,
                    job.kwargs,
                    job.job_try or 1,
                    int(job.enqueue_time.timestamp() * 1000),
                    False,
                    asyncio.CancelledError(),
                    now,
                    now,
                    f"{job_id}:{job.function}",
                    queue,
                    job_id=job_id,
                )
                if result is None:  # arq could not serialise it: let the worker abort instead
                    return False
                pipe.multi()  # type: ignore[no-untyped-call]
                pipe.zrem(queue, job_id)
                pipe.delete(job_key_prefix + job_id, retry_key_prefix + job_id)
                pipe.set(result_key_prefix + job_id, result, px=int(PROGRESS_TTL_S * 1000))
                await pipe.execute()
            except WatchError:  # a worker claimed it meanwhile: abort it instead
                return False
        return True

    # -- purge -----------------------------------------------------------------------------

    async def purge(self, job_id: str) -> int | None:
        """Delete every Redis trace of an ended job (``/forget``): arq's job, result, retry and
        in-progress keys, its place in a queue or the abort set, and its progress; returns
        how many were removed (0 the second time).

        A job a worker still holds is left as it is and None returned: its worker would write
        its keys again, and dropping its abort request would let it run on. Cancel it, and
        purge it once the worker let go.
        """
        if await self.redis.exists(in_progress_key_prefix + job_id):
            return None
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(
                job_key_prefix + job_id,
                result_key_prefix + job_id,
                retry_key_prefix + job_id,
                in_progress_key_prefix + job_id,
                progress_key(job_id),
            )
            pipe.zrem(TRAIN_QUEUE, job_id)
            pipe.zrem(GENERATE_QUEUE, job_id)
            pipe.zrem(abort_jobs_ss, job_id)
            counts = await pipe.execute()
        return sum(int(n) for n in counts)
