"""Training and generation jobs end to end: bot.queue → real Redis → a real worker group
(both queues, one TensorFlow thread) on the tiny preset → blob store → results.

Tests that train are marked slow: each new trainer traces its step (17-50 s here)."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import io
import time
from typing import Any

import pytest
from PIL import Image

from bot.queue import JobQueue, JobState
from storage.blobs import BlobStore, keys
from storage.jobs import (
    GENERATE_FUNCTION,
    PROGRESS_TTL_S,
    TRAIN_FUNCTION,
    GenerateResult,
    GenerateSpec,
    JobCancelled,
    JobFailed,
    Stage,
    TrainResult,
    progress_key,
    result_key,
)
from tests.trainer.workers import (
    generate_spec,
    job_queue,
    new_id,
    queue_url,
    train_spec,
    upload_lora_model,
    worker_group,
    worker_runtime,
    worker_store,
)

pytestmark = pytest.mark.queue

__all__ = ["job_queue", "queue_url", "worker_group", "worker_runtime", "worker_store"]


async def _watch(queue: JobQueue, job_id: str, until: float = 120.0) -> list[tuple[str, int]]:
    """Every (stage, step) seen while the job runs, until it ends."""
    seen: list[tuple[str, int]] = []
    deadline = time.monotonic() + until
    while time.monotonic() < deadline:
        progress = await queue.progress(job_id)
        if progress is not None and (not seen or seen[-1] != (progress.stage, progress.step)):
            seen.append((progress.stage, progress.step))
        if progress is not None and progress.stage in ("done", "failed", "cancelled"):
            return seen
        await asyncio.sleep(0.01)
    raise AssertionError(f"job {job_id} did not end; saw {seen}")


@pytest.mark.slow  # a traced training step: 30-80 s here
@pytest.mark.parametrize("method", ["lora", "full"])
async def test_training_completes_with_rising_progress_samples_and_a_stored_result(
    worker_group: Any,
    worker_runtime: Any,
    job_queue: JobQueue,
    worker_store: BlobStore,
    method: str,
) -> None:
    job_id = new_id("train")
    spec = train_spec(worker_store, job_id, steps=24, class_images=4, method=method)
    assert await job_queue.enqueue(spec)
    seen = await _watch(job_queue, job_id)
    result = await job_queue.result(job_id, timeout=30)

    assert isinstance(result, TrainResult)
    steps = [step for stage, step in seen if stage == Stage.TRAINING and step > 0]
    assert len(steps) >= 3 and steps == sorted(steps) and steps[-1] == 24, seen
    stages = [stage for stage, _ in seen]
    assert stages.index("class_images") < stages.index("training") < stages.index("done")
    assert result.model_id == spec.model_id and result.steps == 24
    stored = worker_store.list(keys.model_prefix(spec.model_id))
    assert sorted(result.files) == sorted(key for key in stored if "/sample-" not in key)
    assert len(result.files) == 2
    assert len(result.sample_keys) == 4
    for key in result.sample_keys:
        with Image.open(io.BytesIO(worker_store.get(key))) as image:
            assert image.size == (64, 64)
    assert result.size_bytes == sum(worker_store.size(key) for key in result.files)
    assert worker_store.list(keys.checkpoint_prefix(job_id)) == []
    assert TrainResult.from_json(worker_store.get(result_key(job_id))) == result
    status = await job_queue.status(job_id)
    assert status.state == JobState.COMPLETE and status.progress is not None
    # Full fine-tuning also drew 4 images of the empty prompt, in a cache of their own.
    caches = {key.split("/")[1] for key in worker_store.list("class-images/")}
    assert len(caches) >= (2 if method == "full" else 1)
    if method == "full":
        from trainer.class_images import ClassImageSpec

        empty = ClassImageSpec.for_preset(worker_runtime.base, "").cache_id
        assert len(worker_store.list(keys.class_images_prefix(empty))) == 4


async def test_generation_completes_with_the_requested_seeds(
    worker_group: Any, job_queue: JobQueue, worker_store: BlobStore
) -> None:
    job_id = new_id("gen")
    assert await job_queue.enqueue(generate_spec(job_id, seeds=(5, 6)))
    result = await job_queue.result(job_id, timeout=60)
    assert isinstance(result, GenerateResult) and result.seeds == [5, 6]
    assert result.image_keys == [keys.output(job_id, 0), keys.output(job_id, 1)]
    for key in result.image_keys:
        with Image.open(io.BytesIO(worker_store.get(key))) as image:
            assert image.size == (64, 64)
    assert (await job_queue.progress(job_id)).stage == "done"  # type: ignore[union-attr]
    assert 0 < await job_queue.redis.ttl(progress_key(job_id)) <= PROGRESS_TTL_S  # it expires


async def test_the_same_job_id_runs_once(
    worker_group: Any, job_queue: JobQueue, worker_runtime: Any
) -> None:
    job_id = new_id("once")
    before = worker_runtime.jobs_run.get(GENERATE_FUNCTION, 0)
    assert await job_queue.enqueue(generate_spec(job_id))
    assert not await job_queue.enqueue(generate_spec(job_id, seeds=(1, 2)))  # a double click
    first = await job_queue.result(job_id, timeout=60)
    assert not await job_queue.enqueue(generate_spec(job_id))  # finished: still not again
    # After arq forgot the result (it keeps results for a week), arq may run the job again:
    # the worker returns the stored result instead of drawing the images twice.
    await job_queue.redis.delete(f"arq:result:{job_id}")
    assert await job_queue.enqueue(generate_spec(job_id))
    again = await job_queue.result(job_id, timeout=60)
    assert again == first and isinstance(first, GenerateResult) and first.seeds == [7, 8]
    assert worker_runtime.jobs_run.get(GENERATE_FUNCTION, 0) == before + 1


@pytest.mark.slow  # a traced training step: 30-80 s here
async def test_cancel_mid_training_stops_within_a_step_and_the_next_job_runs(
    worker_group: Any, job_queue: JobQueue, worker_store: BlobStore, worker_runtime: Any
) -> None:
    job_id = new_id("cancel")
    spec = train_spec(worker_store, job_id, steps=5000)
    gc.collect()
    # Session fixtures of other tests hold trainers of their own; only this job's must go.
    earlier = {id(o) for o in gc.get_objects() if type(o).__name__ == "DreamBoothTrainer"}
    assert await job_queue.enqueue(spec)
    deadline = time.monotonic() + 120
    while True:
        progress = await job_queue.progress(job_id)
        if progress is not None and progress.stage == "training" and progress.step >= 7:
            break
        assert time.monotonic() < deadline, progress
        await asyncio.sleep(0.02)
    assert worker_store.list(keys.checkpoint_prefix(job_id))  # a checkpoint at step 5
    assert await job_queue.cancel(job_id)
    with pytest.raises(JobCancelled):
        await job_queue.result(job_id, timeout=60)
    progress = await job_queue.progress(job_id)
    assert progress is not None and progress.stage == "cancelled"
    assert (await job_queue.status(job_id)).state == JobState.CANCELLED
    assert worker_store.list(keys.model_prefix(spec.model_id)) == []  # no model stored
    assert worker_store.list(keys.checkpoint_prefix(job_id)) == []
    assert not worker_runtime.tf.busy
    gc.collect()
    kept = [
        o
        for o in gc.get_objects()
        if type(o).__name__ == "DreamBoothTrainer" and id(o) not in earlier
    ]
    assert not kept, "the cancelled training's trainer (its UNet copy) is still in memory"
    assert not await job_queue.cancel(job_id)  # already over
    follow = new_id("after-cancel")
    assert await job_queue.enqueue(generate_spec(follow))
    assert isinstance(await job_queue.result(follow, timeout=60), GenerateResult)


@pytest.mark.slow  # a traced training step: 30-80 s here
async def test_generation_runs_between_training_steps(
    worker_group: Any, job_queue: JobQueue, worker_store: BlobStore
) -> None:
    """With both queues in one process, /imagine does not wait for a training to end."""
    train_id = new_id("long")
    assert await job_queue.enqueue(train_spec(worker_store, train_id, steps=5000))
    while (p := await job_queue.progress(train_id)) is None or p.step < 2 or p.stage != "training":
        await asyncio.sleep(0.02)
    gen_id = new_id("between")
    assert await job_queue.enqueue(generate_spec(gen_id))
    assert isinstance(await job_queue.result(gen_id, timeout=60), GenerateResult)
    # The training is still going: it has neither finished nor stored a result.
    progress = await job_queue.progress(train_id)
    assert progress is not None and progress.stage == "training"
    assert (await job_queue.status(train_id)).state not in (JobState.COMPLETE, JobState.FAILED)
    assert await job_queue.cancel(train_id)
    with pytest.raises(JobCancelled):
        await job_queue.result(train_id, timeout=60)


async def test_a_permanent_error_fails_at_once_without_retrying(
    worker_group: Any, job_queue: JobQueue, worker_store: BlobStore, worker_runtime: Any
) -> None:
    job_id = new_id("nophotos")
    spec = train_spec(worker_store, job_id, steps=3)
    worker_store.delete_prefix(keys.photos_prefix(job_id))
    before = worker_runtime.jobs_run.get(TRAIN_FUNCTION, 0)
    assert await job_queue.enqueue(spec)
    with pytest.raises(JobFailed) as failed:
        await job_queue.result(job_id, timeout=60)
    assert failed.value.code == "photos_missing" and failed.value.permanent
    assert "no longer in storage" in failed.value.message
    assert worker_runtime.jobs_run[TRAIN_FUNCTION] == before + 1
    gen_id = new_id("nomodel")
    assert await job_queue.enqueue(generate_spec(gen_id, model_id="never-trained"))
    with pytest.raises(JobFailed, match="was not found") as unknown:
        await job_queue.result(gen_id, timeout=60)
    assert unknown.value.code == "unknown_model"
    assert (await job_queue.status(gen_id)).state == JobState.FAILED


async def test_a_transient_error_is_retried_then_succeeds(
    worker_group: Any, job_queue: JobQueue, worker_store: BlobStore, worker_runtime: Any
) -> None:
    """A model file that cannot be read (an OSError, as from a storage outage) is retried after
    the back-off; once readable, the job succeeds on its next run."""
    model_id = new_id("flaky")
    broken = keys.model(model_id, "model.json")
    worker_store.fs.makedirs(worker_store._path(broken), exist_ok=True)  # reading it: OSError
    before = worker_runtime.jobs_run.get(GENERATE_FUNCTION, 0)
    job_id = new_id("retry")
    assert await job_queue.enqueue(generate_spec(job_id, model_id=model_id))
    deadline = time.monotonic() + 60
    while (p := await job_queue.progress(job_id)) is None or "Retrying" not in p.message:
        assert time.monotonic() < deadline, p
        await asyncio.sleep(0.01)
    worker_store.fs.rm(worker_store._path(broken), recursive=True)
    upload_lora_model(worker_store, worker_runtime.base, model_id, seed=1)
    assert isinstance(await job_queue.result(job_id, timeout=60), GenerateResult)
    assert worker_runtime.jobs_run[GENERATE_FUNCTION] == before + 2


async def test_a_transient_error_gives_up_after_the_configured_tries(
    worker_group: Any, job_queue: JobQueue, worker_store: BlobStore, worker_runtime: Any
) -> None:
    model_id = new_id("down")
    worker_store.fs.makedirs(worker_store._path(keys.model(model_id, "model.json")))
    before = worker_runtime.jobs_run.get(GENERATE_FUNCTION, 0)
    job_id = new_id("giveup")
    assert await job_queue.enqueue(generate_spec(job_id, model_id=model_id))
    with pytest.raises(JobFailed, match="temporary problem") as failed:
        await job_queue.result(job_id, timeout=60)
    assert not failed.value.permanent
    assert worker_runtime.jobs_run[GENERATE_FUNCTION] == before + worker_runtime.config.max_tries


async def test_job_timeouts_come_from_the_settings(
    worker_group: Any, job_queue: JobQueue, queue_url: str, worker_runtime: Any
) -> None:
    """TRAIN_TIMEOUT_S / GENERATE_TIMEOUT_S reach arq's functions and the job's own limit: a
    generation over its limit is stopped and failed (not retried)."""
    from trainer.config import TrainerSettings, WorkerConfig
    from trainer.worker import build_worker
    from trainer.worker.process import _TIMEOUT_GRACE_S

    settings = TrainerSettings(train_timeout_s=5400, generate_timeout_s=0.02)
    config = WorkerConfig.from_settings(settings)
    original = worker_runtime.config
    worker_runtime.config = dataclasses.replace(
        original,
        train_timeout_s=config.train_timeout_s,
        generate_timeout_s=config.generate_timeout_s,
    )
    try:
        for queue, function, limit in (
            ("train", TRAIN_FUNCTION, 5400),
            ("generate", GENERATE_FUNCTION, 0.02),
        ):
            arq_worker = build_worker(queue_url, queue, runtime=worker_runtime)
            assert arq_worker.functions[function].timeout_s == limit + _TIMEOUT_GRACE_S
        before = worker_runtime.jobs_run.get(GENERATE_FUNCTION, 0)
        job_id = new_id("slow")
        spec = GenerateSpec(job_id, "a photo of sks dog", steps=40, n_images=2, seeds=[1, 2])
        assert await job_queue.enqueue(spec)
        with pytest.raises(JobFailed, match="longer than the 0 s allowed") as failed:
            await job_queue.result(job_id, timeout=60)
    finally:
        worker_runtime.config = original
    assert failed.value.code == "timeout"
    assert worker_runtime.jobs_run[GENERATE_FUNCTION] == before + 1
    assert not worker_runtime.store.exists(result_key(job_id))
    assert worker_runtime.store.list(keys.outputs_prefix(job_id)) == []
    follow = new_id("after-timeout")  # the worker goes on as usual
    assert await job_queue.enqueue(generate_spec(follow))
    assert isinstance(await job_queue.result(follow, timeout=60), GenerateResult)
