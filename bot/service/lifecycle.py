"""A job's life after it was queued: the member's view of their jobs, cancelling, and (for
``bot.delivery``) turning results into rows with the quota committed or refunded exactly once.

Every move here is safe to repeat: the bot may stop between any two writes, and the next
delivery pass (or the reconciliation at startup) runs the same move again. A row that already
moved stays as it is, a model row is added once (looked up by its id first), and each quota
reservation settles once (the ledger refuses a second commit or refund).
"""

from __future__ import annotations

import json
import logging
import posixpath
from dataclasses import dataclass
from typing import Any

from bot.errors import AccessDenied, Conflict, NotFound
from bot.queue import JobState
from bot.queue import JobStatus as QueueStatus
from bot.service.context import Actor, Backend
from storage.blobs import MODEL_METADATA_FILE
from storage.errors import StorageError, UserFacingError
from storage.jobs import (
    GenerateResult,
    GenerateSpec,
    Stage,
    TrainResult,
    TrainSpec,
    spec_key,
)
from storage.records import Job, JobKind, JobStatus, LedgerState, ModelRecord, TrainMethod
from storage.rules import DEFAULT_METHOD

__all__ = ["CANCELLED_TEXT", "FAILED_TEXT", "LOST_TEXT", "ActiveJob", "JobLifecycle"]

log = logging.getLogger(__name__)

Result = TrainResult | GenerateResult
Spec = TrainSpec | GenerateSpec

