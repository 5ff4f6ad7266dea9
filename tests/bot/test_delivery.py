"""bot.delivery over real SQLite, a real Redis and a real blob store, with a real arq worker
playing the GPU worker's part: small stand-in job functions, registered under the real function
names on the real queues, that write their outputs and result the way trainer/worker/bodies.py
does (no TensorFlow). The notifier records what a member would be told; the Discord rendering
is tested through SimCord elsewhere. Time is an injected clock, never the wall clock."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from bot.delivery import (
    BACKOFF_MAX_S,
    BACKOFF_S,
    DELIVERY_TRIES,
    LOST_AFTER_S,
    PROGRESS_EVERY_S,
)
from bot.queue import JobState
from bot.service import Actor, JobLifecycle
from bot.service.lifecycle import CANCELLED_TEXT, LOST_TEXT
from storage.jobs import (
    GENERATE_QUEUE,
    SAMPLE_SEEDS,
    TRAIN_QUEUE,
    JobFailed,
    Progress,
    progress_key,
    spec_key,
)
from storage.records import Job, JobKind, JobStatus, LedgerState, QuotaKind, TrainMethod
from tests.bot.delivery_world import (
    GUILD,
    OWNER,
    World,
    generate_job,
    ledger,
    png,
    row,
    train_job,
)

pytestmark = pytest.mark.queue

# -- the tests -----------------------------------------------------------------------------


async def test_a_training_runs_succeeds_and_is_delivered_once_with_its_model(w: World) -> None:
    await train_job(w, "t1")
    delivery = w.delivery()
    await delivery.run()  # reconcile, then the first pass
    [waiting] = w.notifier.progress_for("t1")
    assert (waiting.state, waiting.position) == (JobState.QUEUED, 0)

    w.book.gates["t1"] = gate = asyncio.Event()
    worker = asyncio.create_task(w.worker(TRAIN_QUEUE)())
    await w.until_running("t1")
    w.clock.now += PROGRESS_EVERY_S
    await delivery.tick()
    job = await row(w, "t1")
    assert (job.status, job.attempts) == (JobStatus.RUNNING, 1) and job.started_at is not None
    running = w.notifier.progress_for("t1")[-1]
    assert running.state is JobState.RUNNING and running.progress is not None
    assert (running.progress.stage, running.progress.step, running.progress.total) == (
        "training",
        1,
        10,
    )

    gate.set()
    await asyncio.wait_for(worker, timeout=30)
    for _ in range(3):  # later passes find nothing more to do
        w.clock.now += PROGRESS_EVERY_S
        await delivery.tick()

    job = await row(w, "t1")
    assert job.status is JobStatus.SUCCEEDED and job.delivered_at is not None
    assert job.result is not None and job.result["model_id"] == "model-t1"
    [done] = w.notifier.finished_for("t1")
    assert done.error is None and not done.refunded
    model = await w.repos.models.get("model-t1")
    assert model is not None and done.model == model
    assert (model.owner_id, model.guild_id, model.name) == (OWNER, GUILD, "rex")
    assert (model.class_name, model.identifier, model.method) == ("dog", "sks", TrainMethod.LORA)
    assert (model.preset, model.blob_key) == ("tiny", "models/model-t1/lora.npz")
    assert model.hub_url == "https://huggingface.co/dreambot/model-t1" and model.is_default
    assert w.backend.store.get(model.blob_key) == b"weights of model-t1"
    assert done.images == tuple(png(i * 50) for i in range(4))
    assert done.seeds == SAMPLE_SEEDS
    assert await ledger(w, "t1") == [LedgerState.COMMITTED]
    used, _ = await w.repos.quotas.usage(OWNER, GUILD, QuotaKind.TRAIN, 5)
    assert used == 1
    assert len(w.notifier.finished_seen) == 1 and w.book.runs == ["t1"]


async def test_a_finished_generation_shows_its_images_with_their_seeds(w: World) -> None:
    await generate_job(w, "g1", seeds=[40, 41])
    await w.work(GENERATE_QUEUE)
    delivery = w.delivery()
    await delivery.run()
    await delivery.tick()
    [done] = w.notifier.finished_for("g1")
    assert done.images == (png(40), png(41)) and done.seeds == (40, 41) and done.model is None
    job = await row(w, "g1")
    # it finished between two passes: its row still went through running, once
    assert (job.status, job.attempts) == (JobStatus.SUCCEEDED, 1)
    assert await ledger(w, "g1") == [LedgerState.COMMITTED]


async def test_a_failure_is_refunded_once_and_told_in_plain_words(w: World) -> None:
    await generate_job(w, "g1")
    why = "The model file of this job is damaged, so it cannot draw. Train it again."
    w.book.failures["g1"] = JobFailed(why, "bad_model")
    await w.work(GENERATE_QUEUE)
    delivery = w.delivery()
    await delivery.run()
    await delivery.tick()
    [done] = w.notifier.finished_for("g1")
    assert (done.error, done.refunded, done.images, done.model) == (why, True, (), None)
    job = await row(w, "g1")
    assert (job.status, job.error) == (JobStatus.FAILED, why) and job.delivered_at is not None
    assert await ledger(w, "g1") == [LedgerState.REFUNDED]
    used, _ = await w.repos.quotas.usage(OWNER, GUILD, QuotaKind.IMAGES, 50)
    assert used == 0


async def test_an_unexpected_worker_error_is_a_failure_with_a_refund(w: World) -> None:
    await train_job(w, "t1")
    w.book.failures["t1"] = RuntimeError("CUDA error: an illegal memory access")
    await w.work(TRAIN_QUEUE)
    await w.delivery().run()
    [done] = w.notifier.finished_for("t1")
    assert done.refunded and done.error == "The job failed on the worker. Please try again later."
    assert await w.repos.models.get("model-t1") is None
    assert await ledger(w, "t1") == [LedgerState.REFUNDED]


async def test_a_job_cancelled_by_its_member_is_delivered_once(w: World) -> None:
    await generate_job(w, "g1")
    delivery = w.delivery()
    await delivery.run()
    await JobLifecycle(w.backend).cancel(Actor(OWNER, GUILD), "g1")
    for _ in range(3):
        w.clock.now += PROGRESS_EVERY_S
        await delivery.tick()
    [done] = w.notifier.finished_for("g1")
    assert (done.error, done.refunded, done.job.status) == (
        CANCELLED_TEXT,
        True,
        JobStatus.CANCELLED,
    )
    assert (await row(w, "g1")).delivered_at is not None
    assert await ledger(w, "g1") == [LedgerState.REFUNDED]
    assert w.book.runs == []


async def test_a_refusing_notifier_is_retried_later_without_duplicates(w: World) -> None:
    await generate_job(w, "a")
    await generate_job(w, "b")
    await generate_job(w, "c")
    await w.work(GENERATE_QUEUE)
    w.notifier.refuse_finished["a"] = 2
    delivery = w.delivery()
    await delivery.run()
    # the others arrive although "a" could not be delivered
    assert sorted(d.job.id for d in w.notifier.finished_seen) == ["b", "c"]
    job = await row(w, "a")
    assert job.status is JobStatus.SUCCEEDED and job.delivered_at is None
    assert await ledger(w, "a") == [LedgerState.COMMITTED]

    await delivery.tick()  # backing off: not tried again at once
    assert w.notifier.attempts["a"] == 1
    w.clock.now += BACKOFF_S
    await delivery.tick()
    assert w.notifier.attempts["a"] == 2  # refused again: it now waits twice as long
    w.clock.now += BACKOFF_S
    await delivery.tick()
    assert w.notifier.attempts["a"] == 2
    w.clock.now += BACKOFF_S
    await delivery.tick()
    await delivery.tick()
    assert w.notifier.attempts["a"] == 3
    assert len(w.notifier.finished_for("a")) == 1
    assert (await row(w, "a")).delivered_at is not None
    assert [await ledger(w, j) for j in "abc"] == [[LedgerState.COMMITTED]] * 3
    assert {j: w.notifier.attempts[j] for j in "bc"} == {"b": 1, "c": 1}


async def test_a_member_who_cannot_be_reached_is_given_up_on_after_the_last_try(
    w: World,
) -> None:
    await generate_job(w, "a")
    await w.work(GENERATE_QUEUE)
    w.notifier.refuse_finished["a"] = 10 * DELIVERY_TRIES  # channel gone, DMs closed
    delivery = w.delivery()
    await delivery.run()
    for _ in range(3 * DELIVERY_TRIES):
        w.clock.now += BACKOFF_MAX_S
        await delivery.tick()
    assert w.notifier.attempts["a"] == DELIVERY_TRIES  # then no more
    job = await row(w, "a")
    assert job.delivered_at is not None and job.status is JobStatus.SUCCEEDED


async def test_a_refused_progress_update_does_not_hold_up_other_jobs(w: World) -> None:
    await generate_job(w, "a")
    await generate_job(w, "b")
    w.notifier.refuse_progress.add("a")
    delivery = w.delivery()
    await delivery.run()
    assert w.notifier.progress_for("a") == [] and len(w.notifier.progress_for("b")) == 1
    w.notifier.refuse_progress.clear()
    await delivery.tick()
    assert w.notifier.progress_for("a") == []  # backing off
    w.clock.now += BACKOFF_S
    await delivery.tick()
    [shown] = w.notifier.progress_for("a")
    assert (shown.state, shown.position) == (JobState.QUEUED, 0)
    assert len(w.notifier.progress_for("b")) == 1  # b did not change: nothing resent


async def test_progress_is_sent_on_change_at_most_every_few_seconds(w: World) -> None:
    await train_job(w, "t1")
    delivery = w.delivery()

    async def step(n: int) -> None:
        await w.queue.redis.set(
            progress_key("t1"), Progress("t1", "queued", step=n, message=f"waiting {n}").to_json()
        )

    async def at(now: float) -> int:
        w.clock.now = now
        await delivery.tick()
        return len(w.notifier.progress_for("t1"))

    await delivery.run()
    assert len(w.notifier.progress_for("t1")) == 1
    assert await at(1.0) == 1  # nothing changed
    await step(1)
    assert await at(1.0) == 1  # changed, but the last update is too recent
    assert await at(PROGRESS_EVERY_S - 0.01) == 1
    assert await at(PROGRESS_EVERY_S) == 2
    assert w.notifier.progress_for("t1")[-1].progress.message == "waiting 1"  # type: ignore[union-attr]
    await step(2)
    await step(3)
    assert await at(PROGRESS_EVERY_S + 1) == 2
    assert await at(2 * PROGRESS_EVERY_S) == 3
    assert w.notifier.progress_for("t1")[-1].progress.message == "waiting 3"  # type: ignore[union-attr]
    assert await at(100.0) == 3  # quiet while nothing changes


async def test_a_restart_after_the_quota_was_spent_delivers_once_and_charges_once(
    w: World, tmp_path: Path
) -> None:
    await train_job(w, "t1")
    await w.work(TRAIN_QUEUE)
    # The first bot turned the result into rows and spent the quota, then died before telling
    # the member.
    job = await JobLifecycle(w.backend).finish(await row(w, "t1"), await w.queue.status("t1"))
    assert job.status is JobStatus.SUCCEEDED and job.delivered_at is None
    assert await ledger(w, "t1") == [LedgerState.COMMITTED]

    again = w.delivery(await w.reopen(tmp_path))
    await again.run()
    await again.tick()
    [done] = w.notifier.finished_for("t1")
    assert done.model is not None and done.model.id == "model-t1" and len(done.images) == 4
    assert len(await w.repos.models.for_owner(OWNER)) == 1
    assert await ledger(w, "t1") == [LedgerState.COMMITTED]
    used, _ = await w.repos.quotas.usage(OWNER, GUILD, QuotaKind.TRAIN, 5)
    assert used == 1
    assert w.book.runs == ["t1"]


@pytest.mark.fault
async def test_a_restart_after_the_model_row_was_added_adds_it_once(
    w: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await train_job(w, "t1")
    await w.work(TRAIN_QUEUE)
    transition = w.repos.jobs.transition

    async def dies_before_success(job_id: str, status: JobStatus, **kw: Any) -> Job:
        if status is JobStatus.SUCCEEDED:
            raise RuntimeError("the bot was killed here")
        return await transition(job_id, status, **kw)

    monkeypatch.setattr(w.repos.jobs, "transition", dies_before_success)
    await w.delivery().run()
    assert await w.repos.models.get("model-t1") is not None
    assert (await row(w, "t1")).status is JobStatus.RUNNING
    assert w.notifier.finished_seen == [] and await ledger(w, "t1") == [LedgerState.RESERVED]

    again = w.delivery(await w.reopen(tmp_path))
    await again.run()
    [done] = w.notifier.finished_for("t1")
    assert done.model is not None and done.model.name == "rex"
    assert [m.id for m in await w.repos.models.for_owner(OWNER)] == ["model-t1"]
    assert (await row(w, "t1")).status is JobStatus.SUCCEEDED
    assert await ledger(w, "t1") == [LedgerState.COMMITTED]


async def test_a_model_name_taken_meanwhile_gets_a_number(w: World) -> None:
    await train_job(w, "t1", name="rex")
    await train_job(w, "t2", name="rex")
    await w.work(TRAIN_QUEUE)
    await w.delivery().run()
    names = sorted(m.name for m in await w.repos.models.for_owner(OWNER))
    assert names == ["rex", "rex-2"]


async def test_reconcile_requeues_jobs_redis_lost_and_fails_one_without_its_spec(
    w: World,
) -> None:
    await train_job(w, "t1")
    await w.repos.jobs.transition("t1", JobStatus.RUNNING)  # a worker had it when Redis died
    await generate_job(w, "g1")
    await w.queue.redis.flushdb()  # Redis restarted without persistence
    w.backend.store.delete(spec_key("g1"))

    delivery = w.delivery()
    await delivery.reconcile()
    assert await w.queue.redis.zscore(TRAIN_QUEUE, "t1") is not None
    assert (await w.queue.status("t1")).state is JobState.QUEUED
    assert (await row(w, "t1")).status is JobStatus.QUEUED
    assert await ledger(w, "t1") == [LedgerState.RESERVED]
    [lost] = w.notifier.finished_for("g1")
    assert (lost.error, lost.refunded) == (LOST_TEXT, True)
    assert (await row(w, "g1")).status is JobStatus.FAILED
    assert await ledger(w, "g1") == [LedgerState.REFUNDED]
    assert await w.queue.redis.zscore(GENERATE_QUEUE, "g1") is None

    await w.work(TRAIN_QUEUE)  # the job runs again from its spec, and is charged once
    await delivery.tick()
    assert [d.job.id for d in w.notifier.finished_seen] == ["g1", "t1"]
    assert (await row(w, "t1")).status is JobStatus.SUCCEEDED
    assert await ledger(w, "t1") == [LedgerState.COMMITTED]


async def test_reconcile_delivers_a_stored_result_instead_of_running_it_again(w: World) -> None:
    await generate_job(w, "g1", seeds=[5, 6])
    await w.work(GENERATE_QUEUE)
    await w.queue.redis.flushdb()  # arq forgot the job; its result is still in the blob store
    await w.delivery().run()
    [done] = w.notifier.finished_for("g1")
    assert done.seeds == (5, 6) and done.images == (png(5), png(6))
    assert await w.queue.redis.zcard(GENERATE_QUEUE) == 0 and w.book.runs == ["g1"]
    assert await ledger(w, "g1") == [LedgerState.COMMITTED]


async def test_a_job_lost_while_the_bot_runs_is_queued_again_after_a_while(w: World) -> None:
    await train_job(w, "t1")
    delivery = w.delivery()
    await delivery.run()
    await w.queue.redis.flushdb()
    w.clock.now = 1.0
    await delivery.tick()  # missing for a moment: it may be being queued right now
    assert await w.queue.redis.zscore(TRAIN_QUEUE, "t1") is None
    w.clock.now = 1.0 + LOST_AFTER_S
    await delivery.tick()
    assert await w.queue.redis.zscore(TRAIN_QUEUE, "t1") is not None
    assert (await row(w, "t1")).status is JobStatus.QUEUED
    assert w.notifier.finished_seen == []


async def test_reconcile_leaves_jobs_started_after_it_alone(w: World) -> None:
    delivery = w.delivery()
    # A /train that wrote its row but has not queued it yet when the bot reconciles.
    await w.repos.jobs.create("late", JobKind.GENERATE, OWNER, guild_id=GUILD)
    await delivery.reconcile()
    assert (await row(w, "late")).status is JobStatus.QUEUED
    assert w.notifier.finished_seen == []
