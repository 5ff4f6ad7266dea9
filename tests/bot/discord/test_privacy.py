"""/forget end to end over real SQLite, Redis (arq's own keys, written by a real arq worker that
plays the GPU worker's part) and blobs, with a stand-in for the Hugging Face Hub."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import pytest
import simcord
from arq.constants import abort_jobs_ss, in_progress_key_prefix, job_key_prefix, result_key_prefix
from arq.jobs import serialize_result

from bot.service import Actor, Backend, DreamService
from bot.service.privacy import FORGET_ACTION
from storage.blobs import keys
from storage.jobs import (
    GENERATE_QUEUE,
    TRAIN_FUNCTION,
    TRAIN_QUEUE,
    Progress,
    progress_key,
)
from storage.records import JobStatus, LimitKind
from tests.bot.discord.conftest import World, callback_types
from tests.bot.discord.privacy_support import (
    MEMBER_TABLES,
    StandInHub,
    blobs,
    deliver,
    hub,
    imagine,
    member_rows,
    play_worker,
    redis_dump,
    train,
)

__all__ = ["hub"]  # a fixture


async def test_forget_deletes_everything_of_the_member_here_and_nothing_else(
    world: World, backend: Backend, service: DreamService, hub: StandInHub
) -> None:
    alice, bob, guild = world.alice.id, world.bob.id, world.guild.id
    other = world.env.create_guild("Other").id
    # Finished work: a delivered training and images, and a training that finished while the
    # bot was down (its row still says queued; only the blob store and Redis know its model).
    await train(backend, alice, guild, "a-train-1", "a-model-1")
    await train(backend, alice, guild, "a-train-2", "a-model-2")
    await imagine(backend, alice, guild, "a-gen-1")
    await train(backend, alice, other, "a-train-x", "a-model-x")
    await train(backend, bob, guild, "b-train-1", "b-model-1")
    await imagine(backend, bob, guild, "b-gen-1")
    await play_worker(backend, hub, TRAIN_QUEUE)
    await play_worker(backend, hub, GENERATE_QUEUE)
    for job_id in ("a-train-1", "a-gen-1", "a-train-x", "b-train-1", "b-gen-1"):
        await deliver(backend, job_id)
    # Work still waiting: a training (with a checkpoint from an earlier try) and images.
    await train(backend, alice, guild, "a-train-3", "a-model-3")
    backend.store.put(keys.checkpoint("a-train-3", "step-10.npz"), b"ckpt")
    await imagine(backend, alice, guild, "a-gen-2")
    await imagine(backend, bob, guild, "b-gen-2")
    # An admin gave alice her own limit (audited with her id as its target).
    mod = Actor(world.mod.id, guild, world.channel.id, is_admin=True)
    await service.admin.quota_set(mod, LimitKind.IMAGES, 10, alice)
    assert hub.repos == {
        f"org/dreambot-{m}" for m in ("a-model-1", "a-model-2", "a-model-x", "b-model-1")
    }
    alice_jobs = ("a-train-1", "a-train-2", "a-train-3", "a-gen-1", "a-gen-2")
    alice_models = ("a-model-1", "a-model-2", "a-model-3")
    blobs_before = blobs(backend)
    assert any(k.startswith("models/a-model-2/") for k in blobs_before)
    redis_before = await redis_dump(backend)
    assert all(job in redis_before for job in alice_jobs)

    shown = await world.alice.slash(world.channel, "forget")
    assert shown.response.ephemeral
    [embed] = shown.response.embeds
    assert embed.title == "Delete everything of yours in this server?"
    assert "your 1 model " in embed.description and "your 5 jobs" in embed.description
    assert "3 jobs of yours are queued or running" in embed.description
    with pytest.raises(simcord.SetupError):
        await world.bob.click(shown.response, label="Delete everything")
    assert await member_rows(backend, alice, guild) != dict.fromkeys(MEMBER_TABLES, 0)

    mark = len(world.env.http_requests)
    done = await world.alice.click(shown.response, label="Delete everything")
    assert callback_types(world.env, mark) == [7]  # acknowledged at once, then edited
    text = done.response.content
    assert text.startswith("Done. Deleted from this server:")
    assert "• 1 model\n• 2 model copies on the Hugging Face Hub" in text
    assert "• 5 jobs" in text and "3 queued or running jobs cancelled first." in text
    assert done.response.embeds == [] and done.response.components == []

    # Nothing of alice's is left in this server: rows, blobs, Redis keys, Hub repos.
    assert await member_rows(backend, alice, guild) == dict.fromkeys(MEMBER_TABLES, 0)
    left = blobs(backend)
    assert not [k for k in left if any(x in k for x in (*alice_jobs, *alice_models))]
    redis = await redis_dump(backend)
    assert not [job for job in alice_jobs if job in redis]
    assert hub.repos == {"org/dreambot-a-model-x", "org/dreambot-b-model-1"}
    # Bob's data and alice's data in the other server are untouched.
    assert await member_rows(backend, bob, guild) == {
        "jobs": 3,
        "models": 1,
        "usage_ledger": 3,
        "limit_overrides": 0,
        "consents": 1,
    }
    assert (await member_rows(backend, alice, other))["models"] == 1
    untouched = [
        k for k in blobs_before if k.split("/")[1].startswith(("b-", "a-train-x", "a-model-x"))
    ]
    assert untouched and set(untouched) <= set(left)
    for job in ("b-train-1", "b-gen-1", "b-gen-2", "a-train-x"):
        assert job in redis
    assert await backend.queue.position("b-gen-2") == 0
    assert (await backend.repos.models.for_owner(alice))[0].is_default
    # The audit log: an anonymous entry with counts; the admin's entry no longer names alice.
    entries = await backend.repos.audit.for_guild(guild)
    assert entries[0].action == FORGET_ACTION
    assert (entries[0].actor_id, entries[0].target) == (0, None)
    assert entries[0].detail["jobs"] == 5 and entries[0].detail["models"] == 1
    assert all(isinstance(v, int | bool) for v in entries[0].detail.values())
    rows = await backend.repos.db.fetchall("SELECT * FROM audit_log")
    assert not [tuple(r) for r in rows if str(alice) in " ".join(map(str, tuple(r)))]
    assert [(e.action, e.actor_id) for e in entries[1:]] == [("quota.set", world.mod.id)]

    # Running it again is safe and says there was nothing left.
    again = await world.alice.slash(world.channel, "forget")
    assert "your 0 models" in again.response.embeds[0].description
    second = await world.alice.click(again.response, label="Delete everything")
    assert second.response.content == "There was nothing of yours left to delete in this server."


async def test_the_user_row_goes_when_nothing_of_theirs_is_left(
    world: World, backend: Backend, hub: StandInHub
) -> None:
    await imagine(backend, world.alice.id, world.guild.id, "a-gen-1")
    assert await backend.repos.db.fetchone("SELECT 1 FROM users WHERE id = ?", (world.alice.id,))
    shown = await world.alice.slash(world.channel, "forget")
    await world.alice.click(shown.response, label="Delete everything")
    assert not await backend.repos.db.fetchone(
        "SELECT 1 FROM users WHERE id = ?", (world.alice.id,)
    )
    assert blobs(backend) == []


async def test_a_running_job_is_stopped_and_a_second_run_finishes_it(
    world: World, backend: Backend, hub: StandInHub
) -> None:
    await train(
        backend, world.alice.id, world.guild.id, "a-train-1", "a-model-1", row_names_model=False
    )
    redis = backend.queue.redis
    await redis.set(in_progress_key_prefix + "a-train-1", b"1")  # a worker claimed it
    shown = await world.alice.slash(world.channel, "forget")
    done = await world.alice.click(shown.response, label="Delete everything")
    assert "1 job was still running: it stops within a minute" in done.response.content
    assert "Run `/forget` again then" in done.response.content
    job = await backend.repos.jobs.get("a-train-1")
    assert job is not None and job.status is JobStatus.CANCELLED
    assert await redis.zscore(abort_jobs_ss, "a-train-1") is not None  # the worker is told
    # Its photos are gone already; its spec stays, since it names the model the job may write.
    assert [k for k in blobs(backend) if "a-train-1" in k] == [keys.job_spec("a-train-1")]
    assert (await member_rows(backend, world.alice.id, world.guild.id))["usage_ledger"] == 0

    # The worker stops: arq drops its claim and records the abort; it wrote a checkpoint and
    # progress on the way out.
    now = int(time.time() * 1000)
    aborted = serialize_result(
        TRAIN_FUNCTION,
        ("a-train-1",),
        {},
        1,
        now,
        False,
        asyncio.CancelledError(),
        now,
        now,
        "a-train-1:train_model",
        TRAIN_QUEUE,
        job_id="a-train-1",
    )
    assert aborted is not None
    await redis.delete(in_progress_key_prefix + "a-train-1", job_key_prefix + "a-train-1")
    await redis.zrem(TRAIN_QUEUE, "a-train-1")
    await redis.set(result_key_prefix + "a-train-1", aborted)
    await redis.set(progress_key("a-train-1"), Progress("a-train-1", "cancelled").to_json())
    backend.store.put(keys.checkpoint("a-train-1", "step-3.npz"), b"ckpt")
    backend.store.put(keys.model("a-model-1", "lora.safetensors"), b"weights")
    again = await world.alice.slash(world.channel, "forget")
    finished = await world.alice.click(again.response, label="Delete everything")
    assert finished.response.content.startswith("Done.")
    assert await member_rows(backend, world.alice.id, world.guild.id) == dict.fromkeys(
        MEMBER_TABLES, 0
    )
    assert blobs(backend) == []
    assert "a-train-1" not in await redis_dump(backend)


async def test_a_forget_that_fails_half_way_finishes_when_run_again(
    world: World, backend: Backend, hub: StandInHub
) -> None:
    await train(backend, world.alice.id, world.guild.id, "a-train-1", "a-model-1")
    await play_worker(backend, hub, TRAIN_QUEUE)
    await deliver(backend, "a-train-1")
    hub.fail_next = True
    shown = await world.alice.slash(world.channel, "forget")
    failed = await world.alice.click(shown.response, label="Delete everything")
    assert "something went wrong on our side (error id" in failed.followups[-1].content
    assert failed.response.content == "Deleting stopped part-way. Run `/forget` again to finish."
    simcord.assert_error(world.env, ConnectionError)
    assert hub.repos == {"org/dreambot-a-model-1"}
    assert (await member_rows(backend, world.alice.id, world.guild.id))["models"] == 1

    again = await world.alice.slash(world.channel, "forget")
    done = await world.alice.click(again.response, label="Delete everything")
    assert "• 1 model copy on the Hugging Face Hub" in done.response.content
    assert hub.repos == set()
    assert blobs(backend) == []
    assert await member_rows(backend, world.alice.id, world.guild.id) == dict.fromkeys(
        MEMBER_TABLES, 0
    )


async def test_keep_and_an_expired_confirmation_delete_nothing(
    world: World, backend: Backend
) -> None:
    await imagine(backend, world.alice.id, world.guild.id, "a-gen-1")
    shown = await world.alice.slash(world.channel, "forget")
    kept = await world.alice.click(shown.response, label="Keep my data")
    assert kept.response.content == "Nothing was deleted."
    assert kept.response.components == []
    expiring = await world.alice.slash(world.channel, "forget")
    await world.env.advance_time(121)
    assert "the confirmation expired" in expiring.response.content
    assert expiring.response.components == []
    assert (await backend.repos.jobs.get("a-gen-1")) is not None
    assert await backend.queue.position("a-gen-1") == 0


async def test_a_banned_member_may_still_forget_and_stays_banned(
    world: World, backend: Backend
) -> None:
    art = world.guild.create_text_channel("art")
    settings = await backend.repos.guilds.get(world.guild.id)
    await backend.repos.guilds.save(
        replace(settings, banned_users=(world.alice.id,), allowed_channels=(art.id,))
    )
    await imagine(backend, world.alice.id, world.guild.id, "a-gen-1")
    shown = await world.alice.slash(world.channel, "forget")
    done = await world.alice.click(shown.response, label="Delete everything")
    assert "• 1 job" in done.response.content
    assert (await backend.repos.guilds.get(world.guild.id)).banned_users == (world.alice.id,)


async def test_forget_is_only_offered_in_a_server(world: World, service: DreamService) -> None:
    user = world.env.create_user("dm-user")
    assert "forget" not in user.available_commands()
    with pytest.raises(Exception, match="inside a server"):
        await service.privacy.forget(Actor(user.id, None))
