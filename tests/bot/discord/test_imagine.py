"""/imagine, its progress and result messages, and the Re-roll / V1..V4 / Delete buttons, through
the real command tree over real SQLite, Redis and blobs. No worker runs: a test plays the
worker's and delivery's part where it needs a finished job."""

from __future__ import annotations

import gzip
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import simcord

from bot.service import Backend
from bot.service.prompts import TokenCounter, check_blocklist, pre_tokens
from storage.errors import InvalidArgument
from storage.jobs import GenerateSpec
from storage.records import (
    JobKind,
    JobStatus,
    LedgerState,
    LimitKind,
    QuotaKind,
)
from storage.rules import MAX_SAMPLER_STEPS
from tests.bot.discord.conftest import World, callback_types
from tests.bot.discord.imagine_support import (
    add_model,
    only_job,
    queued_ids,
    spec_of,
)

# -- /imagine -------------------------------------------------------------------------------


async def test_imagine_queues_the_job_and_posts_a_progress_message(
    world: World, backend: Backend
) -> None:
    await add_model(backend, world.alice.id, world.guild.id, "m-rex", "Rex")
    mark = len(world.env.http_requests)
    result = await world.alice.slash(
        world.channel,
        "imagine",
        prompt="a dog on the beach",
        negative="blurry",
        count=2,
        steps=20,
        guidance=5.0,
        seed=100,
    )
    assert callback_types(world.env, mark) == [5]  # deferred first
    reply = result.response
    assert reply.ephemeral
    assert "Queued 2 images with **Rex**" in reply.content
    assert "Seeds: `100` `101`" in reply.content
    assert "put `sks` in the prompt to draw your subject" in reply.content  # the hint

    job = await only_job(backend, world.alice.id)
    assert (job.kind, job.status, job.guild_id) == (
        JobKind.GENERATE,
        JobStatus.QUEUED,
        world.guild.id,
    )
    assert job.params == {
        "prompt": "a dog on the beach",
        "negative": "blurry",
        "count": 2,
        "steps": 20,
        "guidance": 5.0,
        "seeds": [100, 101],
        "model_id": "m-rex",
        "model_name": "Rex",
    }
    [held] = await backend.repos.quotas.for_job(job.id)
    assert (held.kind, held.amount, held.state) == (QuotaKind.IMAGES, 2, LedgerState.RESERVED)
    assert spec_of(backend, job.id) == GenerateSpec(
        job_id=job.id,
        prompt="a dog on the beach",
        model_id="m-rex",
        model_prefix="models/m-rex/",
        negative_prompt="blurry",
        n_images=2,
        steps=20,
        guidance=5.0,
        seeds=[100, 101],
    )
    assert await queued_ids(backend) == [job.id]

    # the progress message is a normal channel message everyone sees, remembered on the row
    progress = [m for m in world.channel.history(viewer=world.bob) if "is imagining" in m.content]
    assert len(progress) == 1
    assert job.message_id == progress[0].id and job.channel_id == world.channel.id
    assert "“a dog on the beach”" in progress[0].content
    assert "next in line" in progress[0].content


async def test_no_hint_when_the_prompt_has_the_identifier(world: World, backend: Backend) -> None:
    await add_model(backend, world.alice.id, world.guild.id, "m-rex", "Rex")
    result = await world.alice.slash(world.channel, "imagine", prompt="a photo of SKS dog")
    assert "Queued 4 images with **Rex**" in result.response.content
    assert "💡" not in result.response.content


async def test_the_default_model_is_used_when_none_is_named(world: World, backend: Backend) -> None:
    await add_model(backend, world.alice.id, world.guild.id, "m-first", "First")
    await add_model(backend, world.alice.id, world.guild.id, "m-second", "Second", is_default=True)
    await world.alice.slash(world.channel, "imagine", prompt="a photo of sks dog")
    job = await only_job(backend, world.alice.id)
    assert spec_of(backend, job.id).model_id == "m-second"


