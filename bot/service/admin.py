"""/admin: quotas, queue, bans, channels, blocklist, usage.

Every method checks ``require_admin`` itself, whatever the front end showed, and writes one
audit entry, reads included: looking at members' usage and jobs is access to their data, so it
is on the record too. Admins are not subject to the channel allow-list (``Backend.guard``).

A ban also cancels the member's queued and running jobs here (an admin who bans someone for
their prompts does not want those images delivered afterwards); their models and history stay,
so an unban restores them, and the member may still /forget.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Any

from bot.errors import AccessDenied, Conflict, InvalidArgument, NotFound
from bot.service.context import Actor, Backend, QuotaStatus, default_limit, quota_status
from bot.service.lifecycle import ActiveJob, JobLifecycle
from storage.records import GuildSettings, Job, LimitKind
from storage.rules import check_int

__all__ = [
    "MAX_ALLOWED_CHANNELS",
    "MAX_BLOCKED_WORDS",
    "MAX_LIMIT",
    "AdminService",
    "MemberLimits",
    "MemberUsage",
    "QuotaChange",
    "QuotaReport",
    "UsageDay",
]

# The largest value a limit may be set to (a typo of 10000000 should not go through).
MAX_LIMIT = 10_000
MAX_ALLOWED_CHANNELS = 50
MAX_BLOCKED_WORDS = 200
BLOCKED_WORD_MAX_LENGTH = 40
# A blocked word: letters and digits, inner hyphens or apostrophes ("f-word", "don't").
_BLOCKED_WORD = re.compile(r"[^\W_]+(?:['-][^\W_]+)*")
_WORD_SEPARATORS = re.compile(r"[\s,;]+")


@dataclass(frozen=True, slots=True)
class MemberLimits:
    """One member's limits here: what applies (with what is used), and their own overrides."""

    user_id: int
    status: QuotaStatus
    overrides: dict[LimitKind, int]


@dataclass(frozen=True, slots=True)
class QuotaReport:
    """The bot's defaults, the server's own values (None: the default applies), and a member's
    limits when one was asked for."""

    defaults: dict[LimitKind, int]
    guild: dict[LimitKind, int | None]
    member: MemberLimits | None = None

    def effective(self, kind: LimitKind) -> int:
        """What applies to members here without an override of their own."""
        value = self.guild[kind]
        return self.defaults[kind] if value is None else value


@dataclass(frozen=True, slots=True)
class QuotaChange:
    """One limit set or reset: for the server (``user_id`` None) or one member. ``before`` and
    ``after`` are the stored values (None: nothing of its own, the level above applies);
    ``applies`` is what now applies to them."""

    kind: LimitKind
    user_id: int | None
    before: int | None
    after: int | None
    applies: int


@dataclass(frozen=True, slots=True)
class MemberUsage:
    user_id: int
    trainings: int = 0
    images: int = 0


@dataclass(frozen=True, slots=True)
class UsageDay:
    """What members spent or hold on one UTC day ("2026-11-26"), busiest first."""

    day: str
    members: list[MemberUsage] = field(default_factory=list)


