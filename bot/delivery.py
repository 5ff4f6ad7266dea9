"""Delivery: a background task follows every active job and tells its member how it goes.

``Delivery`` polls SQLite's active jobs and Redis, moves each job's row (queued → running →
succeeded | failed | cancelled) through ``bot.service.JobLifecycle``, which also commits or
refunds its quota exactly once, and calls the front end's :class:`Notifier`: ``progress`` at most
every ``PROGRESS_EVERY_S`` per job and only when something changed, ``finished`` once per finished
job (then the row is marked delivered). A notifier that fails (a rate limit, an outage, a channel
gone) is tried again later for that job only, waiting longer after each failure.

At startup ``reconcile`` puts SQLite and Redis back in step: finished but undelivered jobs are
delivered, and jobs Redis lost are queued again from their spec (or failed and refunded when the
spec is gone). Nothing is charged twice or delivered twice, wherever the bot stopped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from bot.queue import JobState
from bot.queue import JobStatus as QueueStatus
from bot.service import Backend, DreamService, JobLifecycle
from bot.service.lifecycle import CANCELLED_TEXT, FAILED_TEXT
from storage.errors import StorageError
from storage.jobs import SAMPLE_SEEDS, GenerateResult, TrainResult
from storage.records import Job, JobKind, JobStatus, ModelRecord

__all__ = [
    "BACKOFF_MAX_S",
    "BACKOFF_S",
    "DELIVERY_EVERY_S",
    "LOST_AFTER_S",
    "PROGRESS_EVERY_S",
    "Delivery",
    "Finished",
    "Notifier",
]

log = logging.getLogger(__name__)

# Edit a job's progress message at most this often (Discord allows about 5 edits per 5 s per
# channel; one member's job must not use them all).
PROGRESS_EVERY_S = 3.0
# How often the front end runs a delivery pass.
DELIVERY_EVERY_S = 1.5
# A job whose notifier failed waits this long before the next try, doubled after each failure
# up to the maximum (a rate limit's own wait is respected when longer).
BACKOFF_S = 5.0
BACKOFF_MAX_S = 300.0
# Tries to tell the member of a finished job before giving up (the channel gone and their DMs
# closed, or a longer outage): about 30 minutes of backing off. The row keeps its result.
DELIVERY_TRIES = 12
# An active job missing from Redis for this long while the bot runs is taken as lost (Redis
# restarted without its data) and recovered; shorter gaps are a job being written and queued.
LOST_AFTER_S = 60.0


@dataclass(frozen=True, slots=True)
class Finished:
    """A finished job as its member should hear of it.

    ``job`` is the row after its final move; ``model`` the model a training made; ``images``
    the PNGs to show (a training's samples, or the generated images) with their ``seeds``;
    ``error`` the plain-words reason of a failure or cancel; ``refunded`` whether its quota was
    given back.
    """

    job: Job
    model: ModelRecord | None = None
    images: tuple[bytes, ...] = ()
    seeds: tuple[int, ...] = ()
    error: str | None = None
    refunded: bool = False


class Notifier(Protocol):
    """What a front end does with news of a job (Discord: edit the progress message, post
    results, fall back to a DM when the channel is gone)."""

    async def progress(self, job: Job, status: QueueStatus) -> None:
        """Show where a queued or running job stands (position, stage, step/total, ETA)."""
        ...

    async def finished(self, done: Finished) -> None:
        """Tell the member a job finished; raising means "not delivered, try again later"."""
        ...


def _view(status: QueueStatus) -> tuple[object, ...]:
    """What a progress message shows of a status (its timestamps aside)."""
    p = status.progress
    shown = None if p is None else (p.stage, p.step, p.total, p.message)
    return (status.state, status.position, shown)


@dataclass
class _Watch:
    """What delivery remembers of one job between passes (memory only: a restart resends)."""

    shown: tuple[object, ...] | None = None
    shown_at: float | None = None
    failures: int = 0
    retry_at: float = 0.0
    missing_since: float | None = None


class Delivery:
    """Follows active jobs and delivers finished ones; one :meth:`run` per loop iteration.

    ``clock`` gives monotonic seconds (the event loop's clock by default, which SimCord's
    virtual time drives); tests inject their own.
    """

    def __init__(
        self,
        service: DreamService | Backend,
        notifier: Notifier,
        *,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if isinstance(service, DreamService):
            self.backend, self.lifecycle = service.backend, service.jobs
        else:
            self.backend, self.lifecycle = service, JobLifecycle(service)
        self.notifier = notifier
        self.clock = clock or (lambda: asyncio.get_running_loop().time())
        self.reconciled = False
        self._started = self.backend.clock()
        self._watches: dict[str, _Watch] = {}

    async def run(self) -> None:
        """One loop iteration: reconcile once, then a pass. An outage of SQLite or Redis is
        logged and the next iteration tries again (the loop itself must keep running)."""
        try:
            if not self.reconciled:
                await self.reconcile()
                self.reconciled = True
            await self.tick()
        except Exception:
            log.exception("delivery pass failed; the next one tries again")

    async def reconcile(self) -> None:
        """At startup: recover the jobs Redis lost while the bot was down, and deliver the
        finished jobs the bot did not deliver before it stopped."""
        now = self.clock()
        for job in await self.backend.repos.jobs.active():
            if job.created_at >= self._started:
                continue  # started since this bot did: its request may still be being queued
            watch = self._watches.setdefault(job.id, _Watch())
            await self._guarded(job, watch, now, self._recover_if_lost)
        await self._deliver_undelivered(now)

    async def tick(self) -> None:
        """One pass over every active job, then over finished jobs still to deliver."""
        now = self.clock()
        seen: set[str] = set()
        for job in await self.backend.repos.jobs.active():
            seen.add(job.id)
            watch = self._watches.setdefault(job.id, _Watch())
            if now >= watch.retry_at:
                await self._guarded(job, watch, now, self._follow)
        seen.update(await self._deliver_undelivered(now))
        for job_id in set(self._watches) - seen:
            del self._watches[job_id]

    async def _deliver_undelivered(self, now: float) -> list[str]:
        pending = await self.backend.repos.jobs.undelivered()
        for job in pending:
            watch = self._watches.setdefault(job.id, _Watch())
            if now >= watch.retry_at:
                await self._guarded(job, watch, now, self._deliver)
        return [job.id for job in pending]

    async def _guarded(
        self,
        job: Job,
        watch: _Watch,
        now: float,
        step: Callable[[Job, _Watch, float], Awaitable[None]],
    ) -> None:
        """Run one job's step; its failure backs off that job only."""
        try:
            await step(job, watch, now)
        except Exception as exc:
            delay = min(BACKOFF_MAX_S, BACKOFF_S * 2**watch.failures)
            delay = max(delay, float(getattr(exc, "retry_after", 0) or 0))
            watch.failures += 1
            watch.retry_at = now + delay
            if step == self._deliver and watch.failures >= DELIVERY_TRIES:
                log.error(
                    "job %s: could not tell its owner after %d tries (%s); giving up",
                    job.id,
                    watch.failures,
                    exc,
                )
                try:
                    await self.backend.repos.jobs.mark_delivered(job.id)
                except Exception:
                    log.exception("job %s: could not mark it given up", job.id)
                self._watches.pop(job.id, None)
                return
            log.warning(
                "job %s: delivery failed (%s); trying again in %.0f s",
                job.id,
                exc,
                delay,
                exc_info=exc,
            )
        else:
            watch.failures = 0

    async def _recover_if_lost(self, job: Job, watch: _Watch, now: float) -> None:
        status = await self.backend.queue.status(job.id)
        if status.state is JobState.NOT_FOUND:
            job = await self.lifecycle.recover(job, status)
            if job.status.finished:
                await self._deliver(job, watch, now)

    async def _follow(self, job: Job, watch: _Watch, now: float) -> None:
        status = await self.backend.queue.status(job.id)
        if status.state in (JobState.COMPLETE, JobState.FAILED, JobState.CANCELLED):
            job = await self.lifecycle.finish(job, status)
            if job.status.finished:
                await self._deliver(job, watch, now)
            return
        if status.state is JobState.NOT_FOUND:
            if watch.missing_since is None:
                watch.missing_since = now
            if now - watch.missing_since >= LOST_AFTER_S:
                watch.missing_since = None
                await self._recover_if_lost(job, watch, now)
            return
        watch.missing_since = None
        if status.state is JobState.RUNNING:
            job = await self.lifecycle.started(job)
        else:
            job = await self.lifecycle.requeued(job)
        if job.status.finished:  # cancelled meanwhile: the next pass delivers it
            return
        view = _view(status)
        if view == watch.shown:
            return
        if watch.shown_at is not None and now - watch.shown_at < PROGRESS_EVERY_S:
            return
        await self.notifier.progress(job, status)
        watch.shown, watch.shown_at = view, now

    async def _deliver(self, job: Job, watch: _Watch, now: float) -> None:
        """Tell the member of a finished job once: settle, notify, then mark it delivered."""
        if job.delivered_at is not None:
            return
        job = await self.lifecycle.settle(job)
        await self.notifier.finished(await self._news(job))
        await self.backend.repos.jobs.mark_delivered(job.id)
        self._watches.pop(job.id, None)

    async def _news(self, job: Job) -> Finished:
        """What the member hears of a finished job: its model and images, or why it ended."""
        if job.status is not JobStatus.SUCCEEDED:
            default = CANCELLED_TEXT if job.status is JobStatus.CANCELLED else FAILED_TEXT
            return Finished(
                job, error=job.error or default, refunded=await self.lifecycle.refunded(job.id)
            )
        if job.result is None:
            return Finished(job)
        if job.kind is JobKind.TRAIN:
            trained = TrainResult.from_dict(job.result)
            model = await self.backend.repos.models.get(trained.model_id)
            keys, seeds = trained.sample_keys, list(SAMPLE_SEEDS)
        else:
            drawn = GenerateResult.from_dict(job.result)
            model, keys, seeds = None, drawn.image_keys, drawn.seeds
        images, kept = await self._images(keys, seeds)
        return Finished(job, model=model, images=images, seeds=kept)

    async def _images(
        self, keys: Sequence[str], seeds: Sequence[int]
    ) -> tuple[tuple[bytes, ...], tuple[int, ...]]:
        """The images that are still stored, with their seeds (one gone is left out)."""
        images: list[bytes] = []
        kept: list[int] = []
        for index, key in enumerate(keys):
            try:
                images.append(await self.backend.blob(self.backend.store.get, key))
            except StorageError:
                log.warning("image %s is gone; delivering the others", key)
                continue
            if index < len(seeds):
                kept.append(seeds[index])
        return tuple(images), tuple(kept)
