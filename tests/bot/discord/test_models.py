"""/models list | info | rename | default | delete | export through the real command tree, over
real SQLite and blobs; the Hugging Face Hub (a true boundary) is a small in-memory stand-in."""

from __future__ import annotations

import io
from dataclasses import replace
from typing import Any

import pytest
from PIL import Image

from bot.service import Backend
from storage.blobs import keys
from tests.bot.discord.conftest import World
from tests.bot.discord.imagine_support import LORA, add_model, labels

# SimCord reports Discord's 25 MiB upload limit on every interaction.
UPLOAD_LIMIT = 25 * 1024 * 1024


class HubStandIn:
    """The Hub as the bot sees it (``ModelHost``): repos that exist, links to them."""

    def __init__(self, repos: set[str]) -> None:
        self.repos = repos

    def url(self, repo: str) -> str:
        return f"https://huggingface.co/{repo}"

    def delete(self, repo: str) -> None:
        self.repos.discard(repo)


async def two_models(world: World, backend: Backend) -> None:
    await add_model(backend, world.alice.id, world.guild.id, "m-rex", "Rex", samples=4)
    await add_model(
        backend,
        world.alice.id,
        world.guild.id,
        "m-mug",
        "Mug",
        identifier="zwx",
        class_name="mug",
        day=2,
    )
    await add_model(backend, world.bob.id, world.guild.id, "m-bob", "Bobs dog")


async def test_list_shows_own_models_and_the_default(world: World, backend: Backend) -> None:
    await two_models(world, backend)
    result = await world.alice.slash(world.channel, "models list")
    assert result.response.ephemeral
    [embed] = result.response.embeds
    lines = embed.description.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("**Rex** · **default** · `sks dog` · lora · 1.2 kB")
    assert lines[1].startswith("**Mug** · `zwx mug`")
    assert "Bobs dog" not in embed.description
    empty = await world.mod.slash(world.channel, "models list")
    assert empty.response.content == "You have no models here yet. `/train` makes one."


async def test_models_of_another_server_are_not_listed_there(
    world: World, backend: Backend
) -> None:
    await add_model(backend, world.alice.id, world.guild.id + 1, "m-away", "Away")
    result = await world.alice.slash(world.channel, "models list")
    assert "no models here yet" in result.response.content


async def test_autocomplete_offers_only_ones_own_models(world: World, backend: Backend) -> None:
    await two_models(world, backend)
    choices = await world.alice.autocomplete(world.channel, "models info", "model", "")
    assert [(c["name"], c["value"]) for c in choices] == [
        ("Rex (sks dog)", "m-rex"),
        ("Mug (zwx mug)", "m-mug"),
    ]
    choices = await world.alice.autocomplete(world.channel, "models export", "model", "m")
    assert [c["value"] for c in choices] == ["m-mug"]


async def test_info_shows_the_facts_and_the_samples(world: World, backend: Backend) -> None:
    await two_models(world, backend)
    result = await world.alice.slash(world.channel, "models info", model="m-rex")
    [embed] = result.response.embeds
    fields = {f.name: f.value for f in embed.fields}
    assert embed.title == "Rex (default)"
    assert (fields["Class"], fields["Identifier"], fields["Method"], fields["Base"]) == (
        "dog",
        "`sks`",
        "lora",
        "tiny",
    )
    assert fields["Size"] == "1.2 kB"
    assert fields["Made"].startswith("<t:") and fields["Made"].endswith(":f>")
    assert "/imagine prompt: a photo of sks dog" in fields["Try"]
    [grid] = result.response.attachments
    assert grid.filename == "samples.png"
    assert Image.open(io.BytesIO(await grid.read())).size == (32 * 2 + 4, 32 * 2 + 4)
    plain = await world.alice.slash(world.channel, "models info", model="Mug")  # by name too
    assert plain.response.embeds[0].title == "Mug" and plain.response.attachments == []


async def test_someone_elses_model_is_not_found(world: World, backend: Backend) -> None:
    await two_models(world, backend)
    for command, options in (
        ("models info", {}),
        ("models rename", {"name": "Mine"}),
        ("models default", {}),
        ("models delete", {}),
        ("models export", {}),
    ):
        result = await world.alice.slash(world.channel, command, model="m-bob", **options)
        assert result.response.ephemeral
        assert "You have no model “m-bob” here" in result.response.content, command
    bobs = await backend.repos.models.get("m-bob")
    assert bobs is not None and bobs.name == "Bobs dog" and bobs.is_default
    assert backend.store.exists(keys.model("m-bob", "lora.npz"))


