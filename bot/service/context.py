"""What every use case shares: who is asking (``Actor``), the resources (``Backend``), and the
server-side checks (banned, channel allowed, admin), so no front end can skip them.

Nothing here knows Discord: a front end builds an ``Actor`` from its own event (a Discord
interaction, later a Telegram message) and renders the ``UserFacingError``\\ s raised here.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol, TypeVar

from bot.config import BotSettings
from bot.errors import AccessDenied, InvalidArgument
from bot.queue import JobQueue
from storage.blobs import BlobStore
from storage.records import GuildSettings, LimitKind, QuotaKind
from storage.repos import Clock, Repos, utcnow

__all__ = [
    "BASE_MODEL",
    "CONSENT_TEXT",
    "CONSENT_VERSION",
    "MODEL_NAME_MAX",
    "Actor",
    "Backend",
    "ModelHost",
    "QuotaStatus",
    "Usage",
    "check_model_name",
    "default_limit",
    "guild_key",
    "next_reset",
    "quota_status",
]

# What a member picks (or types) in /imagine for the base model; no model of theirs takes it.
BASE_MODEL = "base"
MODEL_NAME_MAX = 32
# Letters and digits of any script, then also spaces, dots, hyphens and underscores: a name is
# shown in messages and typed in /imagine, so no markdown, mentions or line breaks.
_MODEL_NAME = re.compile(r"\w[\w .-]*", re.UNICODE)


def check_model_name(text: str) -> str:
    """A model name as a member typed it, trimmed; InvalidArgument when it cannot be one."""
    name = " ".join(text.split())
    if not name or len(name) > MODEL_NAME_MAX or not _MODEL_NAME.fullmatch(name):
        raise InvalidArgument(
            f"{text!r} can't be a model name: use up to {MODEL_NAME_MAX} letters, digits, "
            "spaces, dots, hyphens or underscores, e.g. my-dog."
        )
    if name.casefold() == BASE_MODEL:
        raise InvalidArgument(
            f"**{BASE_MODEL}** is how /imagine names the base model; pick another name."
        )
    return name


T = TypeVar("T")

# The consent text a member confirms before training; its version is stored with the consent.
CONSENT_TEXT = (
    "These photos are of me, or I have the permission of the person in them to train a model "
    "on them."
)
CONSENT_VERSION = "2026-11-v1"


@dataclass(frozen=True, slots=True)
class Actor:
    """The member behind one request, as the front end saw them.

    ``is_admin`` is what the platform reported for this request (on Discord the member's
    Manage Server permission in the guild, sent by Discord with the interaction, not the
    command's visibility); ``guild_id`` None is a direct message.
    """

    user_id: int
    guild_id: int | None
    channel_id: int | None = None
    name: str = ""
    is_admin: bool = False


def guild_key(actor: Actor) -> int:
    """The ledger's guild column: 0 outside any guild."""
    return actor.guild_id or 0


class ModelHost(Protocol):
    """Where trained models may also be published (the Hugging Face Hub): the narrow door the
    bot deletes through on /forget and links to on export."""

    def url(self, repo: str) -> str: ...

    def delete(self, repo: str) -> None: ...


@dataclass
class Backend:
    """The resources every use case needs, built once by the entry point and injected."""

    settings: BotSettings
    repos: Repos
    queue: JobQueue
    store: BlobStore
    host: ModelHost | None = None
    # The base model the workers run (MODEL_PRESET, passed in by the composition root): a
    # training spec must name it, with ``settings.train_resolution``, or workers refuse it.
    preset: str = "sd-v1"
    clock: Clock = field(default=utcnow)

    async def blob(self, call: Callable[..., T], *args: object) -> T:
        """Run a blocking blob-store call off the event loop."""
        return await asyncio.to_thread(call, *args)

    async def guild(self, actor: Actor) -> GuildSettings:
        return await self.repos.guilds.get(guild_key(actor))

    async def guard(self, actor: Actor) -> GuildSettings:
        """Refuse a banned member, or a channel the server has not allowed (admins may act
        anywhere). Every member-facing use case calls this first."""
        if actor.guild_id is None:
            # A DM has no server: no ban, channel list, blocklist or quota of one would apply.
            raise AccessDenied(
                "dreambot works inside a server: use its commands in one of the server's channels."
            )
        guild = await self.guild(actor)
        if actor.user_id in guild.banned_users:
            raise AccessDenied(
                "You can't use this bot in this server: a server admin has blocked you. Ask them "
                "if you think this is a mistake."
            )
        allowed = guild.allowed_channels
        if allowed and actor.channel_id not in allowed and not actor.is_admin:
            where = ", ".join(f"<#{channel}>" for channel in allowed)
            raise AccessDenied(f"This bot works only in these channels here: {where}.")
        return guild

    def require_admin(self, actor: Actor) -> None:
        """Admin use cases check this themselves, whatever the front end showed."""
        if actor.guild_id is None:
            raise AccessDenied("Admin commands work only inside a server.")
        if not actor.is_admin:
            raise AccessDenied("Only server admins (Manage Server) can do that.")

    async def limit(self, actor: Actor, kind: LimitKind) -> int:
        """The limit that applies to this member here: their override, the guild's, the bot's."""
        return await self.repos.quotas.limit(
            actor.user_id, guild_key(actor), kind, default_limit(self.settings, kind)
        )


def default_limit(settings: BotSettings, kind: LimitKind) -> int:
    """The bot-wide default of each limit (an admin may change it per guild and per member)."""
    return {
        LimitKind.TRAIN: settings.quota_train_per_month,
        LimitKind.IMAGES: settings.quota_images_per_day,
        LimitKind.MODELS: settings.quota_max_models,
        LimitKind.QUEUED: settings.max_concurrent_jobs_per_user,
    }[kind]


def next_reset(kind: QuotaKind, now: datetime) -> datetime:
    """When the current window of ``kind`` ends (UTC midnight, or the 1st of next month)."""
    now = now.astimezone(UTC)
    if kind is QuotaKind.IMAGES:
        return datetime(now.year, now.month, now.day, tzinfo=UTC) + timedelta(days=1)
    year, month = (now.year + 1, 1) if now.month == 12 else (now.year, now.month + 1)
    return datetime(year, month, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Usage:
    """One limit: what is used of it now, and when the window resets (None: it never does)."""

    kind: LimitKind
    used: int
    limit: int
    resets_at: datetime | None

    @property
    def left(self) -> int:
        return max(0, self.limit - self.used)


@dataclass(frozen=True, slots=True)
class QuotaStatus:
    trainings: Usage
    images: Usage
    models: Usage
    queued: Usage

    @property
    def all(self) -> tuple[Usage, ...]:
        return (self.trainings, self.images, self.models, self.queued)


async def quota_status(backend: Backend, actor: Actor) -> QuotaStatus:
    """Every limit of this member here, with what is used and when it resets."""
    now = backend.clock()
    repos, key = backend.repos, guild_key(actor)
    windows: list[Usage] = []
    for quota, kind in ((QuotaKind.TRAIN, LimitKind.TRAIN), (QuotaKind.IMAGES, LimitKind.IMAGES)):
        used, limit = await repos.quotas.usage(
            actor.user_id, key, quota, default_limit(backend.settings, kind)
        )
        windows.append(Usage(kind, used, limit, next_reset(quota, now)))
    models = await repos.models.for_owner(actor.user_id, actor.guild_id)
    active = await repos.jobs.for_owner(actor.user_id, active_only=True, guild_id=actor.guild_id)
    return QuotaStatus(
        trainings=windows[0],
        images=windows[1],
        models=Usage(
            LimitKind.MODELS, len(models), await backend.limit(actor, LimitKind.MODELS), None
        ),
        queued=Usage(
            LimitKind.QUEUED, len(active), await backend.limit(actor, LimitKind.QUEUED), None
        ),
    )