# What a member reads when a job ended without its own words for why.
CANCELLED_TEXT = "This job was cancelled."
FAILED_TEXT = "This job failed on the worker."
LOST_TEXT = (
    "This job was lost when the job queue restarted, and its request could not be found to "
    "start it again. Please start it again."
)


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

    # -- delivery: results become rows ----------------------------------------------------

    async def started(self, job: Job) -> Job:
        """A worker took the job: its row moves from queued to running."""
        if job.status is not JobStatus.QUEUED:
            return job
        return await self._move(job, JobStatus.RUNNING)

    async def requeued(self, job: Job) -> Job:
        """The job waits again (its worker stopped and the queue took it back, or the bot queued
        it again): its row moves from running back to queued."""
        if job.status is not JobStatus.RUNNING:
            return job
        return await self._move(job, JobStatus.QUEUED)

    async def finish(self, job: Job, status: QueueStatus) -> Job:
        """The queue says the job ended: turn that into its final row, with its quota settled."""
        if status.state is JobState.COMPLETE:
            result = await self.backend.queue.outcome(job.id)
            return job if result is None else await self.succeed(job, result)
        if status.state is JobState.CANCELLED:
            return await self.fail(job, status.error or CANCELLED_TEXT, cancelled=True)
        if status.state is JobState.FAILED:
            return await self.fail(job, status.error or FAILED_TEXT)
        return job

    async def succeed(self, job: Job, result: Result) -> Job:
        """The model a training made becomes a row, the job succeeds with its result, and its
        quota is spent."""
        fresh = await self._fresh(job)
        if not fresh.status.finished:
            if isinstance(result, TrainResult):
                await self._add_model(fresh, result)
            if fresh.status is JobStatus.QUEUED:  # it ran between two passes
                fresh = await self._move(fresh, JobStatus.RUNNING)
        if not fresh.status.finished:
            fresh = await self._move(
                fresh, JobStatus.SUCCEEDED, result=json.loads(result.to_json())
            )
        return await self.settle(fresh)

    async def fail(self, job: Job, error: str, *, cancelled: bool = False) -> Job:
        """The job failed (or was cancelled) with ``error`` in plain words; its quota is given
        back."""
        fresh = await self._fresh(job)
        if not fresh.status.finished:
            final = JobStatus.CANCELLED if cancelled else JobStatus.FAILED
            fresh = await self._move(fresh, final, error=error)
        return await self.settle(fresh)

    async def settle(self, job: Job) -> Job:
        """Spend a succeeded job's quota, give back a failed or cancelled one's (again after a
        restart: a reservation that already settled stays as it is)."""
        if job.status is JobStatus.SUCCEEDED:
            await self.commit(job.id)
        elif job.status.finished:
            await self.refund(job.id)
        return job

    async def refunded(self, job_id: str) -> bool:
        """Whether the job's quota was given back (a job that reserved none was not)."""
        reservations = await self.backend.repos.quotas.for_job(job_id)
        return any(r.state is LedgerState.REFUNDED for r in reservations)

    async def recover(self, job: Job, status: QueueStatus) -> Job:
        """A job the queue lost (Redis restarted without its data): ended as its last progress
        says when that says it ended; otherwise queued again from its spec, or failed with its
        quota given back when the spec is gone too."""
        stage = status.progress.stage if status.progress is not None else None
        message = status.progress.message if status.progress is not None else ""
        if stage == Stage.FAILED:
            return await self.fail(job, message or FAILED_TEXT)
        if stage == Stage.CANCELLED:
            return await self.fail(job, CANCELLED_TEXT, cancelled=True)
        spec = await self.spec(job)
        if spec is None:
            log.warning("job %s is missing from the queue and its spec is gone: failing it", job.id)
            return await self.fail(job, LOST_TEXT)
        if not await self.backend.queue.enqueue(spec):
            log.warning("job %s is missing from the queue but arq still holds part of it", job.id)
            return job
        log.info("job %s was missing from the queue: queued again from its spec", job.id)
        return await self.requeued(job)

    async def spec(self, job: Job) -> Spec | None:
        """The job's spec from the blob store; None when it is gone or unreadable."""
        try:
            raw = await self.backend.blob(self.backend.store.get, spec_key(job.id))
        except StorageError:
            return None
        try:
            if job.kind is JobKind.TRAIN:
                return TrainSpec.from_json(raw)
            return GenerateSpec.from_json(raw)
        except (StorageError, UserFacingError) as exc:
            log.warning("the spec of job %s is unreadable: %s", job.id, exc)
            return None

    async def _fresh(self, job: Job) -> Job:
        fresh = await self.backend.repos.jobs.get(job.id)
        if fresh is None:
            raise StorageError(f"job {job.id} is gone (forgotten meanwhile)")
        return fresh

    async def _move(
        self,
        job: Job,
        status: JobStatus,
        *,
        error: str | None = None,
        result: dict[str, Any] | None = None,
    ) -> Job:
        """Move the row; when another task moved it first (a /cancel), its move stands."""
        try:
            return await self.backend.repos.jobs.transition(
                job.id, status, error=error, result=result
            )
        except StorageError:
            fresh = await self._fresh(job)
            if fresh.status is status or fresh.status.finished:
                return fresh
            raise

    async def _add_model(self, job: Job, result: TrainResult) -> ModelRecord:
        """The model row of a finished training, once (a restart finds the one it added)."""
        models = self.backend.repos.models
        found = await models.get(result.model_id)
        if found is not None:
            return found
        params = job.params
        spec = await self.spec(job)
        train = spec if isinstance(spec, TrainSpec) else None
        class_name = str(params.get("class_name") or (train.class_name if train else ""))
        identifier = str(params.get("identifier") or (train.identifier if train else ""))
        method = str(params.get("method") or (train.method if train else DEFAULT_METHOD))
        host = self.backend.host
        return await models.add(
            ModelRecord(
                id=result.model_id,
                owner_id=job.owner_id,
                guild_id=job.guild_id,
                name=await self._free_name(
                    job.owner_id, str(params.get("name") or f"{identifier}-{class_name}")
                ),
                class_name=class_name,
                identifier=identifier,
                preset=train.preset if train else self.backend.preset,
                method=TrainMethod(method),
                blob_key=_weights_key(result),
                sha256=result.sha256,
                size_bytes=result.size_bytes,
                created_at=self.backend.clock(),
                is_default=False,
                hub_url=host.url(result.hub_repo) if host and result.hub_repo else None,
            )
        )

    async def _free_name(self, owner_id: int, name: str) -> str:
        """``name``, or ``name-2``, ``name-3``… when the member named another model so
        meanwhile (names are unique per member)."""
        candidate, number = name, 1
        while await self.backend.repos.models.by_name(owner_id, candidate) is not None:
            number += 1
            candidate = f"{name}-{number}"
        return candidate


def _weights_key(result: TrainResult) -> str:
    """The model's weights file among its files (the metadata file is the other one)."""
    for key in result.files:
        if posixpath.basename(key) != MODEL_METADATA_FILE:
            return key
    return result.model_prefix


def _ended(status: JobStatus) -> str:
    return {
        JobStatus.SUCCEEDED: "finished",
        JobStatus.FAILED: "failed",
        JobStatus.CANCELLED: "been cancelled",
    }.get(status, str(status))