async def test_the_base_model_without_models_of_ones_own(world: World, backend: Backend) -> None:
    result = await world.bob.slash(world.channel, "imagine", prompt="a red car", count=1)
    assert "with the base model" in result.response.content
    assert "💡" not in result.response.content
    spec = spec_of(backend, (await only_job(backend, world.bob.id)).id)
    assert (spec.model_id, spec.model_prefix, spec.n_images, len(spec.seeds)) == (None, None, 1, 1)
    assert 0 <= spec.seeds[0] < 2**32


async def test_base_can_be_picked_over_ones_default(world: World, backend: Backend) -> None:
    await add_model(backend, world.alice.id, world.guild.id, "m-rex", "Rex")
    await world.alice.slash(world.channel, "imagine", prompt="a red car", model="base")
    assert spec_of(backend, (await only_job(backend, world.alice.id)).id).model_id is None


async def test_autocomplete_lists_only_ones_own_models(world: World, backend: Backend) -> None:
    await add_model(backend, world.alice.id, world.guild.id, "m-rex", "Rex")
    await add_model(backend, world.alice.id, world.guild.id, "m-mug", "Mug", identifier="zwx")
    await add_model(backend, world.bob.id, world.guild.id, "m-bob", "Bobs dog")
    choices = await world.alice.autocomplete(world.channel, "imagine", "model", "")
    assert [c["value"] for c in choices] == ["m-rex", "m-mug", "base"]
    assert choices[0]["name"] == "Rex (sks dog) · default"
    typed = await world.alice.autocomplete(world.channel, "imagine", "model", "mu")
    assert [c["value"] for c in typed] == ["m-mug"]
    assert [
        c["value"] for c in await world.alice.autocomplete(world.channel, "imagine", "model", "bob")
    ] == []


async def test_someone_elses_model_is_refused(world: World, backend: Backend) -> None:
    await add_model(backend, world.bob.id, world.guild.id, "m-bob", "Bobs dog")
    result = await world.alice.slash(world.channel, "imagine", prompt="sks dog", model="m-bob")
    assert result.response.ephemeral
    assert "another member's model" in result.response.content
    assert await backend.repos.jobs.for_owner(world.alice.id) == []
    assert await queued_ids(backend) == []
    missing = await world.alice.slash(world.channel, "imagine", prompt="sks dog", model="nope")
    assert "You have no model “nope” here" in missing.response.content


async def test_a_blocked_word_is_refused_and_named(world: World, backend: Backend) -> None:
    guild = await backend.repos.guilds.get(world.guild.id)
    await backend.repos.guilds.save(replace(guild, prompt_blocklist=("gore",)))
    result = await world.alice.slash(world.channel, "imagine", prompt="a GORE, scene")
    assert "does not allow “gore”" in result.response.content
    assert await backend.repos.jobs.for_owner(world.alice.id) == []
    used, _ = await backend.repos.quotas.usage(world.alice.id, world.guild.id, QuotaKind.IMAGES, 50)
    assert used == 0
    ok = await world.alice.slash(world.channel, "imagine", prompt="a gorest of gorey trees")
    assert "Queued" in ok.response.content  # whole words only


async def test_a_too_long_prompt_is_refused(world: World, backend: Backend) -> None:
    fits = " ".join(["dog"] * 75)
    ok = await world.alice.slash(world.channel, "imagine", prompt=fits, count=1)
    assert "Queued" in ok.response.content
    result = await world.alice.slash(world.channel, "imagine", prompt=fits + " dog", count=1)
    assert "too long: it is at least 76 tokens and at most 75 fit" in result.response.content
    assert len(await backend.repos.jobs.for_owner(world.alice.id)) == 1
    negative = await world.alice.slash(
        world.channel, "imagine", prompt="a dog", negative=fits + ", cat", count=1
    )
    assert "The negative prompt is too long" in negative.response.content


async def test_over_the_image_quota_nothing_is_queued(world: World, backend: Backend) -> None:
    await backend.repos.quotas.set_override(world.alice.id, world.guild.id, LimitKind.IMAGES, 3)
    result = await world.alice.slash(world.channel, "imagine", prompt="a red car", count=4)
    assert "You have used 0 of your 3 images today; this needs 4 more." in result.response.content
    assert await backend.repos.jobs.for_owner(world.alice.id) == []
    assert await queued_ids(backend) == []
    assert [m for m in world.channel.history() if "is imagining" in m.content] == []