async def test_rename_and_a_name_clash(world: World, backend: Backend) -> None:
    await two_models(world, backend)
    result = await world.alice.slash(
        world.channel, "models rename", model="m-rex", name=" Rex  II "
    )
    assert result.response.content == "Renamed to **Rex II**."
    assert (await backend.repos.models.get("m-rex")).name == "Rex II"  # type: ignore[union-attr]
    clash = await world.alice.slash(world.channel, "models rename", model="m-rex", name="Mug")
    assert "You already have a model named **Mug**" in clash.response.content
    for bad, why in (("**bold** <@1>", "can't be a model name"), ("Base", "base model")):
        refused = await world.alice.slash(world.channel, "models rename", model="m-rex", name=bad)
        assert why in refused.response.content, bad
    assert (await backend.repos.models.get("m-rex")).name == "Rex II"  # type: ignore[union-attr]


async def test_default_moves(world: World, backend: Backend) -> None:
    await two_models(world, backend)
    result = await world.alice.slash(world.channel, "models default", model="m-mug")
    assert result.response.content.startswith("**Mug** is now your default")
    mine = {m.id: m.is_default for m in await backend.repos.models.for_owner(world.alice.id)}
    assert mine == {"m-rex": False, "m-mug": True}


async def test_delete_after_confirming_removes_row_files_and_hub_copy(
    world: World, backend: Backend
) -> None:
    hub = HubStandIn({"dreams/dreambot-m-rex", "dreams/other"})
    backend.host = hub
    await add_model(
        backend,
        world.alice.id,
        world.guild.id,
        "m-rex",
        "Rex",
        samples=2,
        hub_url=hub.url("dreams/dreambot-m-rex"),
    )
    asked = await world.alice.slash(world.channel, "models delete", model="m-rex")
    assert asked.response.ephemeral
    assert "Delete **Rex**" in asked.response.content
    assert labels(asked.response) == ["Delete it", "Keep it"]
    assert await backend.repos.models.get("m-rex") is not None  # nothing happens before the click
    done = await world.alice.click(asked.response, label="Delete it")
    assert done.response.content == "Deleted **Rex**, with its files."
    assert await backend.repos.models.get("m-rex") is None
    assert backend.store.list(keys.model_prefix("m-rex")) == []
    assert hub.repos == {"dreams/other"}


async def test_keep_it_deletes_nothing(world: World, backend: Backend) -> None:
    await two_models(world, backend)
    asked = await world.alice.slash(world.channel, "models delete", model="m-mug")
    kept = await world.alice.click(asked.response, label="Keep it")
    assert kept.response.content == "Kept **Mug**; nothing was deleted."
    assert await backend.repos.models.get("m-mug") is not None
    assert backend.store.exists(keys.model("m-mug", "lora.npz"))


@pytest.mark.simcord(settle_timeout=60)  # the bot's delivery loop ticks all through
async def test_an_unanswered_delete_expires(world: World, backend: Backend) -> None:
    await two_models(world, backend)
    asked = await world.alice.slash(world.channel, "models delete", model="m-mug")
    await world.env.advance_time(121)
    assert asked.response.content == "Nothing was deleted: **Mug** stays."
    assert await backend.repos.models.get("m-mug") is not None


async def test_export_attaches_the_weights_and_metadata(world: World, backend: Backend) -> None:
    await two_models(world, backend)
    result = await world.alice.slash(world.channel, "models export", model="m-rex")
    assert result.response.ephemeral
    files = {a.filename: a for a in result.response.attachments}
    assert sorted(files) == ["lora.npz", "model.json"]
    assert await files["lora.npz"].read() == LORA
    assert await files["model.json"].read() == backend.store.get(keys.model("m-rex", "model.json"))


async def test_export_too_large_without_hub_says_why(world: World, backend: Backend) -> None:
    await add_model(
        backend,
        world.alice.id,
        world.guild.id,
        "m-big",
        "Big",
        weights=b"\0" * (UPLOAD_LIMIT + 2**20),
    )
    result = await world.alice.slash(world.channel, "models export", model="m-big")
    assert result.response.attachments == []
    text = result.response.content
    assert "**Big** is 26 MB, more than the 25 MB Discord lets me upload here" in text
    assert "does not host models on the Hugging Face Hub" in text


async def test_export_too_large_gives_the_hub_link(world: World, backend: Backend) -> None:
    hub = HubStandIn({"dreams/dreambot-m-big"})
    backend.host = hub
    url = hub.url("dreams/dreambot-m-big")
    await add_model(
        backend,
        world.alice.id,
        world.guild.id,
        "m-big",
        "Big",
        weights=b"\0" * (UPLOAD_LIMIT + 2**20),
        hub_url=url,
    )
    result = await world.alice.slash(world.channel, "models export", model="m-big")
    assert result.response.attachments == []
    assert f"too large to upload here. Get it from {url}" in result.response.content


async def test_a_banned_member_cannot_use_models(world: World, backend: Backend) -> None:
    await two_models(world, backend)
    guild = await backend.repos.guilds.get(world.guild.id)
    await backend.repos.guilds.save(replace(guild, banned_users=(world.alice.id,)))
    for command, options in (("models list", {}), ("models export", {"model": "m-rex"})):
        result: Any = await world.alice.slash(world.channel, command, **options)
        assert "admin has blocked you" in result.response.content
