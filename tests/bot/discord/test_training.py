"""/train through the real command tree: the photo report, consent, the queued job (row,
reservation, photo blobs, spec, Redis), who may train, and the service on its own."""

from __future__ import annotations

import io
from dataclasses import replace

import pytest
import simcord
from arq.connections import ArqRedis
from PIL import Image
from redis.exceptions import ConnectionError as RedisConnectionError

from bot.errors import Conflict, InvalidArgument
from bot.frontends.discord.training_views import CONSENT_LABEL
from bot.photos import PhotoInput, SetReport, Verdict
from bot.queue import JobQueue
from bot.service import CONSENT_VERSION, Actor, Backend, DreamService
from bot.service.training import TrainingService, TrainRequest
from storage.blobs import keys
from storage.jobs import TRAIN_QUEUE, TrainSpec, spec_key
from storage.records import (
    JobKind,
    LedgerState,
    LimitKind,
    QuotaKind,
)
from storage.records import JobStatus as RowStatus
from tests.bot.discord.conftest import World, callback_types
from tests.bot.discord.training_support import buttons, nothing_stored, photos, png, queued, train
from tests.bot.photos.images import textured_photo
from tests.bot.photos.test_heic import heic

# -- the happy path ----------------------------------------------------------------------


async def test_three_good_photos_report_consent_and_a_queued_job(
    world: World, backend: Backend, downloads: list[str]
) -> None:
    mark = len(world.env.http_requests)
    result = await train(world, 1, 2, 3)
    assert callback_types(world.env, mark) == [5]  # deferred first
    reply = result.response
    assert reply.ephemeral
    [embed] = reply.embeds
    assert embed.title == "Photo check: 3 of 3 usable"
    assert embed.description.splitlines() == [
        f"✅ **{i}.** dog{i}.png: Looks good." for i in (1, 2, 3)
    ]
    assert embed.fields[0].name == "Ready to train"
    assert buttons(reply) == [CONSENT_LABEL, "Add more photos", "Discard"]
    assert len(downloads) == 3
    await nothing_stored(backend, world.alice.id)  # nothing before the consent

    done = await world.alice.click(reply, label=CONSENT_LABEL)
    [job] = await backend.repos.jobs.for_owner(world.alice.id)
    assert f"Training **sks-dog** is queued with 3 photos (job `{job.id}`)" in (
        done.response.content
    )
    assert done.response.components == [] and done.response.embeds == []
    assert (job.kind, job.status, job.guild_id, job.channel_id) == (
        JobKind.TRAIN,
        RowStatus.QUEUED,
        world.guild.id,
        world.channel.id,
    )
    params = job.params
    assert {k: params[k] for k in ("name", "class_name", "identifier", "method", "photos")} == {
        "name": "sks-dog",
        "class_name": "dog",
        "identifier": "sks",
        "method": "lora",
        "photos": 3,
    }
    [reservation] = await backend.repos.quotas.for_job(job.id)
    assert (reservation.kind, reservation.amount, reservation.state) == (
        QuotaKind.TRAIN,
        1,
        LedgerState.RESERVED,
    )
    stored = backend.store.list(keys.photos_prefix(job.id))
    assert len(stored) == 3
    for key in stored:
        assert Image.open(io.BytesIO(backend.store.get(key))).size == (64, 64)
    spec = TrainSpec.from_json(backend.store.get(spec_key(job.id)))
    assert spec.photo_keys == stored
    assert (spec.model_id, spec.class_name, spec.identifier, spec.method) == (
        params["model_id"],
        "dog",
        "sks",
        "lora",
    )
    assert (spec.preset, spec.resolution) == (backend.preset, 64)
    assert await backend.queue.redis.zscore(TRAIN_QUEUE, job.id) is not None
    assert await backend.queue.position(job.id) == 0
    [consent] = await backend.repos.consents.for_user(world.alice.id)
    assert (consent.guild_id, consent.subject, consent.text_version) == (
        world.guild.id,
        "sks-dog",
        CONSENT_VERSION,
    )

    progress = world.channel.last_message
    assert not progress.flags.ephemeral  # a normal channel message, seen by everyone
    assert any(m.id == progress.id for m in world.channel.history(viewer=world.bob))
    assert progress.embeds[0].title == "Training sks-dog"
    assert "Waiting in the queue: **next in line**." in progress.embeds[0].description
    [[cancel]] = [row.children for row in progress.components]
    assert (cancel.label, cancel.custom_id) == ("Cancel", f"train:cancel:{job.id}")
    assert (await backend.repos.jobs.get(job.id)).message_id == progress.id  # type: ignore[union-attr]


