"""The /forget tests' world: a stand-in Hub, a played worker, and what a member leaves."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from arq.worker import Worker, func

from bot.service import Backend
from storage.blobs import keys
from storage.hub import HubModelHost
from storage.jobs import (
    GENERATE_FUNCTION,
    TRAIN_FUNCTION,
    GenerateResult,
    GenerateSpec,
    Progress,
    Stage,
    TrainResult,
    TrainSpec,
    progress_key,
    result_key,
    spec_key,
)
from storage.records import JobKind, JobStatus, ModelRecord, QuotaKind, TrainMethod

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32
# Every table that holds a member's rows, with its member column.
MEMBER_TABLES = {
    "jobs": "owner_id",
    "models": "owner_id",
    "usage_ledger": "user_id",
    "limit_overrides": "user_id",
    "consents": "user_id",
}


@dataclass
class StandInHub:
    """The Hugging Face Hub at its boundary: the repos that exist, and a failure on demand."""

    repos: set[str] = field(default_factory=set)
    fail_next: bool = False

    def delete_repo(self, repo_id: str, **kwargs: Any) -> None:
        if self.fail_next:
            self.fail_next = False
            raise ConnectionError("the Hub did not answer")
        if repo_id not in self.repos and not kwargs.get("missing_ok"):
            raise FileNotFoundError(repo_id)
        self.repos.discard(repo_id)


@pytest.fixture
def hub(backend: Backend) -> StandInHub:
    stand_in = StandInHub()
    backend.host = HubModelHost(stand_in)
    return stand_in


async def play_worker(backend: Backend, hub: StandInHub, queue: str) -> None:
    """A real arq worker runs every job waiting on ``queue`` once, writing what the GPU worker
    writes: model files and samples (and a Hub repo), or images; the result blob; progress."""
    store = backend.store

    async def train_model(ctx: dict[str, Any], job_id: str) -> str:
        spec = TrainSpec.from_json(store.get(spec_key(job_id)))
        files = [keys.model(spec.model_id, "lora.safetensors"), keys.model(spec.model_id, "m.json")]
        for key in files:
            store.put(key, b"weights")
        samples = [keys.model(spec.model_id, "sample-0.png")]
        store.put(samples[0], PNG)
        repo = f"org/dreambot-{spec.model_id}"
        hub.repos.add(repo)
        result = TrainResult(
            job_id=job_id,
            model_id=spec.model_id,
            model_prefix=keys.model_prefix(spec.model_id),
            files=files,
            sha256="ab" * 32,
            size_bytes=14,
            steps=spec.steps,
            final_loss=0.1,
            seconds=1.0,
            sample_keys=samples,
            hub_repo=repo,
        )
        store.put(result_key(job_id), result.to_json().encode())
        await backend.queue.redis.set(
            progress_key(job_id), Progress(job_id, Stage.DONE.value, 1, 1).to_json()
        )
        return result.to_json()

    async def generate_images(ctx: dict[str, Any], job_id: str) -> str:
        spec = GenerateSpec.from_json(store.get(spec_key(job_id)))
        image_keys = [keys.output(job_id, i) for i in range(spec.n_images)]
        for key in image_keys:
            store.put(key, PNG)
        result = GenerateResult(job_id, image_keys, list(range(spec.n_images)), 1.0)
        store.put(result_key(job_id), result.to_json().encode())
        return result.to_json()

    worker = Worker(
        functions=[
            func(train_model, name=TRAIN_FUNCTION),
            func(generate_images, name=GENERATE_FUNCTION),
        ],
        queue_name=queue,
        redis_pool=backend.queue.redis,
        burst=True,
        poll_delay=0,
        handle_signals=False,
        keep_result=3600,
    )
    await worker.async_run()
    assert worker.jobs_failed == 0


async def train(
    backend: Backend,
    owner: int,
    guild: int,
    job_id: str,
    model_id: str,
    *,
    row_names_model: bool = True,
) -> None:
    """A training as /train leaves it: consent, photos, row, reservation, spec, queue (whether
    the row's params name the model is up to /train; the spec always does)."""
    repos, store = backend.repos, backend.store
    await repos.consents.record(owner, guild, "person", "v1")
    photos = [keys.photo(job_id, i, f"{i:064x}") for i in range(3)]
    for key in photos:
        store.put(key, PNG)
    params = {"name": model_id, "identifier": "sks", "class_name": "person"}
    if row_names_model:
        params["model_id"] = model_id
    await repos.jobs.create(job_id, JobKind.TRAIN, owner, guild_id=guild, params=params)
    await repos.quotas.reserve(owner, guild, QuotaKind.TRAIN, 1, 3, job_id=job_id)
    spec = TrainSpec(job_id, model_id, photos, "person", "sks", preset="tiny", resolution=64)
    assert await backend.queue.enqueue(spec)


async def imagine(backend: Backend, owner: int, guild: int, job_id: str) -> None:
    await backend.repos.jobs.create(
        job_id, JobKind.GENERATE, owner, guild_id=guild, params={"prompt": "a dog"}
    )
    await backend.repos.quotas.reserve(owner, guild, QuotaKind.IMAGES, 2, 50, job_id=job_id)
    assert await backend.queue.enqueue(GenerateSpec(job_id, "a dog", n_images=2))


async def deliver(backend: Backend, job_id: str, model_name: str | None = None) -> None:
    """What delivery does with a finished job: the row moves on, quota is spent, the model
    a training made gets its row (with its Hub link)."""
    repos = backend.repos
    result = await backend.queue.outcome(job_id)
    assert result is not None
    await repos.jobs.transition(job_id, JobStatus.RUNNING)
    job = await repos.jobs.transition(
        job_id, JobStatus.SUCCEEDED, result=json.loads(result.to_json())
    )
    for reservation in await repos.quotas.for_job(job_id):
        await repos.quotas.commit(reservation.id)
    await repos.jobs.mark_delivered(job_id)
    if isinstance(result, TrainResult):
        assert backend.host is not None and result.hub_repo is not None
        await repos.models.add(
            ModelRecord(
                id=result.model_id,
                owner_id=job.owner_id,
                guild_id=job.guild_id,
                name=model_name or result.model_id,
                class_name="person",
                identifier="sks",
                preset="tiny",
                method=TrainMethod.LORA,
                blob_key=result.model_prefix,
                sha256=result.sha256,
                size_bytes=result.size_bytes,
                created_at=job.created_at,
                is_default=False,
                hub_url=backend.host.url(result.hub_repo),
            )
        )


async def redis_dump(backend: Backend) -> str:
    """Every key in the bot's Redis database with the members of its sorted sets."""
    redis = backend.queue.redis
    out = []
    async for key in redis.scan_iter():
        out.append(key.decode())
        if (await redis.type(key)) == b"zset":
            out += [m.decode() for m in await redis.zrange(key, 0, -1)]
    return "\n".join(out)


def blobs(backend: Backend) -> list[str]:
    return [backend.store._relative(p) for p in backend.store.fs.find(backend.store.root)]


async def member_rows(backend: Backend, user: int, guild: int | None) -> dict[str, int]:
    counts = {}
    for table, column in MEMBER_TABLES.items():
        row = await backend.repos.db.fetchone(
            f"SELECT COUNT(*) FROM {table} WHERE {column} = ? AND guild_id IS ?", (user, guild)
        )
        assert row is not None
        counts[table] = int(row[0])
    return counts
