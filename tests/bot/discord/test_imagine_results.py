"""/imagine after the queue: progress, the result (grid, files, seeds) and its Re-roll,
Variations and Delete buttons, for the owner, other members and admins."""

from __future__ import annotations

import io
import json
from types import SimpleNamespace
from typing import Any

import discord
from PIL import Image

from bot.delivery import Finished
from bot.frontends.discord import imagine_messages
from bot.frontends.discord.client import DreamBot
from bot.queue import JobState
from bot.queue import JobStatus as QueueStatus
from bot.service import Backend
from bot.service.imagine import VARIATION_SPREAD
from storage.blobs import keys
from storage.jobs import GenerateResult, Progress
from storage.records import (
    Job,
    JobStatus,
    LedgerState,
)
from tests.bot.discord.conftest import World
from tests.bot.discord.imagine_support import (
    add_model,
    labels,
    only_job,
    png,
    spec_of,
)

# -- progress, result and the buttons ---------------------------------------------------------

COLOURS = ((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0))


async def finished_job(world: World, backend: Backend, **options: Any) -> Job:
    """/imagine by alice, then the worker's part: it ran, stored its pictures, succeeded."""
    options = {"prompt": "a red car", "seed": 100, **options}
    await world.alice.slash(world.channel, "imagine", **options)
    job = await only_job(backend, world.alice.id)
    for index in range(int(job.params["count"])):
        backend.store.put(keys.output(job.id, index), png(COLOURS[index]))
    drawn = GenerateResult(
        job.id,
        [keys.output(job.id, i) for i in range(int(job.params["count"]))],
        job.params["seeds"],
        1.0,
    )
    await backend.repos.jobs.transition(job.id, JobStatus.RUNNING)
    return await backend.repos.jobs.transition(
        job.id, JobStatus.SUCCEEDED, result=json.loads(drawn.to_json())
    )


async def deliver(bot: DreamBot, backend: Backend, job: Job) -> Any:
    """Delivery's part: hand the finished job to the notifier, then mark it delivered (so the
    bot's own delivery loop leaves it alone); returns the result message."""
    images = tuple(backend.store.get(keys.output(job.id, i)) for i in range(job.params["count"]))
    await imagine_messages.show_finished(
        bot, Finished(job=job, images=images, seeds=tuple(job.params["seeds"]))
    )
    assert await backend.repos.jobs.mark_delivered(job.id)
    return [m for m in (await backend_history(bot, job)) if m.attachments][-1]


async def backend_history(bot: DreamBot, job: Job) -> list[Any]:
    channel = bot.get_channel(job.channel_id)  # type: ignore[arg-type]
    return [m async for m in channel.history(oldest_first=True)]  # type: ignore[union-attr]


async def test_progress_shows_the_queue_position_then_a_bar(
    world: World, backend: Backend, simcord_bot: DreamBot
) -> None:
    await world.alice.slash(world.channel, "imagine", prompt="a red car")
    job = await only_job(backend, world.alice.id)
    await imagine_messages.show_progress(
        simcord_bot, job, QueueStatus(job.id, JobState.QUEUED, position=2)
    )
    message = world.channel.history()[-1]
    assert message.id == job.message_id
    assert "Waiting: 2 jobs ahead in the queue." in message.content
    running = QueueStatus(
        job.id, JobState.RUNNING, progress=Progress(job.id, "generating", step=15, total=30)
    )
    await imagine_messages.show_progress(simcord_bot, job, running)
    message = world.channel.history()[-1]
    assert "▰▰▰▰▰▰▰▰▰▰▱▱▱▱▱▱▱▱▱▱ 50% · step 15/30" in message.content


