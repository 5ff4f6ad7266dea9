"""/admin through the real command tree: hidden from members, refused by the service for them,
and every subcommand's effect on what members see, on what is stored and on the audit log."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import discord
import pytest
import simcord

from bot.errors import AccessDenied
from bot.service import Actor, Backend, DreamService
from storage.errors import QuotaExceeded
from storage.jobs import GenerateSpec
from storage.records import JobKind, JobStatus, LimitKind, QuotaKind
from storage.repos import Repos
from tests.bot.discord.conftest import World, callback_types


async def _queued_generation(backend: Backend, owner: int, guild: int, job_id: str) -> None:
    """A job as /imagine leaves it: a row, a reservation, the spec and the id on the queue."""
    await backend.repos.jobs.create(
        job_id, JobKind.GENERATE, owner, guild_id=guild, params={"prompt": "a photo of a dog"}
    )
    await backend.repos.quotas.reserve(owner, guild, QuotaKind.IMAGES, 4, 50, job_id=job_id)
    assert await backend.queue.enqueue(GenerateSpec(job_id, "a photo of a dog"))


async def _audit(backend: Backend, guild: int) -> list[tuple[str, int, str | None]]:
    """(action, actor, target) of the guild's audit log, oldest first."""
    entries = await backend.repos.audit.for_guild(guild)
    return [(e.action, e.actor_id, e.target) for e in reversed(entries)]


async def _status(backend: Backend, job_id: str) -> JobStatus:
    job = await backend.repos.jobs.get(job_id)
    assert job is not None
    return job.status


def _fields(result: simcord.InteractionResult) -> dict[str, str]:
    [embed] = result.response.embeds
    return {f.name: f.value for f in embed.fields}


async def test_members_cannot_see_admin_and_the_service_refuses_them(
    world: World, service: DreamService
) -> None:
    assert not any(c.startswith("admin") for c in world.alice.available_commands(world.channel))
    assert "admin usage" in world.mod.available_commands(world.channel)
    for command, options in (
        ("admin quota show", {}),
        ("admin ban", {"member": world.bob}),
        ("admin blocklist list", {}),
    ):
        with pytest.raises(simcord.SetupError, match="default-member-permissions"):
            await world.alice.slash(world.channel, command, **options)
    # Whatever a front end shows, the use cases check the permission themselves.
    member = Actor(world.alice.id, world.guild.id, world.channel.id, is_admin=False)
    refused = [
        service.admin.quota_show(member),
        service.admin.quota_set(member, LimitKind.TRAIN, 99),
        service.admin.queue(member),
        service.admin.cancel(member, "job-x"),
        service.admin.ban(member, world.bob.id),
        service.admin.unban(member, world.bob.id),
        service.admin.allow_channel(member, world.channel.id),
        service.admin.clear_channels(member),
        service.admin.block_words(member, "gore"),
        service.admin.usage(member),
    ]
    for call in refused:
        with pytest.raises(AccessDenied, match="Only server admins"):
            await call
    dm = Actor(world.mod.id, None, is_admin=True)
    with pytest.raises(AccessDenied, match="only inside a server"):
        await service.admin.usage(dm)
    assert await service.backend.repos.audit.for_guild(world.guild.id) == []


async def test_quota_set_for_the_server_changes_quota_and_what_reserve_allows(
    world: World, backend: Backend
) -> None:
    done = await world.mod.slash(world.channel, "admin quota set", limit="train", value=1)
    assert done.response.ephemeral
    assert done.response.content == "Set trainings per month for this server to **1**."
    assert (await backend.repos.guilds.get(world.guild.id)).train_per_month == 1
    assert _fields(await world.alice.slash(world.channel, "quota"))[
        "Trainings per month"
    ].startswith("**1** of 1 left")
    quotas, guild, alice = backend.repos.quotas, world.guild.id, world.alice.id
    await quotas.reserve(alice, guild, QuotaKind.TRAIN, 1, backend.settings.quota_train_per_month)
    with pytest.raises(QuotaExceeded):
        await quotas.reserve(alice, guild, QuotaKind.TRAIN, 1, 3)

    shown = await world.mod.slash(world.channel, "admin quota show")
    fields = _fields(shown)
    assert fields["Trainings per month"] == "**1** (set here; the bot's default is 3)"
    assert fields["Images per day"] == "**50** (the bot's default)"

    reset = await world.mod.slash(world.channel, "admin quota reset", limit="train")
    assert "the bot's default, **3**, applies now" in reset.response.content
    assert (await backend.repos.guilds.get(world.guild.id)).train_per_month is None
    await quotas.reserve(alice, guild, QuotaKind.TRAIN, 1, 3)  # allowed again
    assert await _audit(backend, world.guild.id) == [
        ("quota.set", world.mod.id, None),
        ("quota.show", world.mod.id, None),
        ("quota.reset", world.mod.id, None),
    ]
    [first, *_] = reversed(await backend.repos.audit.for_guild(world.guild.id))
    assert first.detail == {"kind": "train", "before": None, "after": 1}


