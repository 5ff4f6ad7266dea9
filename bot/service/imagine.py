"""/imagine: resolve the model, check the prompt, reserve images, queue the job; and what the
buttons under a result do (re-roll, variations, delete)."""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bot.errors import AccessDenied, InvalidArgument, NotFound, QuotaExceeded, StorageError
from bot.service.context import BASE_MODEL, Actor, Backend, default_limit, guild_key
from bot.service.lifecycle import JobLifecycle
from bot.service.models import find_model, matching, models_here
from bot.service.prompts import TokenCounter, check_blocklist, identifier_hint
from storage.blobs import keys
from storage.jobs import GenerateSpec
from storage.records import Job, JobKind, JobStatus, LimitKind, ModelRecord, QuotaKind
from storage.rules import (
    DEFAULT_GUIDANCE,
    DEFAULT_IMAGES,
    DEFAULT_SAMPLER_STEPS,
    MAX_IMAGES,
    MAX_SAMPLER_STEPS,
    MAX_SEED,
    check_guidance,
    check_int,
    seeds_from,
)

__all__ = [
    "BASE_MODEL",
    "RANDOM_SEED_BELOW",
    "VARIATION_SPREAD",
    "ImagineRequest",
    "ImagineService",
    "Queued",
    "variation_seeds",
]

log = logging.getLogger(__name__)

# Random seeds stay below 2**32: short enough to read and type back, and any seed draws as well.
RANDOM_SEED_BELOW = 2**32
# Variations draw from seeds at most this far from the chosen image's seed (see variation_seeds).
VARIATION_SPREAD = 1000


@dataclass(frozen=True, slots=True)
class ImagineRequest:
    """What a member asked for. ``model``: a model id or name, None for their default,
    :data:`BASE_MODEL` for the base; ``seed``: the first image's seed (None: a random one);
    ``seeds``: every image's seed, when a variation has chosen them."""

    prompt: str
    model: str | None = None
    negative: str = ""
    count: int = DEFAULT_IMAGES
    steps: int = DEFAULT_SAMPLER_STEPS
    guidance: float = DEFAULT_GUIDANCE
    seed: int | None = None
    seeds: tuple[int, ...] | None = None


@dataclass(frozen=True, slots=True)
class Queued:
    """A drawing on the queue: its row, the model it uses (None: the base), its seeds, a hint
    for the member, and how many jobs wait ahead of it."""

    job: Job
    model: ModelRecord | None
    seeds: tuple[int, ...]
    hint: str | None
    position: int | None


def variation_seeds(seed: int, count: int, taken: set[int]) -> list[int]:
    """Seeds "near" ``seed`` for variations: random seeds within :data:`VARIATION_SPREAD` of
    it, none of them in ``taken`` (the original pictures).

    Honestly, nearness of seeds means nothing to the sampler: seed ``s`` and ``s + 1`` start
    from unrelated noise, so these are not small changes of the chosen picture. They resemble
    it because everything else is the same (prompt, negative prompt, model, steps, guidance).
    A true variation mixes the chosen picture's starting noise with a little fresh noise,
    which the queue's GenerateSpec cannot ask a worker for yet.
    """
    low, high = max(0, seed - VARIATION_SPREAD), min(MAX_SEED, seed + VARIATION_SPREAD)
    if high - low + 1 - len(taken) < count:
        raise InvalidArgument("There are not enough seeds left near that one.")
    chosen: list[int] = []
    while len(chosen) < count:
        candidate = low + secrets.randbelow(high - low + 1)
        if candidate not in taken and candidate not in chosen:
            chosen.append(candidate)
    return chosen