async def test_a_heic_photo_from_an_iphone_is_accepted(world: World, backend: Backend) -> None:
    iphone = heic(textured_photo(9, (96, 96)))
    result = await world.alice.slash(
        world.channel,
        "train",
        class_name="dog",
        token="sks",
        name="Rex",
        photo1=("dog1.png", png(1)),
        photo2=("IMG_0001.HEIC", iphone),
        photo3=("dog3.png", png(3)),
    )
    assert result.response.embeds[0].title == "Photo check: 3 of 3 usable"
    await world.alice.click(result.response, label=CONSENT_LABEL)
    [job] = await backend.repos.jobs.for_owner(world.alice.id)
    assert job.params["name"] == "Rex"
    assert len(backend.store.list(keys.photos_prefix(job.id))) == 3


# -- bad photos --------------------------------------------------------------------------


async def test_missing_required_photos_are_refused_by_discord(world: World) -> None:
    with pytest.raises(simcord.OptionError):
        await world.alice.slash(world.channel, "train", class_name="dog", token="sks")
    with pytest.raises(simcord.OptionError):
        await world.alice.slash(
            world.channel, "train", class_name="dog", token="sks", **photos(1, 2)
        )


async def test_a_corrupt_photo_is_rejected_with_its_reason(world: World, backend: Backend) -> None:
    broken = png(3)[:200]
    result = await world.alice.slash(
        world.channel,
        "train",
        class_name="dog",
        token="sks",
        **photos(1, 2),
        photo3=("broken.png", broken),
        photo4=("dog4.png", png(4)),
    )
    [embed] = result.response.embeds
    line = embed.description.splitlines()[2]
    assert line.startswith("❌ **3.** broken.png: This image is damaged or incomplete")
    assert embed.title == "Photo check: 3 of 4 usable"
    assert embed.fields[0].name == "Ready to train (see the notes above)"
    await world.alice.click(result.response, label=CONSENT_LABEL)
    [job] = await backend.repos.jobs.for_owner(world.alice.id)
    assert job.params["photos"] == 3


async def test_a_set_that_cannot_train_says_why_and_stores_nothing(
    world: World, backend: Backend
) -> None:
    result = await world.alice.slash(
        world.channel,
        "train",
        class_name="dog",
        token="sks",
        **photos(1, 2),
        photo3=("again.png", png(1)),  # the same photo as #1
    )
    reply = result.response
    assert "can't be trained on, so nothing was stored or charged" in reply.content
    [embed] = reply.embeds
    assert "same photo as #1 (dog1.png)" in embed.description.splitlines()[2]
    assert embed.fields[0].name == "Can't train"
    assert "Only 2 of 3 photos can be used; at least 3 are needed" in embed.fields[0].value
    assert reply.components == []
    await nothing_stored(backend, world.alice.id)


async def test_an_oversize_attachment_is_rejected_without_downloading_it(
    world: World, backend: Backend, downloads: list[str]
) -> None:
    huge = png(2) + bytes(11 * 1024 * 1024)  # declared (and real) size over the 10 MiB limit
    result = await world.alice.slash(
        world.channel,
        "train",
        class_name="dog",
        token="sks",
        photo1=("dog1.png", png(1)),
        photo2=("huge.png", huge),
        photo3=("dog3.png", png(3)),
    )
    [embed] = result.response.embeds
    assert embed.description.splitlines()[1] == (
        "❌ **2.** huge.png: This file is 11.0 MB; the limit is 10.0 MB, so it was not downloaded."
    )
    assert len(downloads) == 2 and not any(url.endswith("/huge.png") for url in downloads)
    await nothing_stored(backend, world.alice.id)


async def test_a_non_image_is_rejected_without_downloading_it(
    world: World, downloads: list[str]
) -> None:
    result = await world.alice.slash(
        world.channel,
        "train",
        class_name="dog",
        token="sks",
        **photos(1, 2, 3),
        photo4=("notes.txt", b"my dog likes walks\n"),
    )
    line = result.response.embeds[0].description.splitlines()[3]
    assert line == (
        "❌ **4.** notes.txt: This file is a text file (text/plain); send a JPEG, PNG, WebP or "
        "HEIC photo instead."
    )
    assert not any(url.endswith("/notes.txt") for url in downloads)
    assert CONSENT_LABEL in buttons(result.response)  # three good photos still train


async def test_a_bad_word_is_explained(world: World) -> None:
    result = await world.alice.slash(
        world.channel, "train", class_name="my dog", token="sks", **photos(1, 2, 3)
    )
    assert "'my dog' is not a valid class word" in result.response.content


# -- who may train -----------------------------------------------------------------------


async def test_over_quota_is_a_plain_message_and_nothing_is_stored(
    world: World, backend: Backend, downloads: list[str]
) -> None:
    for _ in range(3):
        reservation = await backend.repos.quotas.reserve(
            world.alice.id, world.guild.id, QuotaKind.TRAIN, 1, 3
        )
        await backend.repos.quotas.commit(reservation.id)
    result = await train(world, 1, 2, 3)
    assert result.response.ephemeral
    assert "You have used 3 of your 3 trainings this month" in result.response.content
    assert downloads == []
    assert await backend.repos.jobs.for_owner(world.alice.id) == []
    assert backend.store.list("photos/") == []


