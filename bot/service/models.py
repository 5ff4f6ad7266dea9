"""/models: list, info, rename, default, delete, export a member's models.

A member sees and touches only their own models, and in a server only those trained there (in
a direct message, all of theirs). Someone else's model reads as "no such model", so model ids
reveal nothing about other members.
"""

from __future__ import annotations

import logging
import posixpath
from dataclasses import dataclass
from urllib.parse import urlsplit

from bot.errors import Conflict, NotFound
from bot.service.context import MODEL_NAME_MAX, Actor, Backend, check_model_name
from storage.blobs import MODEL_METADATA_FILE, keys
from storage.errors import StorageError
from storage.records import ModelRecord, TrainMethod
from storage.rules import instance_prompt

__all__ = [
    "DEFAULT_UPLOAD_LIMIT",
    "MODEL_NAME_MAX",
    "WEIGHT_FILES",
    "ModelExport",
    "ModelInfo",
    "ModelService",
    "find_model",
    "hub_repo",
    "matching",
    "models_here",
    "size_text",
    "weights_key",
]

log = logging.getLogger(__name__)

# Discord's upload limit when the platform does not say (10 MiB per request by default).
DEFAULT_UPLOAD_LIMIT = 10 * 1024 * 1024
# The files a finished training leaves under ``models/<id>/`` (``trainer/export.py``): the
# weights, and the metadata file, which names the base the weights need.
WEIGHT_FILES = {TrainMethod.LORA: "lora.npz", TrainMethod.FULL: "unet.npz"}
SAMPLE_FILES = tuple(f"sample-{i}.png" for i in range(4))


def size_text(size: int) -> str:
    """``1.6 MB``: sizes as Discord states its upload limits (1024-based, "25 MB")."""
    value = float(size)
    for unit in ("bytes", "kB", "MB"):
        if value < 1024:
            return (
                f"{size} bytes"
                if unit == "bytes"
                else f"{value:.1f}".removesuffix(".0") + f" {unit}"
            )
        value /= 1024
    return f"{value:.1f}".removesuffix(".0") + " GB"


def weights_key(model: ModelRecord) -> str:
    """The blob key of a model's weights file (its row names it; older rows name the folder)."""
    if model.blob_key and not model.blob_key.endswith("/"):
        return model.blob_key
    return keys.model(model.id, WEIGHT_FILES[model.method])


def hub_repo(model: ModelRecord) -> str | None:
    """The Hub repo id (``owner/name``) of a hosted model, read from its link
    (``https://huggingface.co/<owner>/<name>``, as ``ModelHost.url`` builds it)."""
    if not model.hub_url:
        return None
    parts = [p for p in urlsplit(model.hub_url).path.split("/") if p]
    return "/".join(parts[-2:]) if len(parts) >= 2 else None


async def models_here(backend: Backend, actor: Actor) -> list[ModelRecord]:
    """The actor's models here, oldest first (in a DM: all of theirs)."""
    return await backend.repos.models.for_owner(actor.user_id, actor.guild_id)


async def find_model(backend: Backend, actor: Actor, key: str) -> ModelRecord | None:
    """A model by id or by name, whoever owns it (the caller decides what a stranger's means);
    None when nothing here has that id or the actor has no model by that name."""
    key = key.strip()
    model = await backend.repos.models.get(key)
    if model is None:
        model = await backend.repos.models.by_name(actor.user_id, key)
    if model is None or (actor.guild_id is not None and model.guild_id != actor.guild_id):
        return None
    return model


def matching(models: list[ModelRecord], typed: str) -> list[ModelRecord]:
    """The models whose name or identifier contains ``typed`` (or whose id it is)."""
    typed = typed.strip().lower()
    return [m for m in models if typed in m.name.lower() or typed in m.identifier or typed == m.id]


@dataclass(frozen=True, slots=True)
class ModelInfo:
    model: ModelRecord
    sample_prompt: str
    samples: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class ModelExport:
    """What /models export can give: the files to attach, else a Hub link, else why not."""

    model: ModelRecord
    files: tuple[tuple[str, bytes], ...] = ()
    hub_url: str | None = None
    reason: str | None = None