async def test_a_members_own_limit_wins_and_can_be_reset(world: World, backend: Backend) -> None:
    await world.mod.slash(world.channel, "admin quota set", limit="images", value=20)
    done = await world.mod.slash(
        world.channel, "admin quota set", limit="images", value=2, member=world.bob
    )
    assert done.response.content == f"Set images per day for <@{world.bob.id}> to **2**."
    assert await backend.repos.quotas.overrides(world.bob.id, world.guild.id) == {
        LimitKind.IMAGES: 2
    }
    assert _fields(await world.bob.slash(world.channel, "quota"))["Images per day"].startswith(
        "**2** of 2 left"
    )
    assert _fields(await world.alice.slash(world.channel, "quota"))["Images per day"].startswith(
        "**20** of 20 left"
    )
    with pytest.raises(QuotaExceeded):
        await backend.repos.quotas.reserve(world.bob.id, world.guild.id, QuotaKind.IMAGES, 3, 50)

    shown = await world.mod.slash(world.channel, "admin quota show", member=world.bob)
    assert shown.response.embeds[0].description == f"<@{world.bob.id}>"
    fields = _fields(shown)
    assert fields["Images per day"] == "**2** of 2 left · their own limit (server: 20)"
    assert fields["Trainings per month"] == "**3** of 3 left · this server's limit"

    reset = await world.mod.slash(
        world.channel, "admin quota reset", limit="images", member=world.bob
    )
    assert "this server's limit, **20**, applies now" in reset.response.content
    assert await backend.repos.quotas.overrides(world.bob.id, world.guild.id) == {}
    again = await world.mod.slash(
        world.channel, "admin quota reset", limit="images", member=world.bob
    )
    assert (
        again.response.content
        == f"<@{world.bob.id}> had no images per day of their own; **20** applies."
    )
    targets = [t for (a, _, t) in await _audit(backend, world.guild.id) if a != "quota.show"]
    assert targets == [None, str(world.bob.id), str(world.bob.id), str(world.bob.id)]


async def test_quota_values_are_checked_before_they_reach_the_bot(world: World) -> None:
    with pytest.raises(simcord.OptionError):
        await world.mod.slash(world.channel, "admin quota set", limit="train", value=-1)
    with pytest.raises(simcord.OptionError):
        await world.mod.slash(world.channel, "admin quota set", limit="weekly", value=1)


async def test_admin_queue_lists_every_job_here_and_cancels_one(
    world: World, backend: Backend
) -> None:
    await _queued_generation(backend, world.alice.id, world.guild.id, "job-a")
    await _queued_generation(backend, world.bob.id, world.guild.id, "job-b")
    elsewhere = world.env.create_guild("Elsewhere")
    await _queued_generation(backend, world.bob.id, elsewhere.id, "job-x")

    mark = len(world.env.http_requests)
    shown = await world.mod.slash(world.channel, "admin queue")
    assert callback_types(world.env, mark) == [5]
    text = shown.response.embeds[0].description
    assert "`job-a`" in text and f"<@{world.alice.id}>" in text and "next in line" in text
    assert "`job-b`" in text and "1 ahead in the queue" in text and "job-x" not in text
    [row] = shown.response.components
    assert [o["value"] for o in row["components"][0]["options"]] == ["job-a", "job-b"]

    cancelled = await world.mod.select(shown.response, ["job-b"], custom_id="admin:queue:cancel")
    assert cancelled.response.content == (
        f"Cancelled `job-b` of <@{world.bob.id}>; their quota was given back."
    )
    assert "job-b" not in cancelled.response.embeds[0].description
    assert await _status(backend, "job-b") is JobStatus.CANCELLED
    assert await _status(backend, "job-x") is JobStatus.QUEUED
    used, _ = await backend.repos.quotas.usage(world.bob.id, world.guild.id, QuotaKind.IMAGES, 50)
    assert used == 0
    assert await backend.queue.position("job-b") is None
    assert ("job.cancel", world.mod.id, "job-b") in await _audit(backend, world.guild.id)

    last = await world.mod.select(cancelled.response, ["job-a"], custom_id="admin:queue:cancel")
    assert last.response.embeds[0].description == "Nothing is queued or running here."
    assert last.response.components == []


