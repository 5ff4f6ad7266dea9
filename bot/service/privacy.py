"""/forget: delete everything of one member in one server.

The order makes it safe to stop half-way and run again: running jobs are cancelled first; then
what lies outside SQLite (Redis keys, Hub repos, blobs) is deleted while the rows that locate it
still exist; the rows go last. Every step is a no-op the second time. A job a worker still holds
(it was running, and stops within a step of being aborted) keeps its row and Redis keys until a
later run, so whatever the worker writes while stopping can still be found and removed.

Any member may forget themselves, even one an admin banned or in a channel the server did not
allow: erasure is the member's right, not a bot feature. The ban itself stays (it is the
server's moderation record). The audit entry says only what kinds of things were deleted and
how many; admin entries about the member lose the member's id but keep what the admin did.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlparse

from bot.errors import Conflict, InvalidArgument
from bot.service.context import Actor, Backend
from bot.service.lifecycle import JobLifecycle
from storage.blobs import keys
from storage.errors import StorageError
from storage.records import Job, JobKind, ModelRecord

__all__ = ["FORGET_ACTION", "Footprint", "ForgetReport", "PrivacyService"]

log = logging.getLogger(__name__)

# The audit action of a /forget; its entry has actor 0 and no target: counts only.
FORGET_ACTION = "member.forget"


@dataclass(frozen=True, slots=True)
class Footprint:
    """What a member has in a server, shown before they confirm /forget."""

    models: int
    jobs: int
    active: int

    @property
    def empty(self) -> bool:
        return not (self.models or self.jobs)


@dataclass(frozen=True, slots=True)
class ForgetReport:
    """What one /forget run deleted.

    ``hub_left`` are Hub links of models this bot could not delete (Hub hosting is not
    configured here any more); ``stopping`` counts jobs a worker still held: cancelled, with
    everything else of theirs deleted, but their row and Redis keys wait for the next run.
    """

    cancelled: int = 0
    jobs: int = 0
    models: int = 0
    files: int = 0
    hub_deleted: int = 0
    hub_left: tuple[str, ...] = ()
    records: int = 0
    redis_keys: int = 0
    stopping: int = 0
    user_removed: bool = False
    # (channel id, message id) of the deleted jobs' messages (progress, pictures, samples):
    # the front end removes them from the channels too.
    messages: tuple[tuple[int, int], ...] = ()

    @property
    def nothing(self) -> bool:
        """Nothing was found to delete (a second run, or a member who never used the bot)."""
        return not (
            self.cancelled
            or self.jobs
            or self.models
            or self.files
            or self.hub_deleted
            or self.hub_left
            or self.records
            or self.redis_keys
            or self.stopping
            or self.user_removed
        )


def _guild_of(actor: Actor) -> int:
    if actor.guild_id is None:
        raise InvalidArgument(
            "/forget works inside a server: it deletes what you have in that server. Run it there."
        )
    return actor.guild_id


def _repo_of(url: str) -> str | None:
    """The repo id ("namespace/name") of a Hub model page link, None when it is not one."""
    parts = [part for part in urlparse(url).path.split("/") if part]
    return "/".join(parts) if len(parts) == 2 else None


class PrivacyService:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.jobs = JobLifecycle(backend)
        # One /forget at a time per member and server (a double click runs it once, then no-op).
        self._locks: dict[tuple[int, int], asyncio.Lock] = {}

    async def footprint(self, actor: Actor) -> Footprint:
        """What /forget would delete for this member here (asked before they confirm)."""
        guild_id = _guild_of(actor)
        jobs = await self.backend.repos.jobs.for_owner(actor.user_id, guild_id=guild_id)
        models = await self.backend.repos.models.for_owner(actor.user_id, guild_id)
        return Footprint(len(models), len(jobs), sum(not j.status.finished for j in jobs))

    async def forget(self, actor: Actor) -> ForgetReport:
        """Delete every photo, model (blob store and Hub), image, job, quota record, override
        and consent of this member in this server; safe to run again at any point."""
        guild_id = _guild_of(actor)
        lock = self._locks.setdefault((actor.user_id, guild_id), asyncio.Lock())
        async with lock:
            return await self._forget(actor, guild_id)

    async def _forget(self, actor: Actor, guild_id: int) -> ForgetReport:
        backend, repos, user_id = self.backend, self.backend.repos, actor.user_id
        cancelled = 0
        for job in await repos.jobs.for_owner(user_id, guild_id=guild_id):
            if job.status.finished:
                continue
            try:
                await self.jobs.cancel(actor, job.id)
            except Conflict:  # it finished meanwhile: nothing to stop
                continue
            cancelled += 1

        jobs = await repos.jobs.for_owner(user_id, guild_id=guild_id)
        held: set[str] = set()
        redis_keys = 0
        for job in jobs:
            removed = await backend.queue.purge(job.id)
            if removed is None:
                held.add(job.id)
            else:
                redis_keys += removed
        models = await repos.models.for_owner(user_id, guild_id)
        model_ids, hub_repos, links = await self._traces(jobs, models)
        hub_deleted, hub_left = await self._delete_hosted(hub_repos, links)
        files = await self._delete_blobs(jobs, model_ids, models, held)

        deleted_models = await repos.models.delete_member(user_id, guild_id)
        records = await repos.quotas.delete_member(user_id, guild_id)
        records += await repos.consents.delete_member(user_id, guild_id)
        deleted_jobs = 0
        for job in jobs:
            if job.id not in held:
                deleted_jobs += await repos.jobs.delete(job.id)
        await repos.audit.forget_subject(guild_id, user_id)
        user_removed = await repos.users.delete_if_unused(user_id)

        report = ForgetReport(
            cancelled=cancelled,
            jobs=deleted_jobs,
            models=len(deleted_models),
            files=files,
            hub_deleted=hub_deleted,
            hub_left=hub_left,
            records=records,
            redis_keys=redis_keys,
            stopping=len(held),
            user_removed=user_removed,
            messages=tuple(
                (job.channel_id, job.message_id)
                for job in jobs
                if job.id not in held and job.channel_id and job.message_id
            ),
        )
        counts = asdict(report)
        counts["hub_left"] = len(hub_left)
        counts["messages"] = len(report.messages)
        await repos.audit.log(guild_id, 0, FORGET_ACTION, None, counts)
        return report

    async def _traces(
        self, jobs: Iterable[Job], models: Iterable[ModelRecord]
    ) -> tuple[set[str], dict[str, str], list[str]]:
        """Every model id the member's jobs and rows name (a training cancelled mid-export or
        finished but not yet delivered has files but no row); every Hub repo with its link; and
        Hub links that name no repo."""
        model_ids = {model.id for model in models}
        hub: dict[str, str] = {}
        links: list[str] = []
        for model in models:
            if model.hub_url:
                repo = _repo_of(model.hub_url)
                if repo is None:
                    links.append(model.hub_url)
                else:
                    hub[repo] = model.hub_url
        for job in jobs:
            if job.kind is not JobKind.TRAIN:
                continue
            result = job.result or await self._stored_json(keys.job_result(job.id))
            spec = await self._stored_json(keys.job_spec(job.id))
            for data in (job.params, result, spec):
                if isinstance(data.get("model_id"), str):
                    model_ids.add(data["model_id"])
            repo = result.get("hub_repo")
            if isinstance(repo, str) and repo:
                url = self.backend.host.url(repo) if self.backend.host else repo
                hub.setdefault(repo, url)
        return model_ids, hub, links

    async def _stored_json(self, key: str) -> dict[str, Any]:
        """A JSON blob as a dict; {} when it is missing or unreadable (it is deleted anyway)."""
        try:
            data = json.loads(await self.backend.blob(self.backend.store.get, key))
        except (StorageError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    async def _delete_hosted(
        self, hub: dict[str, str], links: list[str]
    ) -> tuple[int, tuple[str, ...]]:
        """Delete the member's Hub repos; the links this bot cannot delete (hosting was turned
        off, or a link names no repo) are returned so the member can ask an admin."""
        host = self.backend.host
        if host is None:
            if hub:
                log.warning("/forget found %d Hub models but no Hub host is set up", len(hub))
            return 0, tuple(sorted({*hub.values(), *links}))
        for repo in sorted(hub):
            await self.backend.blob(host.delete, repo)
        return len(hub), tuple(sorted(set(links)))

    async def _delete_blobs(
        self,
        jobs: Iterable[Job],
        model_ids: Iterable[str],
        models: Iterable[ModelRecord],
        held: set[str],
    ) -> int:
        """Photos, checkpoints, images, specs and results of the jobs; files of the models. The
        spec of a job a worker still holds stays for the next run: it names the model the job
        may still have written."""
        store, blob = self.backend.store, self.backend.blob
        prefixes: list[str] = []
        single: list[str] = []
        for job in jobs:
            prefixes += [
                keys.photos_prefix(job.id),
                keys.checkpoint_prefix(job.id),
                keys.outputs_prefix(job.id),
            ]
            single.append(keys.job_result(job.id))
            if job.id not in held:
                single.append(keys.job_spec(job.id))
        prefixes += [keys.model_prefix(model_id) for model_id in sorted(model_ids)]
        for model in models:
            if not any(model.blob_key.startswith(prefix) for prefix in prefixes):
                (prefixes if model.blob_key.endswith("/") else single).append(model.blob_key)
        files = 0
        for prefix in prefixes:
            files += await blob(store.delete_prefix, prefix)
        for key in single:
            files += await blob(_delete_one(store.exists, store.delete), key)
        return files


def _delete_one(
    exists: Callable[[str], bool], delete: Callable[[str], None]
) -> Callable[[str], int]:
    """A blocking "delete this key; 1 if it was there" for one thread hop."""

    def run(key: str) -> int:
        if not exists(key):
            return 0
        delete(key)
        return 1

    return run
