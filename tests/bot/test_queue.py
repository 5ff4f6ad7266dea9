"""bot.queue against the real Redis, with no worker running (and no TensorFlow): specs land in the
blob store, ids on the queue once, positions count the waiting jobs, a queued job cancels at
once, and a finished job's stored result is read back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from bot.queue import JobQueue, JobState
from storage.blobs import BlobStore
from storage.jobs import (
    GENERATE_QUEUE,
    PROGRESS_TTL_S,
    TRAIN_QUEUE,
    GenerateResult,
    GenerateSpec,
    JobCancelled,
    JobFailed,
    TrainSpec,
    progress_key,
    result_key,
    spec_key,
)
from storage.redis_server import EmbeddedRedis

pytestmark = pytest.mark.queue

BOT_DB = 6


@pytest.fixture
async def queue(redis_server: EmbeddedRedis, tmp_path: Path) -> AsyncIterator[JobQueue]:
    url = redis_server.url.rsplit("/", 1)[0] + f"/{BOT_DB}"
    client = Redis.from_url(url)
    await client.flushdb()
    await client.aclose()
    q = await JobQueue.connect(url, BlobStore(tmp_path.resolve().as_uri()))
    yield q
    await q.close()


def _train(job_id: str) -> TrainSpec:
    return TrainSpec(job_id, f"m-{job_id}", [], "dog", "sks", preset="tiny", resolution=64)


async def test_enqueue_writes_the_spec_then_queues_the_id_once(queue: JobQueue) -> None:
    spec = _train("t1")
    assert await queue.enqueue(spec)
    assert TrainSpec.from_json(queue.store.get(spec_key("t1"))) == spec
    assert await queue.redis.zscore(TRAIN_QUEUE, "t1") is not None
    other = TrainSpec("t1", "another-model", [], "cat", "zzx", preset="tiny", resolution=64)
    assert not await queue.enqueue(other)  # same id: refused, and the first spec is untouched
    assert TrainSpec.from_json(queue.store.get(spec_key("t1"))) == spec
    assert await queue.redis.zcard(TRAIN_QUEUE) == 1
    progress = await queue.progress("t1")
    assert progress is not None and progress.stage == "queued"
    assert 0 < await queue.redis.ttl(progress_key("t1")) <= PROGRESS_TTL_S  # progress expires


async def test_positions_count_waiting_jobs_and_queues_are_separate(queue: JobQueue) -> None:
    for job_id in ("a", "b", "c"):
        assert await queue.enqueue(_train(job_id))
    assert await queue.enqueue(GenerateSpec("g", "a photo of sks dog"))
    assert [await queue.position(j) for j in ("a", "b", "c")] == [0, 1, 2]
    assert await queue.position("g") == 0  # /imagine never queues behind trainings
    assert await queue.redis.zscore(GENERATE_QUEUE, "g") is not None
    # A job a worker has claimed is running, not waiting: it no longer counts.
    await queue.redis.set("arq:in-progress:a", b"1")
    assert await queue.position("a") is None
    assert [await queue.position(j) for j in ("b", "c")] == [0, 1]
    status = await queue.status("a")
    assert status.state == JobState.RUNNING and status.position is None
    status = await queue.status("c")
    assert status.state == JobState.QUEUED and status.position == 1
    assert (await queue.status("nope")).state == JobState.NOT_FOUND


async def test_cancelling_a_queued_job_takes_it_off_the_queue_at_once(queue: JobQueue) -> None:
    for job_id in ("x", "y"):
        assert await queue.enqueue(_train(job_id))
    assert await queue.cancel("x")
    assert await queue.redis.zscore(TRAIN_QUEUE, "x") is None
    with pytest.raises(JobCancelled):
        await queue.result("x", timeout=5)
    assert (await queue.status("x")).state == JobState.CANCELLED
    assert (await queue.progress("x")).stage == "cancelled"  # type: ignore[union-attr]
    assert 0 < await queue.redis.ttl(progress_key("x")) <= PROGRESS_TTL_S
    assert await queue.position("y") == 0
    assert not await queue.cancel("x")  # already over
    assert not await queue.enqueue(_train("x"))  # its id stays used: a cancel is final


async def test_cancelling_a_running_job_asks_its_worker_to_abort(queue: JobQueue) -> None:
    assert await queue.enqueue(_train("r"))
    await queue.redis.set("arq:in-progress:r", b"1")
    assert await queue.cancel("r")
    assert await queue.redis.zscore("arq:abort", "r") is not None
    assert await queue.redis.zscore(TRAIN_QUEUE, "r") is not None  # the worker ends it


async def test_a_stored_result_is_read_back_once_arq_is_done(queue: JobQueue) -> None:
    done = GenerateResult("gen-1", ["outputs/gen-1/00.png"], [4], 1.5)
    queue.store.put(result_key("gen-1"), done.to_json().encode())
    assert await queue.outcome("gen-1") == done
    assert (await queue.status("gen-1")).state == JobState.COMPLETE
    with pytest.raises(TimeoutError):
        await queue.result("never", timeout=0.3, poll_s=0.05)


def test_job_failures_survive_pickling() -> None:
    import pickle

    failed = pickle.loads(
        pickle.dumps(JobFailed("Photos gone.", "photos_missing", permanent=False))
    )
    assert (failed.message, failed.code, failed.permanent) == (
        "Photos gone.",
        "photos_missing",
        False,
    )
    assert pickle.loads(pickle.dumps(JobCancelled())).code == "cancelled"
