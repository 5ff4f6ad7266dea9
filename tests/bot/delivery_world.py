"""The world of the delivery tests: a backend over real SQLite, Redis and blobs, a clock,
a recording notifier, and a real arq worker with stand-in job functions that write outputs and
results the way trainer/worker/bodies.py does (no TensorFlow). The fixture ``w`` builds it."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from arq import create_pool
from arq.connections import RedisSettings
from arq.worker import Worker, func
from PIL import Image
from pydantic import SecretStr
from redis.asyncio import Redis

from bot.config import BotSettings
from bot.delivery import Delivery, Finished
from bot.queue import JobQueue, JobState
from bot.queue import JobStatus as QueueStatus
from bot.service import Backend
from storage.blobs import BlobStore, keys
from storage.db import Database
from storage.jobs import (
    GENERATE_FUNCTION,
    SAMPLE_SEEDS,
    TRAIN_FUNCTION,
    TRAIN_QUEUE,
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
from storage.records import Job, JobKind, LedgerState, QuotaKind
from storage.redis_server import EmbeddedRedis
from storage.repos import Repos

DELIVERY_DB = 8
OWNER, GUILD, CHANNEL = 101, 202, 303


# -- the world: backend, clock, notifier, worker ------------------------------------------


class Hub:
    """The Hugging Face Hub's narrow door (a true boundary): only links are asked of it here."""

    def url(self, repo: str) -> str:
        return f"https://huggingface.co/{repo}"

    def delete(self, repo: str) -> None:
        raise AssertionError("delivery never deletes from the Hub")


@dataclass
class Clock:
    now: float = 0.0

    def __call__(self) -> float:
        return self.now


class Unreachable(Exception):
    """What a front end raises when Discord refuses (a 429 or a 5xx)."""


@dataclass
class Recorder:
    """A notifier that records what the member would be told, and refuses when asked to."""

    progress_seen: list[tuple[str, QueueStatus]] = field(default_factory=list)
    finished_seen: list[Finished] = field(default_factory=list)
    refuse_progress: set[str] = field(default_factory=set)
    refuse_finished: dict[str, int] = field(default_factory=dict)  # job id -> refusals left
    attempts: dict[str, int] = field(default_factory=dict)

    async def progress(self, job: Job, status: QueueStatus) -> None:
        if job.id in self.refuse_progress:
            raise Unreachable("503 Service Unavailable")
        self.progress_seen.append((job.id, status))

    async def finished(self, done: Finished) -> None:
        self.attempts[done.job.id] = self.attempts.get(done.job.id, 0) + 1
        if self.refuse_finished.get(done.job.id, 0) > 0:
            self.refuse_finished[done.job.id] -= 1
            raise Unreachable("429 Too Many Requests")
        self.finished_seen.append(done)

    def finished_for(self, job_id: str) -> list[Finished]:
        return [d for d in self.finished_seen if d.job.id == job_id]

    def progress_for(self, job_id: str) -> list[QueueStatus]:
        return [s for j, s in self.progress_seen if j == job_id]


def png(shade: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (shade, 40, 90)).save(out, format="PNG")
    return out.getvalue()


@dataclass
class Playbook:
    """What the stand-in worker does: per job, a gate to wait on and a failure to raise."""

    gates: dict[str, asyncio.Event] = field(default_factory=dict)
    failures: dict[str, Exception] = field(default_factory=dict)
    runs: list[str] = field(default_factory=list)


async def _start(ctx: dict[str, Any], job_id: str) -> None:
    book: Playbook = ctx["book"]
    book.runs.append(job_id)
    await ctx["redis"].set(
        progress_key(job_id),
        Progress(job_id, Stage.TRAINING.value, step=1, total=10, eta_s=9.0).to_json(),
    )
    if job_id in book.gates:
        await book.gates[job_id].wait()
    if job_id in book.failures:
        raise book.failures[job_id]


async def train_stand_in(ctx: dict[str, Any], job_id: str) -> str:
    """train_model's contract: weights + model.json, four samples, result JSON written last."""
    store: BlobStore = ctx["store"]
    spec = TrainSpec.from_json(store.get(spec_key(job_id)))
    await _start(ctx, job_id)
    files = [keys.model(spec.model_id, "lora.npz"), keys.model(spec.model_id, "model.json")]
    store.put(files[0], b"weights of " + spec.model_id.encode())
    store.put(files[1], b"{}")
    samples = []
    for index in range(len(SAMPLE_SEEDS)):
        samples.append(keys.model(spec.model_id, f"sample-{index}.png"))
        store.put(samples[-1], png(index * 50))
    result = TrainResult(
        job_id=job_id,
        model_id=spec.model_id,
        model_prefix=keys.model_prefix(spec.model_id),
        files=files,
        sha256="ab" * 32,
        size_bytes=sum(store.size(k) for k in files),
        steps=spec.steps,
        final_loss=0.12,
        seconds=1.0,
        sample_keys=samples,
        hub_repo=f"dreambot/{spec.model_id}",
    )
    text = result.to_json()
    store.put(result_key(job_id), text.encode())
    return text