async def test_quota_gone_by_the_time_of_consent_stores_nothing(
    world: World, backend: Backend
) -> None:
    report = await train(world, 1, 2, 3)
    await backend.repos.quotas.set_override(world.alice.id, world.guild.id, LimitKind.TRAIN, 0)
    refused = await world.alice.click(report.response, label=CONSENT_LABEL)
    assert "You have used 0 of your 0 trainings this month" in refused.followups[0].content
    await nothing_stored(backend, world.alice.id)


async def test_the_models_limit_counts_trainings_under_way(world: World, backend: Backend) -> None:
    await backend.repos.quotas.set_override(world.alice.id, world.guild.id, LimitKind.MODELS, 1)
    await queued(world, backend)
    again = await train(world, 4, 5, 6)
    assert "You have 0 models and 1 in training; you may keep 1 here" in again.response.content


async def test_a_banned_member_is_refused_before_any_download(
    world: World, backend: Backend, downloads: list[str]
) -> None:
    guild = await backend.repos.guilds.get(world.guild.id)
    await backend.repos.guilds.save(replace(guild, banned_users=(world.alice.id,)))
    result = await train(world, 1, 2, 3)
    assert "a server admin has blocked you" in result.response.content
    assert downloads == []
    await nothing_stored(backend, world.alice.id)


async def test_a_channel_not_allowed_is_refused(world: World, backend: Backend) -> None:
    bots = world.guild.create_text_channel("bots")
    guild = await backend.repos.guilds.get(world.guild.id)
    await backend.repos.guilds.save(replace(guild, allowed_channels=(bots.id,)))
    result = await train(world, 1, 2, 3)
    assert f"This bot works only in these channels here: <#{bots.id}>" in (result.response.content)
    await nothing_stored(backend, world.alice.id)


# -- the service on its own --------------------------------------------------------------


async def test_the_service_refuses_a_set_below_the_minimum(
    service: DreamService, backend: Backend
) -> None:
    actor = Actor(user_id=7, guild_id=1, channel_id=2)
    request = TrainRequest.parse("dog", "sks")
    two = await service.training.check(
        request, [PhotoInput(png(1), "a.png"), PhotoInput(png(2), "b.png")]
    )
    assert not two.can_train
    with pytest.raises(InvalidArgument, match="at least 3 are needed"):
        await service.training.start(actor, request, two, consent=True)
    forged = SetReport(two.photos, Verdict.OK, (), "fine")  # a report that claims it can train
    with pytest.raises(InvalidArgument, match="needs 3 to 25 usable photos; 2 were usable"):
        await service.training.start(actor, request, forged, consent=True)
    three = await service.training.check(request, [PhotoInput(png(i), "x.png") for i in (1, 2, 3)])
    with pytest.raises(InvalidArgument, match="needs your confirmation"):
        await service.training.start(actor, request, three, consent=False)
    await nothing_stored(backend, 7)
    assert await backend.repos.consents.for_user(7) == []


async def test_model_names_are_unique_per_member(service: DreamService, backend: Backend) -> None:
    actor = Actor(user_id=7, guild_id=1, channel_id=2)
    await backend.repos.quotas.set_override(7, 1, LimitKind.QUEUED, 5)
    request = TrainRequest.parse("dog", "sks")
    report = await service.training.check(request, [PhotoInput(png(i), "x.png") for i in (1, 2, 3)])
    first = await service.training.start(actor, request, report, consent=True)
    second = await service.training.start(actor, request, report, consent=True)
    assert (first.name, second.name) == ("sks-dog", "sks-dog-2")
    with pytest.raises(Conflict, match="You already have a model called SKS-dog"):
        await service.training.prepare(actor, TrainRequest.parse("dog", "sks", name="SKS-dog"))


async def test_a_failure_after_the_reservation_undoes_everything(
    service: DreamService, backend: Backend, unused_tcp_port: int
) -> None:
    """Redis goes away between the photo check and the queue: the quota comes back, the
    photos are deleted and the row says failed, so nothing is half-written."""
    dead = ArqRedis(host="127.0.0.1", port=unused_tcp_port, socket_connect_timeout=1)
    broken = TrainingService(replace(backend, queue=JobQueue(dead, backend.store)))
    actor = Actor(user_id=7, guild_id=1, channel_id=2)
    request = TrainRequest.parse("dog", "sks")
    report = await broken.check(request, [PhotoInput(png(i), "x.png") for i in (1, 2, 3)])
    with pytest.raises(RedisConnectionError):
        await broken.start(actor, request, report, consent=True)
    await dead.aclose()
    [job] = await backend.repos.jobs.for_owner(7)
    assert (job.status, job.error) == (RowStatus.FAILED, "The training could not be queued.")
    assert job.delivered_at is not None  # the member was told by the request that failed
    [reservation] = await backend.repos.quotas.for_job(job.id)
    assert reservation.state is LedgerState.REFUNDED
    assert backend.store.list("photos/") == [] and backend.store.list("jobs/") == []
