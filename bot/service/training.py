"""/train: check photos, record consent, reserve quota, store photos, queue the job.

A training starts in two steps, so a member sees the verdict on their photos before anything is
stored: ``check`` (and ``add`` for photos sent later) judges the photos in memory; only
``start``, after the member confirmed consent, writes anything. ``start`` writes in the order
job row → quota → photos → spec + queue (the quota ledger refers to the row), and undoes all of
it if any step fails, so a job is either fully queued or leaves nothing behind but a failed row
with its reservation refunded.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from bot.errors import Conflict, InvalidArgument, QuotaExceeded
from bot.photos import NormalisedPhoto, PhotoInput, PhotoRules, SetReport, check_photos, extend_set
from bot.queue import JobStatus as QueueStatus
from bot.service.context import (
    CONSENT_VERSION,
    MODEL_NAME_MAX,
    Actor,
    Backend,
    check_model_name,
    default_limit,
    guild_key,
    next_reset,
)
from storage.blobs import keys
from storage.errors import StorageError
from storage.jobs import TrainSpec, spec_key
from storage.records import Job, JobKind, JobStatus, LimitKind, QuotaKind
from storage.rules import Method, check_method, check_word

__all__ = [
    "MODEL_NAME_MAX",
    "QueuedTraining",
    "TrainRequest",
    "TrainingService",
    "check_model_name",
    "new_id",
]

log = logging.getLogger(__name__)

_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"


def new_id(length: int = 12) -> str:
    """A short random id, safe in URLs, blob keys and custom ids (62 bits at 12 characters)."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(length))


@dataclass(frozen=True, slots=True)
class TrainRequest:
    """What a member asked to train, with every word checked (``name`` None: derived)."""

    class_name: str
    identifier: str
    method: Method = "lora"
    name: str | None = None

    @classmethod
    def parse(
        cls, class_name: str, identifier: str, *, name: str | None = None, method: str = "lora"
    ) -> TrainRequest:
        return cls(
            class_name=check_word(class_name, "class word"),
            identifier=check_word(identifier, "identifier"),
            method=check_method(method),
            name=check_model_name(name) if name is not None else None,
        )

    @property
    def default_name(self) -> str:
        return f"{self.identifier}-{self.class_name}"[:MODEL_NAME_MAX]


@dataclass(frozen=True, slots=True)
class QueuedTraining:
    """A training that is queued: its row, the model name it will get, and where it waits."""

    job: Job
    name: str
    photos: int
    status: QueueStatus