class ImagineService:
    """``bpe_path``: the CLIP merges file the workers' tokenizer reads, for an exact prompt
    length check; without it the check counts a lower bound (see :class:`TokenCounter`)."""

    def __init__(self, backend: Backend, bpe_path: Path | str | None = None) -> None:
        self.backend = backend
        self.tokens = TokenCounter(bpe_path)

    # -- models ------------------------------------------------------------------------------

    async def choices(self, actor: Actor, typed: str) -> list[ModelRecord]:
        """The actor's own models here matching what they typed (autocomplete)."""
        return matching(await models_here(self.backend, actor), typed)

    async def resolve_model(self, actor: Actor, key: str | None) -> ModelRecord | None:
        """The model a request draws with: the one named (it must be the actor's), else their
        default here, else the base model (None)."""
        if key is None or not key.strip():
            mine = await models_here(self.backend, actor)
            return next((m for m in mine if m.is_default), None)
        if key.strip().lower() == BASE_MODEL:
            return None
        model = await find_model(self.backend, actor, key)
        if model is None:
            raise NotFound(
                f"You have no model “{key}” here. Pick one from the list, or leave `model` "
                "empty for your default; `/models list` shows yours."
            )
        if model.owner_id != actor.user_id:
            raise AccessDenied(
                "That is another member's model: you can draw only with your own models. "
                "`/models list` shows yours."
            )
        return model

    # -- queueing ----------------------------------------------------------------------------

    async def imagine(self, actor: Actor, request: ImagineRequest, *, source: str = "") -> Queued:
        """Check everything, reserve the images, write the job and queue it. Nothing is left
        reserved or queued when any step fails."""
        guild = await self.backend.guard(actor)
        prompt = " ".join(request.prompt.split())
        negative = " ".join(request.negative.split())
        if not prompt:
            raise InvalidArgument("Write a prompt: what should the picture show?")
        count = check_int(request.count, "the number of images", 1, MAX_IMAGES)
        steps = check_int(request.steps, "steps", 1, MAX_SAMPLER_STEPS)
        guidance = check_guidance(request.guidance)
        if request.seeds is not None:
            if len(request.seeds) != count:
                raise InvalidArgument(f"{count} images need {count} seeds.")
            seeds = [check_int(s, "seed", 0, MAX_SEED) for s in request.seeds]
        else:
            first = (
                request.seed if request.seed is not None else secrets.randbelow(RANDOM_SEED_BELOW)
            )
            seeds = seeds_from(first, count)
        check_blocklist(prompt, guild.prompt_blocklist)
        await self.tokens.check(prompt)
        if negative:
            await self.tokens.check(negative, "negative prompt")
        model = await self.resolve_model(actor, request.model)
        await self._check_queued(actor)
        job_id = secrets.token_hex(8)
        params: dict[str, Any] = {
            "prompt": prompt,
            "negative": negative,
            "count": count,
            "steps": steps,
            "guidance": guidance,
            "seeds": seeds,
            "model_id": model.id if model else None,
            "model_name": model.name if model else None,
        }
        if source:
            params["source"] = source
        await self._check_images(actor, count)
        # The ledger row references the job row, so the job is written first; the reservation
        # then checks the quota again atomically (two requests at once may both pass above).
        try:
            job = await self.backend.repos.jobs.create(
                job_id,
                JobKind.GENERATE,
                actor.user_id,
                guild_id=actor.guild_id,
                channel_id=actor.channel_id,
                params=params,
            )
            await self.backend.repos.quotas.reserve(
                actor.user_id,
                guild_key(actor),
                QuotaKind.IMAGES,
                count,
                default_limit(self.backend.settings, LimitKind.IMAGES),
                job_id=job_id,
            )
            spec = GenerateSpec(
                job_id=job_id,
                prompt=prompt,
                model_id=model.id if model else None,
                model_prefix=keys.model_prefix(model.id) if model else None,
                negative_prompt=negative,
                n_images=count,
                steps=steps,
                guidance=guidance,
                seeds=seeds,
            )
            if not await self.backend.queue.enqueue(spec):
                raise StorageError(f"job {job_id} was already on the queue")
        except BaseException:
            await self._undo(job_id)
            raise
        position = await self.backend.queue.position(job_id)
        return Queued(job, model, tuple(seeds), identifier_hint(prompt, model), position)

    async def _check_queued(self, actor: Actor) -> None:
        active = await self.backend.repos.jobs.for_owner(
            actor.user_id, active_only=True, guild_id=actor.guild_id
        )
        limit = await self.backend.limit(actor, LimitKind.QUEUED)
        if len(active) >= limit:
            raise QuotaExceeded(
                f"You already have {len(active)} job{'s' if len(active) != 1 else ''} queued or "
                f"running, the most you may have at once here. Wait for one to finish, or "
                "`/cancel` one."
            )

    async def _check_images(self, actor: Actor, count: int) -> None:
        """Refuse before anything is written when the images would go past today's quota."""
        used, limit = await self.backend.repos.quotas.usage(
            actor.user_id,
            guild_key(actor),
            QuotaKind.IMAGES,
            default_limit(self.backend.settings, LimitKind.IMAGES),
        )
        if used + count > limit:
            raise QuotaExceeded(
                f"You have used {used} of your {limit} images today; this needs {count} more. "
                "`/quota` says when it resets."
            )

    async def _undo(self, job_id: str) -> None:
        """Give the reservation back and fail the row of a job that could not be queued."""
        await JobLifecycle(self.backend).refund(job_id)
        job = await self.backend.repos.jobs.get(job_id)
        if job is not None and not job.status.finished:
            await self.backend.repos.jobs.transition(
                job_id, JobStatus.FAILED, error="It could not be queued; nothing was charged."
            )
        # The member hears of it from the request itself; delivery must not tell them again.
        await self.backend.repos.jobs.mark_delivered(job_id)

    # -- the buttons under a result ----------------------------------------------------------

    async def _source(self, actor: Actor, job_id: str) -> tuple[Job, ImagineRequest]:
        """A drawing of this server and the request that made it, with its model checked."""
        job = await self.backend.repos.jobs.get(job_id)
        if job is None or job.kind is not JobKind.GENERATE or job.guild_id != actor.guild_id:
            raise NotFound("Those pictures are gone from this bot, so that button no longer works.")
        params = job.params
        model_id = params.get("model_id")
        if model_id is not None:
            model = await self.backend.repos.models.get(str(model_id))
            if model is None:
                raise NotFound(
                    f"The model these pictures were drawn with (**{params.get('model_name')}**) "
                    "has been deleted."
                )
            if model.owner_id != actor.user_id:
                raise AccessDenied(
                    "These pictures were drawn with another member's own model; only they can "
                    "draw more with it."
                )
        request = ImagineRequest(
            prompt=str(params["prompt"]),
            model=str(model_id) if model_id is not None else BASE_MODEL,
            negative=str(params.get("negative", "")),
            count=int(params["count"]),
            steps=int(params["steps"]),
            guidance=float(params["guidance"]),
        )
        return job, request

    async def reroll(self, actor: Actor, job_id: str) -> Queued:
        """The same request again with new random seeds (the actor's quota)."""
        job, request = await self._source(actor, job_id)
        return await self.imagine(actor, request, source=job.id)

    async def vary(self, actor: Actor, job_id: str, seed: int) -> Queued:
        """The same request with seeds near ``seed``, one of its pictures' (see
        :func:`variation_seeds` for what "near" means)."""
        job, request = await self._source(actor, job_id)
        seeds = [int(s) for s in job.params.get("seeds", [])]
        if seed not in seeds:
            raise InvalidArgument("That picture is not one of these; pick one of its buttons.")
        chosen = variation_seeds(seed, request.count, set(seeds))
        return await self.imagine(actor, replace(request, seeds=tuple(chosen)), source=job.id)

    async def delete_outputs(self, actor: Actor, job_id: str) -> Job:
        """Delete a drawing's stored pictures (the member who asked, or an admin); the front
        end deletes its message."""
        job = await JobLifecycle(self.backend).visible(actor, job_id)
        if job.kind is not JobKind.GENERATE:
            raise NotFound("Those are not pictures from /imagine.")
        await self.backend.blob(self.backend.store.delete_prefix, keys.outputs_prefix(job.id))
        if actor.user_id != job.owner_id:
            await self.backend.repos.audit.log(
                actor.guild_id, actor.user_id, "imagine.delete", job.id, {"owner": job.owner_id}
            )
        return job