async def test_the_result_has_a_grid_the_files_the_seeds_and_buttons(
    world: World, backend: Backend, simcord_bot: DreamBot
) -> None:
    job = await finished_job(world, backend)
    progress_id = job.message_id
    result = await deliver(simcord_bot, backend, job)
    assert f"<@{world.alice.id}>" in result.content
    assert [a.filename for a in result.attachments] == [
        "grid.png",
        "1-seed-100.png",
        "2-seed-101.png",
        "3-seed-102.png",
        "4-seed-103.png",
    ]
    grid = Image.open(io.BytesIO(await result.attachments[0].read()))
    assert grid.size == (32 * 2 + 4, 32 * 2 + 4)
    assert grid.getpixel((40, 40)) == (255, 255, 0)  # the fourth picture, bottom right
    assert await result.attachments[2].read() == png(COLOURS[1])
    [embed] = result.embeds
    assert "Seeds: `100` `101` `102` `103`" in embed.description
    assert embed.image.url == "attachment://grid.png"
    assert labels(result) == ["Re-roll", "Delete", "V1", "V2", "V3", "V4"]
    # the progress message made way for the result, which the row now points at
    assert progress_id not in [m.id for m in world.channel.history()]
    assert (await backend.repos.jobs.get(job.id)).message_id == result.id  # type: ignore[union-attr]


async def test_a_failure_says_why_and_that_the_images_were_refunded(
    world: World, backend: Backend, simcord_bot: DreamBot
) -> None:
    await world.alice.slash(world.channel, "imagine", prompt="a red car", count=2)
    job = await only_job(backend, world.alice.id)
    failed = await backend.repos.jobs.transition(job.id, JobStatus.FAILED, error="boom")
    await imagine_messages.show_finished(
        simcord_bot,
        Finished(
            job=failed, error="Model m-x was not found: it may have been deleted.", refunded=True
        ),
    )
    message = world.channel.history()[-1]
    assert message.id == job.message_id
    assert "I could not draw “a red car”" in message.content
    assert "Model m-x was not found" in message.content
    assert "The 2 images were refunded to your quota." in message.content


async def test_reroll_queues_the_same_request_with_new_seeds(
    world: World, backend: Backend, simcord_bot: DreamBot
) -> None:
    await add_model(backend, world.alice.id, world.guild.id, "m-rex", "Rex")
    job = await finished_job(world, backend, prompt="a photo of sks dog", steps=12)
    result = await deliver(simcord_bot, backend, job)
    clicked = await world.alice.click(result, label="Re-roll")
    assert clicked.response.ephemeral
    assert clicked.response.content.startswith("Re-rolling. Queued 4 images with **Rex**")
    jobs = await backend.repos.jobs.for_owner(world.alice.id)
    assert len(jobs) == 2
    again = jobs[1]
    assert again.params["source"] == job.id
    assert {k: again.params[k] for k in ("prompt", "steps", "model_id", "count")} == {
        "prompt": "a photo of sks dog",
        "steps": 12,
        "model_id": "m-rex",
        "count": 4,
    }
    assert again.params["seeds"] != job.params["seeds"]
    assert spec_of(backend, again.id).seeds == again.params["seeds"]
    [held] = await backend.repos.quotas.for_job(again.id)
    assert (held.amount, held.state) == (4, LedgerState.RESERVED)
    assert again.message_id is not None  # its own progress message


async def test_buttons_work_after_a_restart(
    world: World, backend: Backend, simcord_bot: DreamBot
) -> None:
    job = await finished_job(world, backend)
    result = await deliver(simcord_bot, backend, job)
    await world.env.restart_bot(DreamBot(simcord_bot.settings, simcord_bot.service))
    clicked = await world.alice.click(result, label="Re-roll")
    assert "Queued 4 images" in clicked.response.content
    assert len(await backend.repos.jobs.for_owner(world.alice.id)) == 2


async def test_variations_draw_near_the_chosen_seed(
    world: World, backend: Backend, simcord_bot: DreamBot
) -> None:
    job = await finished_job(world, backend, seed=5000, count=3)
    result = await deliver(simcord_bot, backend, job)
    assert labels(result) == ["Re-roll", "Delete", "V1", "V2", "V3"]
    clicked = await world.alice.click(result, label="V2")
    assert clicked.response.content.startswith("Variations of picture 2.")
    vary = (await backend.repos.jobs.for_owner(world.alice.id))[1]
    seeds = vary.params["seeds"]
    assert len(seeds) == 3 and len(set(seeds)) == 3
    assert all(abs(s - 5001) <= VARIATION_SPREAD for s in seeds)
    assert not set(seeds) & {5000, 5001, 5002}
    assert vary.params["prompt"] == "a red car" and vary.params["source"] == job.id
    assert spec_of(backend, vary.id).seeds == seeds