async def test_too_many_jobs_at_once_is_refused(world: World, backend: Backend) -> None:
    await backend.repos.quotas.set_override(world.alice.id, world.guild.id, LimitKind.QUEUED, 1)
    assert (
        "Queued"
        in (await world.alice.slash(world.channel, "imagine", prompt="a car")).response.content
    )
    second = await world.alice.slash(world.channel, "imagine", prompt="a car")
    assert "You already have 1 job queued or running" in second.response.content
    assert len(await queued_ids(backend)) == 1
    used, _ = await backend.repos.quotas.usage(world.alice.id, world.guild.id, QuotaKind.IMAGES, 50)
    assert used == 4


async def test_a_banned_member_is_refused(world: World, backend: Backend) -> None:
    guild = await backend.repos.guilds.get(world.guild.id)
    await backend.repos.guilds.save(replace(guild, banned_users=(world.bob.id,)))
    result = await world.bob.slash(world.channel, "imagine", prompt="a red car")
    assert "admin has blocked you" in result.response.content
    assert await queued_ids(backend) == []


async def test_a_channel_not_allowed_is_refused(world: World, backend: Backend) -> None:
    art = world.guild.create_text_channel("art")
    guild = await backend.repos.guilds.get(world.guild.id)
    await backend.repos.guilds.save(replace(guild, allowed_channels=(art.id,)))
    result = await world.alice.slash(world.channel, "imagine", prompt="a red car")
    assert f"only in these channels here: <#{art.id}>" in result.response.content
    assert await queued_ids(backend) == []
    ok = await world.alice.slash(art, "imagine", prompt="a red car")
    assert "Queued" in ok.response.content


@pytest.mark.parametrize(
    "option",
    [
        {"count": 0},
        {"count": 5},
        {"steps": 0},
        {"steps": MAX_SAMPLER_STEPS + 1},
        {"guidance": -0.5},
        {"seed": -1},
    ],
)
async def test_the_schema_holds_the_ranges(world: World, option: dict[str, Any]) -> None:
    with pytest.raises(simcord.OptionError):
        await world.alice.slash(world.channel, "imagine", prompt="a red car", **option)


async def test_a_failure_after_the_reservation_refunds_it_and_fails_the_row(
    world: World, backend: Backend
) -> None:
    backend.store.put("jobs", b"not a folder")  # the spec cannot be written under jobs/
    result = await world.alice.slash(world.channel, "imagine", prompt="a red car")
    assert "error id" in result.response.content
    simcord.assert_error(world.env, OSError)
    job = await only_job(backend, world.alice.id)
    assert job.status is JobStatus.FAILED
    assert job.delivered_at is not None  # told once, here; the delivery loop stays quiet
    [held] = await backend.repos.quotas.for_job(job.id)
    assert held.state is LedgerState.REFUNDED
    assert await queued_ids(backend) == []


# -- the prompt checks themselves -------------------------------------------------------------


def write_merges(path: Path, merges: list[str]) -> Path:
    with gzip.open(path, "wb") as fh:
        fh.write(("#version: test\n" + "\n".join(merges)).encode())
    return path


async def test_the_exact_count_follows_the_merges_file(tmp_path: Path) -> None:
    counter = TokenCounter(write_merges(tmp_path / "bpe.txt.gz", ["s k", "sk s</w>"]))
    await counter.load()
    # a(1) photo(5 bytes) of(2) sks(1 merged) dog(3) + start and end
    assert counter.count("a photo of sks dog") == 14
    assert TokenCounter().count("a photo of sks dog") == 7  # the lower bound: one per piece
    assert pre_tokens("It's 2 cats&dogs!!") == ["it", "'s", "2", "cats", "&", "dogs", "!!"]
    with pytest.raises(InvalidArgument, match="it is 76 tokens"):
        await counter.check(" ".join(["sks"] * 76))


def test_the_blocklist_matches_whole_words_and_phrases() -> None:
    check_blocklist("a gorest", ("gore",))
    with pytest.raises(InvalidArgument, match="“blood bath”"):
        check_blocklist("a Blood bath", ("x", "blood bath"))
    with pytest.raises(InvalidArgument):
        check_blocklist("(gore)", ("gore",))
