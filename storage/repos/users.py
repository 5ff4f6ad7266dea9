"""Users and per-guild settings."""

from __future__ import annotations

import json
from datetime import datetime

from storage.records import GuildSettings, User
from storage.repos._base import Repo, ensure_user

__all__ = ["GuildRepo", "UserRepo"]


class UserRepo(Repo):
    async def upsert(self, user_id: int, name: str = "") -> User:
        async with self.db.transaction() as conn:
            await ensure_user(conn, user_id, name, self.now())
            cur = await conn.execute("SELECT * FROM users WHERE id = ?", (user_id,))
            row = await cur.fetchone()
        assert row is not None
        return User(row["id"], row["name"], datetime.fromisoformat(row["created_at"]))

    async def delete(self, user_id: int) -> bool:
        """Forget a user: their models, jobs, ledger and consents go with them (cascade)."""
        return await self.db.execute("DELETE FROM users WHERE id = ?", (user_id,)) > 0

    async def delete_if_unused(self, user_id: int) -> bool:
        """Delete the user row when no job, model, ledger row, override or consent of theirs is
        left in any guild (``/forget``); False when something remains, or no row existed."""
        return (
            await self.db.execute(
                "DELETE FROM users WHERE id = ?"
                " AND NOT EXISTS (SELECT 1 FROM jobs WHERE owner_id = users.id)"
                " AND NOT EXISTS (SELECT 1 FROM models WHERE owner_id = users.id)"
                " AND NOT EXISTS (SELECT 1 FROM usage_ledger WHERE user_id = users.id)"
                " AND NOT EXISTS (SELECT 1 FROM limit_overrides WHERE user_id = users.id)"
                " AND NOT EXISTS (SELECT 1 FROM consents WHERE user_id = users.id)",
                (user_id,),
            )
            > 0
        )


class GuildRepo(Repo):
    async def get(self, guild_id: int) -> GuildSettings:
        row = await self.db.fetchone("SELECT * FROM guild_settings WHERE guild_id = ?", (guild_id,))
        if row is None:
            return GuildSettings(guild_id, None, None, (), (), ())
        return GuildSettings(
            guild_id=row["guild_id"],
            train_per_month=row["train_per_month"],
            images_per_day=row["images_per_day"],
            allowed_channels=tuple(json.loads(row["allowed_channels"])),
            prompt_blocklist=tuple(json.loads(row["prompt_blocklist"])),
            banned_users=tuple(json.loads(row["banned_users"])),
            max_models=row["max_models"],
            max_queued_jobs=row["max_queued_jobs"],
        )

    async def save(self, settings: GuildSettings) -> None:
        await self.db.execute(
            "INSERT INTO guild_settings (guild_id, train_per_month, images_per_day,"
            " allowed_channels, prompt_blocklist, banned_users, max_models, max_queued_jobs,"
            " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(guild_id) DO UPDATE SET"
            " train_per_month = excluded.train_per_month,"
            " images_per_day = excluded.images_per_day,"
            " allowed_channels = excluded.allowed_channels,"
            " prompt_blocklist = excluded.prompt_blocklist,"
            " banned_users = excluded.banned_users, max_models = excluded.max_models,"
            " max_queued_jobs = excluded.max_queued_jobs, updated_at = excluded.updated_at",
            (
                settings.guild_id,
                settings.train_per_month,
                settings.images_per_day,
                json.dumps(list(settings.allowed_channels)),
                json.dumps(list(settings.prompt_blocklist)),
                json.dumps(list(settings.banned_users)),
                settings.max_models,
                settings.max_queued_jobs,
                self.now(),
            ),
        )