class AdminService:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.jobs = JobLifecycle(backend)

    async def _settings(self, actor: Actor) -> GuildSettings:
        self.backend.require_admin(actor)
        return await self.backend.guild(actor)

    async def _audit(self, actor: Actor, action: str, target: str | None, **detail: Any) -> None:
        await self.backend.repos.audit.log(actor.guild_id, actor.user_id, action, target, detail)

    # -- quotas ----------------------------------------------------------------------------

    async def quota_show(self, actor: Actor, user_id: int | None = None) -> QuotaReport:
        """The server's limits next to the bot's defaults; a member's own when one is named."""
        guild = await self._settings(actor)
        assert actor.guild_id is not None
        settings = self.backend.settings
        member = None
        if user_id is not None:
            member = MemberLimits(
                user_id,
                await quota_status(self.backend, Actor(user_id, actor.guild_id)),
                await self.backend.repos.quotas.overrides(user_id, actor.guild_id),
            )
        await self._audit(actor, "quota.show", _target(user_id))
        return QuotaReport(
            defaults={kind: default_limit(settings, kind) for kind in LimitKind},
            guild={kind: guild.limit(kind) for kind in LimitKind},
            member=member,
        )

    async def quota_set(
        self, actor: Actor, kind: LimitKind, value: int | None, user_id: int | None = None
    ) -> QuotaChange:
        """Set one limit for the server or one member; ``value`` None resets it, so the level
        above (the server's value, then the bot's default) applies again."""
        guild = await self._settings(actor)
        assert actor.guild_id is not None
        if value is not None:
            value = check_int(value, kind.label, 0, MAX_LIMIT)
        quotas = self.backend.repos.quotas
        if user_id is None:
            before = guild.limit(kind)
            await self.backend.repos.guilds.save(_with_limit(guild, kind, value))
        else:
            before = (await quotas.overrides(user_id, actor.guild_id)).get(kind)
            if value is None:
                await quotas.clear_override(user_id, actor.guild_id, kind)
            else:
                await quotas.set_override(user_id, actor.guild_id, kind, value)
        applies = await self.backend.limit(Actor(user_id or 0, actor.guild_id), kind)
        await self._audit(
            actor,
            "quota.set" if value is not None else "quota.reset",
            _target(user_id),
            kind=kind.value,
            before=before,
            after=value,
        )
        return QuotaChange(kind, user_id, before, value, applies)

    # -- queue -----------------------------------------------------------------------------

    async def queue(self, actor: Actor) -> list[ActiveJob]:
        """Every queued and running job in this server, oldest first."""
        self.backend.require_admin(actor)
        jobs = await self.jobs.active(actor, everyone=True)
        await self._audit(actor, "queue.show", None, jobs=len(jobs))
        return jobs

    async def cancel(self, actor: Actor, job_id: str) -> Job:
        """Cancel any job in this server; its owner's quota is given back."""
        self.backend.require_admin(actor)
        job = await self.jobs.cancel(actor, job_id)
        if job.owner_id == actor.user_id:  # the lifecycle audits cancelling someone else's
            await self._audit(actor, "job.cancel", job.id)
        return job

    # -- bans ------------------------------------------------------------------------------

    async def ban(self, actor: Actor, user_id: int, *, target_is_admin: bool = False) -> int:
        """Stop a member from using the bot here and cancel their queued and running jobs;
        returns how many were cancelled."""
        guild = await self._settings(actor)
        if user_id == actor.user_id:
            raise InvalidArgument("You can't ban yourself.")
        if target_is_admin:
            raise AccessDenied(
                "That member can manage this server, so a ban would not hold: remove their "
                "Manage Server permission first."
            )
        if user_id in guild.banned_users:
            raise Conflict(f"<@{user_id}> is already banned here.")
        await self.backend.repos.guilds.save(
            replace(guild, banned_users=(*guild.banned_users, user_id))
        )
        active = await self.backend.repos.jobs.for_owner(
            user_id, active_only=True, guild_id=actor.guild_id
        )
        for job in active:
            await self.jobs.cancel(actor, job.id)
        await self._audit(actor, "member.ban", _target(user_id), cancelled=len(active))
        return len(active)

    async def unban(self, actor: Actor, user_id: int) -> None:
        guild = await self._settings(actor)
        if user_id not in guild.banned_users:
            raise NotFound(f"<@{user_id}> is not banned here.")
        kept = tuple(banned for banned in guild.banned_users if banned != user_id)
        await self.backend.repos.guilds.save(replace(guild, banned_users=kept))
        await self._audit(actor, "member.unban", _target(user_id))

    async def banned(self, actor: Actor) -> tuple[int, ...]:
        guild = await self._settings(actor)
        await self._audit(actor, "member.bans.show", None)
        return guild.banned_users

    # -- channels --------------------------------------------------------------------------

    async def channels(self, actor: Actor) -> tuple[int, ...]:
        """The channels members may use the bot in (empty: every channel)."""
        guild = await self._settings(actor)
        await self._audit(actor, "channels.show", None)
        return guild.allowed_channels

    async def allow_channel(self, actor: Actor, channel_id: int) -> tuple[int, ...]:
        guild = await self._settings(actor)
        allowed = guild.allowed_channels
        if channel_id in allowed:
            raise Conflict(f"<#{channel_id}> is already on the list.")
        if len(allowed) >= MAX_ALLOWED_CHANNELS:
            raise InvalidArgument(f"The list holds at most {MAX_ALLOWED_CHANNELS} channels.")
        return await self._save_channels(
            actor, guild, (*allowed, channel_id), "channels.add", channel_id
        )

    async def disallow_channel(self, actor: Actor, channel_id: int) -> tuple[int, ...]:
        guild = await self._settings(actor)
        if channel_id not in guild.allowed_channels:
            raise NotFound(f"<#{channel_id}> is not on the list.")
        kept = tuple(c for c in guild.allowed_channels if c != channel_id)
        return await self._save_channels(actor, guild, kept, "channels.remove", channel_id)

    async def clear_channels(self, actor: Actor) -> tuple[int, ...]:
        guild = await self._settings(actor)
        return await self._save_channels(actor, guild, (), "channels.clear", None)

    async def _save_channels(
        self,
        actor: Actor,
        guild: GuildSettings,
        allowed: tuple[int, ...],
        action: str,
        channel_id: int | None,
    ) -> tuple[int, ...]:
        await self.backend.repos.guilds.save(replace(guild, allowed_channels=allowed))
        await self._audit(actor, action, None, channel=channel_id, channels=list(allowed))
        return allowed

    # -- blocklist -------------------------------------------------------------------------

    async def blocklist(self, actor: Actor) -> tuple[str, ...]:
        guild = await self._settings(actor)
        await self._audit(actor, "blocklist.show", None)
        return guild.prompt_blocklist

    async def block_words(self, actor: Actor, text: str) -> tuple[list[str], tuple[str, ...]]:
        """Add words (separated by spaces or commas) to the prompt blocklist; returns the words
        added and the whole list."""
        guild = await self._settings(actor)
        new = [w for w in _words(text) if w not in guild.prompt_blocklist]
        if not new:
            raise Conflict("Those words are already on the blocklist.")
        words = (*guild.prompt_blocklist, *new)
        if len(words) > MAX_BLOCKED_WORDS:
            raise InvalidArgument(f"The blocklist holds at most {MAX_BLOCKED_WORDS} words.")
        await self.backend.repos.guilds.save(replace(guild, prompt_blocklist=words))
        await self._audit(actor, "blocklist.add", None, words=new)
        return new, words

    async def unblock_words(self, actor: Actor, text: str) -> tuple[list[str], tuple[str, ...]]:
        """Remove words from the prompt blocklist; returns the words removed and the list."""
        guild = await self._settings(actor)
        gone = [w for w in _words(text) if w in guild.prompt_blocklist]
        if not gone:
            raise NotFound("None of those words is on the blocklist. `/admin blocklist list`.")
        words = tuple(w for w in guild.prompt_blocklist if w not in gone)
        await self.backend.repos.guilds.save(replace(guild, prompt_blocklist=words))
        await self._audit(actor, "blocklist.remove", None, words=gone)
        return gone, words

    # -- usage -----------------------------------------------------------------------------

    async def usage(self, actor: Actor, days: int = 7) -> list[UsageDay]:
        """Trainings and images each member spent or holds here, per UTC day, newest first."""
        self.backend.require_admin(actor)
        assert actor.guild_id is not None
        days = check_int(days, "days", 1, 31)
        rows = await self.backend.repos.quotas.usage_by_day(actor.guild_id, days)
        per_day: dict[str, dict[int, dict[str, int]]] = defaultdict(
            lambda: defaultdict(lambda: defaultdict(int))
        )
        for user_id, day, kind, amount in rows:
            per_day[day][user_id][kind] += amount
        result = [
            UsageDay(
                day,
                sorted(
                    (MemberUsage(uid, k["train"], k["images"]) for uid, k in members.items()),
                    key=lambda m: (-m.trainings, -m.images, m.user_id),
                ),
            )
            for day, members in sorted(per_day.items(), reverse=True)
        ]
        await self._audit(actor, "usage.show", None, days=days)
        return result