async def test_an_admin_cancelling_their_own_job_is_audited_too(
    world: World, backend: Backend, service: DreamService
) -> None:
    await _queued_generation(backend, world.mod.id, world.guild.id, "job-m")
    admin = Actor(world.mod.id, world.guild.id, world.channel.id, is_admin=True)
    await service.admin.cancel(admin, "job-m")
    assert await _audit(backend, world.guild.id) == [("job.cancel", world.mod.id, "job-m")]


async def test_ban_refuses_the_members_commands_and_cancels_their_jobs(
    world: World, backend: Backend
) -> None:
    await _queued_generation(backend, world.bob.id, world.guild.id, "job-b")
    await _queued_generation(backend, world.alice.id, world.guild.id, "job-a")
    done = await world.mod.slash(world.channel, "admin ban", member=world.bob)
    assert done.response.content.startswith(f"Banned <@{world.bob.id}>")
    assert "1 queued or running job cancelled" in done.response.content
    assert world.bob.id in (await backend.repos.guilds.get(world.guild.id)).banned_users
    assert await _status(backend, "job-b") is JobStatus.CANCELLED
    assert await _status(backend, "job-a") is JobStatus.QUEUED
    for command in ("quota", "queue"):
        refused = await world.bob.slash(world.channel, command)
        assert "admin has blocked you" in refused.response.content
    twice = await world.mod.slash(world.channel, "admin ban", member=world.bob)
    assert "already banned" in twice.response.content

    itself = await world.mod.slash(world.channel, "admin ban", member=world.mod)
    assert itself.response.content == "You can't ban yourself."

    unbanned = await world.mod.slash(world.channel, "admin unban", member=world.bob)
    assert "can use the bot here again" in unbanned.response.content
    assert (await world.bob.slash(world.channel, "quota")).response.embeds
    not_banned = await world.mod.slash(world.channel, "admin unban", member=world.bob)
    assert "is not banned here" in not_banned.response.content
    assert [
        (a, t) for (a, _, t) in await _audit(backend, world.guild.id) if a.startswith("member")
    ] == [("member.ban", str(world.bob.id)), ("member.unban", str(world.bob.id))]


async def test_a_member_who_manages_the_server_cannot_be_banned(
    world: World, backend: Backend
) -> None:
    managers = world.guild.create_role("Admins", permissions=discord.Permissions(manage_guild=True))
    other = world.guild.add_member(world.env.create_user("mod2"), roles=[managers])
    refused = await world.mod.slash(world.channel, "admin ban", member=other)
    assert "remove their Manage Server permission first" in refused.response.content
    assert (await backend.repos.guilds.get(world.guild.id)).banned_users == ()


async def test_the_channel_allow_list_binds_members_but_not_admins(
    world: World, backend: Backend
) -> None:
    art = world.guild.create_text_channel("art")
    done = await world.mod.slash(world.channel, "admin channels add", channel=art)
    assert done.response.content == (
        f"Members can use the bot only in: <#{art.id}>. Admins can use it anywhere."
    )
    refused = await world.alice.slash(world.channel, "quota")
    assert refused.response.content == f"This bot works only in these channels here: <#{art.id}>."
    assert (await world.alice.slash(art, "quota")).response.embeds
    assert (await world.mod.slash(world.channel, "quota")).response.embeds  # admins anywhere

    await world.mod.slash(world.channel, "admin channels add", channel=world.channel)
    assert (await world.alice.slash(world.channel, "quota")).response.embeds
    listed = await world.mod.slash(art, "admin channels list")
    assert f"<#{art.id}>, <#{world.channel.id}>" in listed.response.content
    twice = await world.mod.slash(art, "admin channels add", channel=art)
    assert "already on the list" in twice.response.content

    await world.mod.slash(art, "admin channels remove", channel=world.channel)
    assert (await backend.repos.guilds.get(world.guild.id)).allowed_channels == (art.id,)
    assert (
        "only in these channels"
        in (await world.alice.slash(world.channel, "quota")).response.content
    )
    cleared = await world.mod.slash(art, "admin channels clear")
    assert cleared.response.content == "Members can use the bot in every channel here."
    assert (await world.alice.slash(world.channel, "quota")).response.embeds
    assert [a for (a, _, _) in await _audit(backend, world.guild.id)] == [
        "channels.add",
        "channels.add",
        "channels.show",
        "channels.remove",
        "channels.clear",
    ]