class ModelService:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    async def own(self, actor: Actor, key: str) -> ModelRecord:
        """One of the actor's models here by id or name; NotFound otherwise (a stranger's too)."""
        model = await find_model(self.backend, actor, key)
        if model is None or model.owner_id != actor.user_id:
            raise NotFound(
                f"You have no model “{key}” here. `/models list` shows yours, and `/train` "
                "makes one."
            )
        return model

    async def get(self, actor: Actor, key: str) -> ModelRecord:
        """One of the actor's models here (checked like every use case: banned, channel)."""
        await self.backend.guard(actor)
        return await self.own(actor, key)

    async def mine(self, actor: Actor) -> list[ModelRecord]:
        """The actor's models here, oldest first; ``is_default`` marks the one /imagine uses."""
        await self.backend.guard(actor)
        return await models_here(self.backend, actor)

    async def choices(self, actor: Actor, typed: str) -> list[ModelRecord]:
        """The actor's models here that match what they typed (for autocomplete)."""
        return matching(await models_here(self.backend, actor), typed)

    async def info(self, actor: Actor, key: str) -> ModelInfo:
        """A model's facts, the prompt it was trained on, and its sample images (if kept)."""
        await self.backend.guard(actor)
        model = await self.own(actor, key)
        samples = []
        for name in SAMPLE_FILES:
            try:
                samples.append(
                    await self.backend.blob(self.backend.store.get, keys.model(model.id, name))
                )
            except StorageError:
                break
        return ModelInfo(model, instance_prompt(model.identifier, model.class_name), tuple(samples))

    async def rename(self, actor: Actor, key: str, name: str) -> ModelRecord:
        """Give a model a new name, unique among the actor's models."""
        await self.backend.guard(actor)
        model = await self.own(actor, key)
        name = check_model_name(name)
        try:
            await self.backend.repos.models.rename(actor.user_id, model.id, name)
        except StorageError as exc:
            raise Conflict(
                f"You already have a model named **{name}**. Pick another name."
            ) from exc
        return await self.own(actor, model.id)

    async def set_default(self, actor: Actor, key: str) -> ModelRecord:
        """Make a model the one /imagine uses when the member names none."""
        await self.backend.guard(actor)
        model = await self.own(actor, key)
        await self.backend.repos.models.set_default(actor.user_id, model.id)
        return await self.own(actor, model.id)

    async def delete(self, actor: Actor, key: str) -> ModelRecord:
        """Delete a model for good: its files, its Hub copy, then its row (in that order, so a
        failure half way leaves a row the member can delete again)."""
        await self.backend.guard(actor)
        model = await self.own(actor, key)
        await self.backend.blob(self.backend.store.delete_prefix, keys.model_prefix(model.id))
        repo = hub_repo(model)
        if repo is not None and self.backend.host is not None:
            await self.backend.blob(self.backend.host.delete, repo)
        await self.backend.repos.models.delete(actor.user_id, model.id)
        return model

    async def export(
        self, actor: Actor, key: str, upload_limit: int = DEFAULT_UPLOAD_LIMIT
    ) -> ModelExport:
        """The model's weights and ``model.json`` when together they fit ``upload_limit``
        bytes; else its Hub link when it is hosted; else the reason it can't be exported."""
        await self.backend.guard(actor)
        model = await self.own(actor, key)
        store = self.backend.store
        wanted = [weights_key(model), keys.model(model.id, MODEL_METADATA_FILE)]
        try:
            sizes = [await self.backend.blob(store.size, key) for key in wanted]
        except StorageError as exc:
            raise NotFound(
                f"The files of **{model.name}** are no longer in storage, so it can't be "
                "exported. Train it again, or delete it with `/models delete`."
            ) from exc
        if sum(sizes) <= upload_limit:
            files = [
                (posixpath.basename(key), await self.backend.blob(store.get, key)) for key in wanted
            ]
            return ModelExport(model, files=tuple(files))
        if model.hub_url and self.backend.host is not None:
            return ModelExport(model, hub_url=model.hub_url)
        too_big = (
            f"**{model.name}** is {size_text(sum(sizes))}, more than the "
            f"{size_text(upload_limit)} Discord lets me upload here"
        )
        if self.backend.host is None:
            why = f"{too_big}, and this bot does not host models on the Hugging Face Hub."
        else:
            why = f"{too_big}, and its copy on the Hugging Face Hub is missing."
        return ModelExport(model, reason=why + " Ask the bot's operator for the file.")
