"""Helpers shared by the /train tests."""

from __future__ import annotations

from typing import Any

from bot.frontends.discord.training_views import CONSENT_LABEL
from bot.service import Backend
from tests.bot.discord.conftest import World
from tests.bot.photos.images import encode, textured_photo


def png(seed: int) -> bytes:
    """A small, sharp photo that differs from every other seed (resolution 64 in these tests)."""
    return encode(textured_photo(seed, (96, 96)), "PNG")


def photos(*seeds: int) -> dict[str, tuple[str, bytes]]:
    return {f"photo{i + 1}": (f"dog{seed}.png", png(seed)) for i, seed in enumerate(seeds)}


def buttons(message: Any) -> list[str]:
    """Button labels of a SimCord response (raw components) or a discord.Message."""
    return [
        c["label"] if isinstance(c, dict) else c.label
        for row in message.components
        for c in (row["components"] if isinstance(row, dict) else row.children)
    ]


async def nothing_stored(backend: Backend, user_id: int) -> None:
    assert await backend.repos.jobs.for_owner(user_id) == []
    assert backend.store.list("photos/") == []
    assert backend.store.list("jobs/") == []
    charged = await backend.repos.db.fetchone(
        "SELECT COUNT(*) FROM usage_ledger WHERE user_id = ? AND state != 'refunded'", (user_id,)
    )
    assert charged is not None and charged[0] == 0  # in any guild


async def train(world: World, *seeds: int, **options: Any) -> Any:
    return await world.alice.slash(
        world.channel, "train", class_name="dog", token="sks", **photos(*seeds), **options
    )


async def queued(world: World, backend: Backend) -> tuple[str, Any]:
    """Run /train with three good photos and consent; the job id and its progress message."""
    report = await train(world, 1, 2, 3)
    await world.alice.click(report.response, label=CONSENT_LABEL)
    [job] = await backend.repos.jobs.for_owner(world.alice.id)
    return job.id, world.channel.last_message
