"""Helpers shared by the /imagine and /models tests."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from typing import Any

from PIL import Image

from bot.service import Backend
from storage.blobs import keys
from storage.jobs import GenerateSpec, spec_key
from storage.records import (
    Job,
    ModelRecord,
    TrainMethod,
)

LORA = b"lora-weights" * 100


def png(colour: tuple[int, int, int], size: int = 32) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(out, format="PNG")
    return out.getvalue()


async def add_model(
    backend: Backend,
    owner: int,
    guild: int | None,
    model_id: str,
    name: str,
    *,
    identifier: str = "sks",
    class_name: str = "dog",
    is_default: bool = False,
    weights: bytes = LORA,
    samples: int = 0,
    hub_url: str | None = None,
    day: int = 1,
) -> ModelRecord:
    """A model as a finished training leaves it: the row, ``lora.npz`` and ``model.json``."""
    store = backend.store
    store.put(keys.model(model_id, "lora.npz"), weights)
    meta = {"preset": "tiny", "method": "lora", "identifier": identifier, "class_name": class_name}
    store.put(keys.model(model_id, "model.json"), json.dumps(meta).encode())
    for index in range(samples):
        store.put(keys.model(model_id, f"sample-{index}.png"), png((40 * index, 90, 200)))
    return await backend.repos.models.add(
        ModelRecord(
            id=model_id,
            owner_id=owner,
            guild_id=guild,
            name=name,
            class_name=class_name,
            identifier=identifier,
            preset="tiny",
            method=TrainMethod.LORA,
            blob_key=keys.model(model_id, "lora.npz"),
            sha256="0" * 64,
            size_bytes=len(weights),
            created_at=datetime(2026, 11, day, tzinfo=UTC),
            is_default=is_default,
            hub_url=hub_url,
        )
    )


async def only_job(backend: Backend, owner: int) -> Job:
    [job] = await backend.repos.jobs.for_owner(owner)
    return job


def spec_of(backend: Backend, job_id: str) -> GenerateSpec:
    return GenerateSpec.from_json(backend.store.get(spec_key(job_id)))


async def queued_ids(backend: Backend) -> list[str]:
    return [
        raw.decode() for raw in await backend.queue.redis.zrange("dreambot:queue:generate", 0, -1)
    ]


def labels(message: Any) -> list[str]:
    """The button labels of a message (a SimCord reply holds raw rows, a channel message
    discord.py's ActionRows)."""
    if message.components and isinstance(message.components[0], dict):
        return [c.get("label") for row in message.components for c in row["components"]]
    return [c.label for row in message.components for c in row.children]