def _target(user_id: int | None) -> str | None:
    """The audit target of a member (their id as text), None for the server itself."""
    return None if user_id is None else str(user_id)


def _with_limit(guild: GuildSettings, kind: LimitKind, value: int | None) -> GuildSettings:
    """The server's settings with its own value of ``kind`` set (None: the default applies)."""
    if kind is LimitKind.TRAIN:
        return replace(guild, train_per_month=value)
    if kind is LimitKind.IMAGES:
        return replace(guild, images_per_day=value)
    if kind is LimitKind.MODELS:
        return replace(guild, max_models=value)
    return replace(guild, max_queued_jobs=value)


def _words(text: str) -> list[str]:
    """Lower-cased, de-duplicated words; InvalidArgument names the first that is not a word."""
    words: list[str] = []
    for raw in _WORD_SEPARATORS.split(text.strip()):
        if not raw:
            continue
        word = raw.lower()
        if len(word) > BLOCKED_WORD_MAX_LENGTH or not _BLOCKED_WORD.fullmatch(word):
            raise InvalidArgument(
                f"{raw!r} is not one word: use letters and digits (inner - or ' allowed), at "
                f"most {BLOCKED_WORD_MAX_LENGTH} characters. Separate words with spaces or "
                "commas."
            )
        if word not in words:
            words.append(word)
    if not words:
        raise InvalidArgument("Name at least one word.")
    return words