async def test_blocklist_add_remove_and_list(world: World, backend: Backend) -> None:
    added = await world.mod.slash(world.channel, "admin blocklist add", words="Gore, NSFW  gore")
    assert added.response.content == "Blocked `gore`, `nsfw`. Blocked words (2): `gore`, `nsfw`"
    assert (await backend.repos.guilds.get(world.guild.id)).prompt_blocklist == ("gore", "nsfw")
    again = await world.mod.slash(world.channel, "admin blocklist add", words="gore")
    assert "already on the blocklist" in again.response.content
    bad = await world.mod.slash(world.channel, "admin blocklist add", words="ok two<words>")
    assert "'two<words>' is not one word" in bad.response.content
    assert (await backend.repos.guilds.get(world.guild.id)).prompt_blocklist == ("gore", "nsfw")

    removed = await world.mod.slash(world.channel, "admin blocklist remove", words="GORE")
    assert removed.response.content == "Removed `gore`. Blocked words (1): `nsfw`"
    missing = await world.mod.slash(world.channel, "admin blocklist remove", words="gore")
    assert "None of those words is on the blocklist" in missing.response.content
    listed = await world.mod.slash(world.channel, "admin blocklist list")
    assert listed.response.content == "Blocked words (1): `nsfw`"
    entries = list(reversed(await backend.repos.audit.for_guild(world.guild.id)))
    assert [(e.action, e.detail) for e in entries] == [
        ("blocklist.add", {"words": ["gore", "nsfw"]}),
        ("blocklist.remove", {"words": ["gore"]}),
        ("blocklist.show", {}),
    ]


async def test_usage_shows_each_member_per_day(
    world: World, backend: Backend, service: DreamService
) -> None:
    now = datetime.now(UTC)
    yesterday = Repos(backend.repos.db, clock=lambda: now - timedelta(days=1))
    guild = world.guild.id
    await yesterday.quotas.reserve(world.alice.id, guild, QuotaKind.TRAIN, 1, 3)
    await yesterday.quotas.reserve(world.alice.id, guild, QuotaKind.IMAGES, 4, 50)
    quotas = backend.repos.quotas
    kept = await quotas.reserve(world.bob.id, guild, QuotaKind.IMAGES, 4, 50)
    await quotas.commit(kept.id)
    await quotas.reserve(world.bob.id, guild, QuotaKind.IMAGES, 2, 50)
    refunded = await quotas.reserve(world.alice.id, guild, QuotaKind.IMAGES, 4, 50)
    await quotas.refund(refunded.id)
    await quotas.reserve(
        world.alice.id, world.env.create_guild("Other").id, QuotaKind.IMAGES, 1, 50
    )

    shown = await world.mod.slash(world.channel, "admin usage")
    [embed] = shown.response.embeds
    assert embed.title == "Usage here, last 7 days"
    assert [f.name for f in embed.fields] == [
        now.strftime("%a %d %b %Y"),
        (now - timedelta(days=1)).strftime("%a %d %b %Y"),
    ]
    assert embed.fields[0].value == f"<@{world.bob.id}> · 0 trainings · 6 images"
    assert embed.fields[1].value == f"<@{world.alice.id}> · 1 training · 4 images"
    today_only = await world.mod.slash(world.channel, "admin usage", days=1)
    assert len(today_only.response.embeds[0].fields) == 1
    [entry, _] = await backend.repos.audit.for_guild(guild)
    assert (entry.action, entry.detail) == ("usage.show", {"days": 1})


async def test_usage_embed_fits_discords_limits(world: World, backend: Backend) -> None:
    guild = await backend.repos.guilds.get(world.guild.id)
    await backend.repos.guilds.save(replace(guild, images_per_day=10_000))
    for user in range(1000, 1200):
        await backend.repos.quotas.reserve(user, world.guild.id, QuotaKind.IMAGES, 1, 10_000)
    shown = await world.mod.slash(world.channel, "admin usage")
    [embed] = shown.response.embeds
    assert len(embed) <= 6000 and len(embed.fields[0].value) <= 1024
    assert embed.fields[0].value.endswith("more")