class TrainingService:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def rules(self, request: TrainRequest) -> PhotoRules:
        """The photo rules of this request (its class word decides whether faces matter)."""
        return PhotoRules.from_settings(self.backend.settings, class_name=request.class_name)

    async def prepare(self, actor: Actor, request: TrainRequest) -> None:
        """Everything that can refuse a training before its photos are fetched: banned, channel,
        limits, trainings left this month, a model name already in use."""
        await self.backend.guard(actor)
        await self._check_limits(actor)
        await self._check_trainings_left(actor)
        await self._model_name(actor, request)

    async def check(self, request: TrainRequest, photos: Sequence[PhotoInput]) -> SetReport:
        """Judge a set of photos (in a thread: decoding is CPU work); nothing is stored."""
        return await asyncio.to_thread(check_photos, list(photos), self.rules(request))

    async def add(
        self, request: TrainRequest, report: SetReport, photos: Sequence[PhotoInput]
    ) -> SetReport:
        """``report`` with more photos judged and appended (duplicates across both found)."""
        return await asyncio.to_thread(extend_set, report, list(photos), self.rules(request))

    async def start(
        self, actor: Actor, request: TrainRequest, report: SetReport, *, consent: bool
    ) -> QueuedTraining:
        """Queue a training of the accepted photos of ``report``, once the member consented.

        Records the consent, writes the job row, reserves one training of the month's quota
        for it (the ledger refers to the row), stores the photos, then writes the spec and
        queues the job id. When the reservation is refused the row is deleted again; when a
        later step fails, what the earlier ones wrote is undone (quota refunded, photos and
        spec deleted, row marked failed).
        """
        await self.backend.guard(actor)
        if not consent:
            raise InvalidArgument(
                "Training needs your confirmation that these photos are of you, or that you "
                "have the permission of the person in them."
            )
        photos = self._trainable(report)
        await self._check_limits(actor)
        await self._check_trainings_left(actor)
        name = await self._model_name(actor, request)
        repos, settings = self.backend.repos, self.backend.settings
        consent_row = await repos.consents.record(
            actor.user_id, actor.guild_id, name, CONSENT_VERSION
        )
        job_id, model_id = new_id(), new_id()
        row = await repos.jobs.create(
            job_id,
            JobKind.TRAIN,
            actor.user_id,
            guild_id=actor.guild_id,
            channel_id=actor.channel_id,
            params={
                "name": name,
                "class_name": request.class_name,
                "identifier": request.identifier,
                "method": request.method,
                "photos": len(photos),
                "model_id": model_id,
                "preset": self.backend.preset,
                "resolution": settings.train_resolution,
                "steps": settings.train_steps,
                "consent_id": consent_row.id,
            },
        )
        try:
            reservation = await repos.quotas.reserve(
                actor.user_id,
                guild_key(actor),
                QuotaKind.TRAIN,
                1,
                default_limit(settings, LimitKind.TRAIN),
                job_id=job_id,
            )
        except BaseException:
            await repos.jobs.delete(job_id)  # refused (or failed): as if never asked
            raise
        try:
            photo_keys = await self.backend.blob(self._store_photos, job_id, photos)
            spec = TrainSpec(
                job_id=job_id,
                model_id=model_id,
                photo_keys=photo_keys,
                class_name=request.class_name,
                identifier=request.identifier,
                preset=self.backend.preset,
                method=request.method,
                steps=settings.train_steps,
                resolution=settings.train_resolution,
                class_images=settings.train_class_images,
            )
            if not await self.backend.queue.enqueue(spec):
                raise StorageError(f"job id {job_id} is already on the queue")
            status = await self.backend.queue.status(job_id)
        except BaseException as exc:
            await self._undo(job_id, reservation.id, exc)
            raise
        return QueuedTraining(row, name, len(photos), status)

    # -- checks ----------------------------------------------------------------------------

    def _trainable(self, report: SetReport) -> list[NormalisedPhoto]:
        settings = self.backend.settings
        if not report.can_train:
            raise InvalidArgument(f"These photos can't be trained on: {report.message}")
        photos = [p.normalised for p in report.accepted if p.normalised is not None]
        if not settings.photos_min <= len(photos) <= settings.photos_max:
            raise InvalidArgument(
                f"A training needs {settings.photos_min} to {settings.photos_max} usable "
                f"photos; {len(photos)} were usable."
            )
        return photos

    async def _check_limits(self, actor: Actor) -> None:
        """Models kept (counting trainings under way, which each become one) and jobs at once."""
        repos = self.backend.repos
        models = await repos.models.for_owner(actor.user_id, actor.guild_id)
        active = await repos.jobs.for_owner(
            actor.user_id, active_only=True, guild_id=actor.guild_id
        )
        training = sum(1 for job in active if job.kind is JobKind.TRAIN)
        max_models = await self.backend.limit(actor, LimitKind.MODELS)
        if len(models) + training >= max_models:
            under_way = f" and {training} in training" if training else ""
            raise QuotaExceeded(
                f"You have {len(models)} models{under_way}; you may keep {max_models} here. "
                "Delete one with /models delete before training another."
            )
        max_queued = await self.backend.limit(actor, LimitKind.QUEUED)
        if len(active) >= max_queued:
            raise QuotaExceeded(
                f"You already have {len(active)} jobs queued or running; the limit here is "
                f"{max_queued}. Wait for one to finish, or cancel one with /cancel."
            )

    async def _check_trainings_left(self, actor: Actor) -> None:
        used, limit = await self.backend.repos.quotas.usage(
            actor.user_id,
            guild_key(actor),
            QuotaKind.TRAIN,
            default_limit(self.backend.settings, LimitKind.TRAIN),
        )
        if used >= limit:
            reset = next_reset(QuotaKind.TRAIN, self.backend.clock())
            raise QuotaExceeded(
                f"You have used {used} of your {limit} trainings this month; more are "
                f"available from {reset.day} {reset:%B} (UTC)."
            )

    async def _model_name(self, actor: Actor, request: TrainRequest) -> str:
        """The name the model will get: the one asked for (an error when the member already
        uses it), else ``<identifier>-<class>``, with -2, -3… added until it is free."""
        repos = self.backend.repos
        taken = {m.name.lower() for m in await repos.models.for_owner(actor.user_id)}
        taken |= {
            str(job.params.get("name", "")).lower()
            for job in await repos.jobs.for_owner(actor.user_id, active_only=True)
            if job.kind is JobKind.TRAIN
        }
        if request.name is not None:
            if request.name.lower() in taken:
                raise Conflict(
                    f"You already have a model called {request.name}. Pick another name, or "
                    "delete that model with /models delete first."
                )
            return request.name
        base, number = request.default_name, 1
        name = base
        while name.lower() in taken:
            number += 1
            suffix = f"-{number}"
            name = base[: MODEL_NAME_MAX - len(suffix)] + suffix
        return name

    # -- writing and undoing ---------------------------------------------------------------

    def _store_photos(self, job_id: str, photos: Sequence[NormalisedPhoto]) -> list[str]:
        """Write the normalised photos (blocking; run in a thread); returns their keys."""
        written = []
        for index, photo in enumerate(photos):
            key = keys.photo(job_id, index, photo.sha256)
            self.backend.store.put(key, photo.data)
            written.append(key)
        return written

    async def _undo(self, job_id: str, reservation_id: int, cause: BaseException) -> None:
        """Take back what a failed ``start`` wrote. Each step runs even if another fails (each
        failure is logged with its traceback); the caller re-raises the original error."""
        log.warning("training %s could not be queued (%r); undoing it", job_id, cause)
        backend, store = self.backend, self.backend.store
        failed = "The training could not be queued."
        steps: list[tuple[str, Callable[[], Awaitable[object]]]] = [
            ("refund", lambda: backend.repos.quotas.refund(reservation_id)),
            ("dequeue", lambda: backend.queue.cancel(job_id)),
            ("photos", lambda: backend.blob(store.delete_prefix, keys.photos_prefix(job_id))),
            ("spec", lambda: backend.blob(store.delete, spec_key(job_id))),
            ("row", lambda: backend.repos.jobs.transition(job_id, JobStatus.FAILED, error=failed)),
            # The member hears of it from the request itself; delivery must not tell them again.
            ("delivered", lambda: backend.repos.jobs.mark_delivered(job_id)),
        ]
        for what, step in steps:
            try:
                await step()
            except Exception:
                log.exception("undoing training %s: %s failed", job_id, what)
