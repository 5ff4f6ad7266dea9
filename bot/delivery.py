"""Delivery: a background task follows every active job and tells its member how it goes.

CONTRACT (the implementation lands with the delivery work): ``Delivery`` polls SQLite's active
jobs and Redis, moves each job's row (queued → running → succeeded | failed | cancelled) through
``bot.service.JobLifecycle``, commits or refunds its quota exactly once, and calls the front
end's :class:`Notifier`: ``progress`` at most every ``PROGRESS_EVERY_S`` per job, ``finished``
once per finished job (then the row is marked delivered). At startup it reconciles: finished
but undelivered jobs are delivered, jobs missing from Redis are re-enqueued from their spec.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from bot.queue import JobStatus as QueueStatus
from storage.records import Job, ModelRecord

__all__ = ["PROGRESS_EVERY_S", "Finished", "Notifier"]

# Edit a job's progress message at most this often (Discord allows about 5 edits per 5 s per
# channel; one member's job must not use them all).
PROGRESS_EVERY_S = 3.0


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