async def generate_stand_in(ctx: dict[str, Any], job_id: str) -> str:
    """generate_images' contract: one PNG per seed, result JSON written last."""
    store: BlobStore = ctx["store"]
    spec = GenerateSpec.from_json(store.get(spec_key(job_id)))
    await _start(ctx, job_id)
    seeds = spec.seeds or list(range(7, 7 + spec.n_images))
    image_keys = []
    for index, seed in enumerate(seeds):
        image_keys.append(keys.output(job_id, index))
        store.put(image_keys[-1], png(seed))
    text = GenerateResult(job_id, image_keys, seeds, 0.5).to_json()
    store.put(result_key(job_id), text.encode())
    return text


@dataclass
class World:
    backend: Backend
    url: str
    book: Playbook
    clock: Clock
    notifier: Recorder

    @property
    def repos(self) -> Repos:
        return self.backend.repos

    @property
    def queue(self) -> JobQueue:
        return self.backend.queue

    def delivery(self, backend: Backend | None = None) -> Delivery:
        return Delivery(backend or self.backend, self.notifier, clock=self.clock)

    def worker(self, queue: str) -> Callable[[], Any]:
        """Run an arq worker over ``queue`` until its queue is empty (burst mode)."""

        async def run() -> None:
            pool = await create_pool(RedisSettings.from_dsn(self.url))
            function = train_stand_in if queue == TRAIN_QUEUE else generate_stand_in
            name = TRAIN_FUNCTION if queue == TRAIN_QUEUE else GENERATE_FUNCTION
            worker = Worker(
                [func(function, name=name)],  # type: ignore[arg-type]
                queue_name=queue,
                redis_pool=pool,
                burst=True,
                handle_signals=False,
                poll_delay=0.02,
                max_tries=1,
                ctx={"store": self.backend.store, "book": self.book},
            )
            try:
                await worker.main()
            finally:
                await worker.close()

        return run

    async def work(self, queue: str) -> None:
        await asyncio.wait_for(self.worker(queue)(), timeout=30)

    async def until_running(self, job_id: str) -> None:
        """Wait (real time, bounded) until the worker runs the job and said how far it is."""
        for _ in range(1500):
            status = await self.queue.status(job_id)
            progress = status.progress
            if status.state is JobState.RUNNING and progress and progress.stage == "training":
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"job {job_id} never ran")

    async def reopen(self, tmp_path: Path) -> Backend:
        """A second bot process over the same files and Redis (the first one died)."""
        store = BlobStore((tmp_path / "blobs").resolve().as_uri())
        db = await Database.open(tmp_path / "dreambot.sqlite3")
        queue = await JobQueue.connect(self.url, store)
        self._opened.append((db, queue))
        return Backend(self.backend.settings, Repos(db), queue, store, Hub(), "tiny")

    _opened: list[tuple[Database, JobQueue]] = field(default_factory=list)


@pytest.fixture
async def w(tmp_path: Path, redis_server: EmbeddedRedis) -> AsyncIterator[World]:
    url = redis_server.url.rsplit("/", 1)[0] + f"/{DELIVERY_DB}"
    client = Redis.from_url(url)
    await client.flushdb()
    await client.aclose()
    settings = BotSettings(  # type: ignore[call-arg]
        _env_file=None, discord_token=SecretStr("token"), train_resolution=64
    )
    store = BlobStore((tmp_path / "blobs").resolve().as_uri())
    db = await Database.open(tmp_path / "dreambot.sqlite3")
    queue = await JobQueue.connect(url, store)
    backend = Backend(settings, Repos(db), queue, store, Hub(), "tiny")
    w = World(backend, url, Playbook(), Clock(), Recorder())
    yield w
    for other_db, other_queue in w._opened:
        await other_queue.close()
        await other_db.close()
    await queue.close()
    await db.close()


async def train_job(w: World, job_id: str, *, name: str = "rex") -> TrainSpec:
    """A training as /train leaves it: row with its params, a reservation, spec, id queued."""
    spec = TrainSpec(
        job_id, f"model-{job_id}", [], "dog", "sks", preset="tiny", resolution=64, steps=10
    )
    params = {
        "name": name,
        "class_name": "dog",
        "identifier": "sks",
        "method": "lora",
        "model_id": spec.model_id,
    }
    await w.repos.jobs.create(
        job_id, JobKind.TRAIN, OWNER, guild_id=GUILD, channel_id=CHANNEL, params=params
    )
    await w.repos.quotas.reserve(OWNER, GUILD, QuotaKind.TRAIN, 1, 5, job_id=job_id)
    assert await w.queue.enqueue(spec)
    return spec


async def generate_job(w: World, job_id: str, seeds: list[int] | None = None) -> GenerateSpec:
    spec = GenerateSpec(job_id, "a photo of sks dog", n_images=2, seeds=seeds or [])
    await w.repos.jobs.create(
        job_id, JobKind.GENERATE, OWNER, guild_id=GUILD, params={"prompt": spec.prompt}
    )
    await w.repos.quotas.reserve(OWNER, GUILD, QuotaKind.IMAGES, 2, 50, job_id=job_id)
    assert await w.queue.enqueue(spec)
    return spec


async def ledger(w: World, job_id: str) -> list[LedgerState]:
    return [r.state for r in await w.repos.quotas.for_job(job_id)]


async def row(w: World, job_id: str) -> Job:
    job = await w.repos.jobs.get(job_id)
    assert job is not None
    return job
