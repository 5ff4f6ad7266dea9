"""Fixtures and helpers for the worker tests: a real Redis database of their own, a real worker
group in the test's event loop, the tiny preset, and model folders in the blob store.

Import the fixtures into a test module (``from tests.trainer.workers import *``-style, by name).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from bot.queue import JobQueue
from storage.blobs import BlobStore, keys
from storage.jobs import GenerateSpec, TrainSpec
from storage.redis_server import EmbeddedRedis
from tests.trainer.conftest import checker_images

# Worker tests use their own Redis database, emptied before each test, so jobs left by other
# tests on the shared server never reach these workers.
WORKER_DB = 5


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def worker_config(**changes: Any) -> Any:
    from trainer.config import WorkerConfig

    fields: dict[str, Any] = {
        "recovery_window_s": 4.0,
        "max_tries": 3,
        "retry_backoff_s": 0.5,
        "checkpoint_every": 5,
        "cache_size": 2,
        "xla": False,
        "poll_s": 0.02,
        "progress_every_s": 0.0,
    }
    fields.update(changes)
    return WorkerConfig(**fields)


@pytest.fixture
async def queue_url(redis_server: EmbeddedRedis) -> str:
    from redis.asyncio import Redis

    url = redis_server.url.rsplit("/", 1)[0] + f"/{WORKER_DB}"
    client = Redis.from_url(url)
    await client.flushdb()
    await client.aclose()
    return url


@pytest.fixture(scope="module")
def worker_store(tmp_path_factory: pytest.TempPathFactory) -> BlobStore:
    return BlobStore(tmp_path_factory.mktemp("blobs").resolve().as_uri())


@pytest.fixture(scope="module")
def worker_runtime(worker_store: BlobStore) -> Iterator[Any]:
    """The tiny preset (its own, since the model cache merges LoRA into it) in a runtime."""
    from trainer.presets import build_preset
    from trainer.worker import build_runtime

    runtime = build_runtime(build_preset("tiny", seed=0), worker_store, worker_config())
    yield runtime
    runtime.close()


@pytest.fixture
async def worker_group(worker_runtime: Any, queue_url: str) -> AsyncIterator[Any]:
    """Both queues served in this event loop, as `dreambot worker --queue all` does."""
    from trainer.worker import WorkerGroup

    group = WorkerGroup(worker_runtime, queue_url, "all")
    await group.start()
    yield group
    await group.close()


@pytest.fixture
async def job_queue(queue_url: str, worker_store: BlobStore) -> AsyncIterator[JobQueue]:
    queue = await JobQueue.connect(queue_url, worker_store)
    yield queue
    await queue.close()


def png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def put_photos(store: BlobStore, job_id: str, n: int = 3) -> list[str]:
    out = []
    for index, image in enumerate(
        checker_images(n, seed=1, colours=((230, 30, 40), (30, 60, 220)))
    ):
        data = png(image)
        key = keys.photo(job_id, index, hashlib.sha256(data).hexdigest()[:16])
        store.put(key, data)
        out.append(key)
    return out


def train_spec(
    store: BlobStore, job_id: str, *, steps: int, class_images: int = 0, method: str = "lora"
) -> TrainSpec:
    return TrainSpec(
        job_id=job_id,
        model_id=f"m-{job_id}",
        photo_keys=put_photos(store, job_id),
        class_name="dog",
        identifier="sks",
        preset="tiny",
        method=method,
        steps=steps,
        resolution=64,
        class_images=class_images,
        lora_rank=2,
        seed=3,
    )


def generate_spec(
    job_id: str, model_id: str | None = None, seeds: tuple[int, ...] = (7, 8)
) -> GenerateSpec:
    return GenerateSpec(
        job_id=job_id,
        prompt="a photo of sks dog",
        model_id=model_id,
        steps=4,
        n_images=len(seeds),
        seeds=list(seeds),
    )


def _upload(
    store: BlobStore, base: Any, model_id: str, method: str, arrays: dict[str, np.ndarray]
) -> None:
    from trainer.export import METADATA_FILE, WEIGHT_FILES, ModelMetadata

    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    data = buf.getvalue()
    meta = ModelMetadata(
        preset=base.name,
        method=method,
        rank=4 if method == "lora" else None,
        identifier="sks",
        class_name="dog",
        instance_prompt="a photo of sks dog",
        resolution=base.resolution,
        steps=1,
        seed=0,
        base_seed=0,
        base_weights_id=base.weights_id,
        weights_file=WEIGHT_FILES[method],
        sha256=hashlib.sha256(data).hexdigest(),
    )
    store.put(keys.model(model_id, meta.weights_file), data)
    store.put(keys.model(model_id, METADATA_FILE), json.dumps(dataclasses.asdict(meta)).encode())


def upload_lora_model(store: BlobStore, base: Any, model_id: str, seed: int) -> None:
    """A LoRA model with random factors large enough to change every image."""
    from trainer.lora import attention_projections

    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    for key, dense in attention_projections(base.diffusion_model):
        fan_in, fan_out = (int(d) for d in dense._kernel.shape)
        arrays[f"{key}.a"] = rng.normal(0, 0.5, (fan_in, 4)).astype(np.float16)
        arrays[f"{key}.b"] = rng.normal(0, 0.5, (4, fan_out)).astype(np.float16)
        arrays[f"{key}.scale"] = np.asarray(1.0, np.float32)
    _upload(store, base, model_id, "lora", arrays)


def upload_full_model(
    store: BlobStore, base_weights: list[np.ndarray], base: Any, model_id: str
) -> None:
    """A fully fine-tuned model: every base UNet weight moved a little."""
    rng = np.random.default_rng(11)
    arrays = {
        f"w{i:05d}": (w + rng.normal(0, 0.05, w.shape)).astype(np.float32)
        for i, w in enumerate(base_weights)
    }
    _upload(store, base, model_id, "full", arrays)


def model_dir(store: BlobStore, model_id: str, dest: Path) -> Path:
    """A blob-store model copied to a local folder (what ``load_model`` reads)."""
    dest.mkdir(parents=True, exist_ok=True)
    for key in store.list(keys.model_prefix(model_id)):
        (dest / key.rsplit("/", 1)[1]).write_bytes(store.get(key))
    return dest
