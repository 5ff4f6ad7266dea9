"""A job's life after it was queued: the member's view of their jobs, cancelling, and (for
``bot.delivery``) turning results into rows with the quota committed or refunded exactly once."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from bot.errors import AccessDenied, Conflict, NotFound
from bot.queue import JobStatus as QueueStatus
from bot.service.context import Actor, Backend
from storage.records import Job, JobStatus

__all__ = ["ActiveJob", "JobLifecycle"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ActiveJob:
    """A queued or running job with what the queue says of it now."""

    job: Job
    status: QueueStatus


class JobLifecycle:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    async def visible(self, actor: Actor, job_id: str) -> Job:
        """A job the actor may act on: their own, or any in their guild for an admin."""
        job = await self.backend.repos.jobs.get(job_id)
        if job is None or job.guild_id != actor.guild_id:
            raise NotFound("There is no such job here. `/queue` lists yours.")
        if job.owner_id != actor.user_id and not actor.is_admin:
            raise AccessDenied(
                "Only the member who started this job, or a server admin, can do that."
            )
        return job

    async def active(self, actor: Actor, *, everyone: bool = False) -> list[ActiveJob]:
        """The actor's queued and running jobs here (``everyone``: the whole guild, admins only),
        oldest first, each with its queue position and last progress."""
        await self.backend.guard(actor)
        if everyone:
            self.backend.require_admin(actor)
            jobs = [
                j for j in await self.backend.repos.jobs.active() if j.guild_id == actor.guild_id
            ]
        else:
            jobs = await self.backend.repos.jobs.for_owner(
                actor.user_id, active_only=True, guild_id=actor.guild_id
            )
        return [ActiveJob(job, await self.backend.queue.status(job.id)) for job in jobs]

    async def cancel(self, actor: Actor, job_id: str) -> Job:
        """Cancel a queued or running job (owner or admin): it leaves the queue, or its worker
        stops within one step; its reserved quota is refunded."""
        job = await self.visible(actor, job_id)
        if job.status.finished:
            raise Conflict(f"That job has already {_ended(job.status)}.")
        await self.backend.queue.cancel(job.id)
        cancelled = await self.backend.repos.jobs.transition(job.id, JobStatus.CANCELLED)
        await self.refund(job.id)
        if actor.user_id != job.owner_id:
            await self.backend.repos.audit.log(
                actor.guild_id, actor.user_id, "job.cancel", job.id, {"owner": job.owner_id}
            )
        return cancelled

    async def refund(self, job_id: str) -> int:
        """Give back every reservation of a job that is still held; returns how many."""
        quotas = self.backend.repos.quotas
        return sum([await quotas.refund(r.id) for r in await quotas.for_job(job_id)])

    async def commit(self, job_id: str) -> int:
        """Spend every reservation of a job that is still held; returns how many."""
        quotas = self.backend.repos.quotas
        return sum([await quotas.commit(r.id) for r in await quotas.for_job(job_id)])


def _ended(status: JobStatus) -> str:
    return {
        JobStatus.SUCCEEDED: "finished",
        JobStatus.FAILED: "failed",
        JobStatus.CANCELLED: "been cancelled",
    }.get(status, str(status))