async def test_another_members_model_cannot_be_rerolled_by_others(
    world: World, backend: Backend, simcord_bot: DreamBot
) -> None:
    await add_model(backend, world.alice.id, world.guild.id, "m-rex", "Rex")
    job = await finished_job(world, backend, prompt="sks dog")
    result = await deliver(simcord_bot, backend, job)
    clicked = await world.bob.click(result, label="Re-roll")
    assert "drawn with another member's own model" in clicked.response.content
    assert await backend.repos.jobs.for_owner(world.bob.id) == []


async def test_delete_is_for_the_owner_or_an_admin(
    world: World, backend: Backend, simcord_bot: DreamBot
) -> None:
    job = await finished_job(world, backend)
    result = await deliver(simcord_bot, backend, job)
    refused = await world.bob.click(result, label="Delete")
    assert "Only the member who started this job, or a server admin" in refused.response.content
    assert result.id in [m.id for m in world.channel.history()]
    assert len(backend.store.list(keys.outputs_prefix(job.id))) == 4
    done = await world.alice.click(result, label="Delete")
    assert done.response.content == "Deleted those pictures."
    assert result.id not in [m.id for m in world.channel.history()]
    assert backend.store.list(keys.outputs_prefix(job.id)) == []


async def test_an_admin_may_delete_a_members_pictures_and_it_is_audited(
    world: World, backend: Backend, simcord_bot: DreamBot
) -> None:
    job = await finished_job(world, backend)
    result = await deliver(simcord_bot, backend, job)
    await world.mod.click(result, label="Delete")
    assert result.id not in [m.id for m in world.channel.history()]
    [entry] = await backend.repos.audit.for_guild(world.guild.id)
    assert (entry.action, entry.actor_id, entry.target) == ("imagine.delete", world.mod.id, job.id)


async def test_a_variation_button_names_the_picture_shown_when_one_is_missing(
    world: World, backend: Backend, simcord_bot: DreamBot
) -> None:
    job = await finished_job(world, backend, seed=7000)
    # delivery lost the second picture: it shows the other three with their own seeds
    shown = tuple(backend.store.get(keys.output(job.id, i)) for i in (0, 2, 3))
    await imagine_messages.show_finished(
        simcord_bot, Finished(job=job, images=shown, seeds=(7000, 7002, 7003))
    )
    result = world.channel.history()[-1]
    assert labels(result) == ["Re-roll", "Delete", "V1", "V2", "V3"]
    second = result.components[1].children[1]
    assert second.custom_id == f"imagine:vary:{job.id}:1:7002"  # the seed of the one shown
    await world.alice.click(result, label="V2")
    vary = (await backend.repos.jobs.for_owner(world.alice.id))[1]
    assert all(abs(s - 7002) <= VARIATION_SPREAD for s in vary.params["seeds"])


async def test_a_failed_clean_up_after_the_result_does_not_post_it_again(
    world: World, backend: Backend, simcord_bot: DreamBot, monkeypatch: Any
) -> None:
    """Removing the progress message comes after the result is out: when Discord refuses it
    (a 500 here), show_finished still returns, so delivery marks the job and posts nothing more."""
    job = await finished_job(world, backend)

    async def refuse(self: discord.Message, **_: Any) -> None:
        raise discord.HTTPException(SimpleNamespace(status=500, reason="Server Error"), "down")

    monkeypatch.setattr(discord.Message, "delete", refuse)
    await deliver(simcord_bot, backend, job)
    posted = [m for m in await backend_history(simcord_bot, job) if m.attachments]
    assert len(posted) == 1
    assert job.message_id in [m.id for m in await backend_history(simcord_bot, job)]  # kept
