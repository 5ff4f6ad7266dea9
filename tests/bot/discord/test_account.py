"""/quota, /queue and /cancel through the real command tree."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime

import pytest
import simcord

from bot.errors import AccessDenied
from bot.service import Actor, Backend, DreamService
from bot.service.imagine import ImagineRequest
from storage.jobs import GenerateSpec
from storage.records import JobKind, JobStatus, LimitKind, QuotaKind
from tests.bot.discord.conftest import World


async def _queued_generation(backend: Backend, owner: int, guild: int, job_id: str) -> None:
    """A job as /imagine leaves it: a row, a reservation, the spec and the id on the queue."""
    await backend.repos.jobs.create(
        job_id, JobKind.GENERATE, owner, guild_id=guild, params={"prompt": "a photo of a dog"}
    )
    await backend.repos.quotas.reserve(owner, guild, QuotaKind.IMAGES, 4, 50, job_id=job_id)
    assert await backend.queue.enqueue(GenerateSpec(job_id, "a photo of a dog"))


async def test_quota_shows_every_limit_with_what_is_left(world: World, backend: Backend) -> None:
    await backend.repos.quotas.set_override(world.alice.id, world.guild.id, LimitKind.TRAIN, 7)
    await backend.repos.quotas.reserve(world.alice.id, world.guild.id, QuotaKind.TRAIN, 2, 3)
    result = await world.alice.slash(world.channel, "quota")
    assert result.response.ephemeral
    [embed] = result.response.embeds
    fields = {f.name: f.value for f in embed.fields}
    assert fields["Trainings per month"].startswith("**5** of 7 left")
    assert fields["Images per day"].startswith("**50** of 50 left")
    now = datetime.now(UTC)
    first_of_next = datetime(now.year + (now.month == 12), now.month % 12 + 1, 1, tzinfo=UTC)
    assert f"<t:{int(first_of_next.timestamp())}:R>" in fields["Trainings per month"]
    assert fields["Models kept"].startswith("**5** of 5 left")


async def test_a_banned_member_is_told_why(world: World, backend: Backend) -> None:
    guild = await backend.repos.guilds.get(world.guild.id)
    await backend.repos.guilds.save(replace(guild, banned_users=(world.bob.id,)))
    result = await world.bob.slash(world.channel, "quota")
    assert result.response.ephemeral
    assert "admin has blocked you" in result.response.content
    assert (
        "Trainings"
        in (await world.alice.slash(world.channel, "quota")).response.embeds[0].fields[0].name
    )


async def test_queue_lists_own_jobs_with_positions(world: World, backend: Backend) -> None:
    await _queued_generation(backend, world.bob.id, world.guild.id, "job-b")
    await _queued_generation(backend, world.alice.id, world.guild.id, "job-a")
    result = await world.alice.slash(world.channel, "queue")
    text = result.response.embeds[0].description
    assert "`job-a`" in text and "1 ahead in the queue" in text and "job-b" not in text
    empty = await world.mod.slash(world.channel, "queue")
    assert empty.response.content == "You have no jobs queued or running."


async def test_cancel_refunds_and_only_the_owner_or_an_admin_may(
    world: World, backend: Backend
) -> None:
    await _queued_generation(backend, world.alice.id, world.guild.id, "job-a")
    denied = await world.bob.slash(world.channel, "cancel", job="job-a")
    assert "Only the member who started this job" in denied.response.content
    assert (await backend.repos.jobs.get("job-a")).status is JobStatus.QUEUED  # type: ignore[union-attr]
    done = await world.alice.slash(world.channel, "cancel", job="job-a")
    assert "Cancelled `job-a`" in done.response.content
    assert (await backend.repos.jobs.get("job-a")).status is JobStatus.CANCELLED  # type: ignore[union-attr]
    used, _ = await backend.repos.quotas.usage(world.alice.id, world.guild.id, QuotaKind.IMAGES, 50)
    assert used == 0
    assert await backend.queue.position("job-a") is None
    again = await world.alice.slash(world.channel, "cancel", job="job-a")
    assert "already been cancelled" in again.response.content


async def test_an_admin_may_cancel_a_members_job_and_it_is_audited(
    world: World, backend: Backend
) -> None:
    await _queued_generation(backend, world.alice.id, world.guild.id, "job-a")
    done = await world.mod.slash(world.channel, "cancel", job="job-a")
    assert "Cancelled" in done.response.content
    [entry] = await backend.repos.audit.for_guild(world.guild.id)
    assert (entry.action, entry.actor_id, entry.target) == ("job.cancel", world.mod.id, "job-a")


async def test_cancel_autocompletes_own_active_jobs(world: World, backend: Backend) -> None:
    await _queued_generation(backend, world.alice.id, world.guild.id, "job-a")
    await _queued_generation(backend, world.bob.id, world.guild.id, "job-b")
    choices = await world.alice.autocomplete(world.channel, "cancel", "job", "")
    assert [c["value"] for c in choices] == ["job-a"]


async def test_an_unexpected_error_shows_an_error_id_that_is_logged(
    world: World, backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    await backend.repos.db.close()  # the database is gone: a bug or an outage, not the member's
    result = await world.alice.slash(world.channel, "quota")
    assert result.response.ephemeral
    error_id = re.search(r"error id `([0-9a-f]+)`", result.response.content)
    assert error_id is not None
    logged = [r for r in caplog.records if error_id.group(1) in r.getMessage()]
    assert logged and logged[0].exc_info is not None  # the traceback is in the log
    simcord.assert_error(world.env, ValueError)


def test_actor_defaults() -> None:
    assert Actor(1, None).is_admin is False


async def test_nothing_is_offered_or_done_in_a_dm(world: World, backend: Backend) -> None:
    """A DM has no server whose bans, channels, blocklist and quotas would apply."""
    user = world.env.create_user("dm-user")
    assert list(user.available_commands()) == []
    service = DreamService(backend)
    dm = Actor(world.alice.id, None)
    with pytest.raises(AccessDenied, match="inside a server"):
        await service.quota(dm)
    with pytest.raises(AccessDenied, match="inside a server"):
        await service.models.mine(dm)
    with pytest.raises(AccessDenied, match="inside a server"):
        await service.imagine.imagine(dm, ImagineRequest("a photo of a dog"))
    assert await backend.repos.jobs.for_owner(world.alice.id) == []
