"""Consent records and the admin audit log: append-only history."""

from __future__ import annotations

import json
from typing import Any

import aiosqlite

from storage.records import AuditEntry, ConsentRecord
from storage.repos._base import Repo, dt, ensure_user

__all__ = ["AuditRepo", "ConsentRepo"]


def _consent(row: aiosqlite.Row) -> ConsentRecord:
    created = dt(row["created_at"])
    assert created is not None
    return ConsentRecord(
        row["id"], row["user_id"], row["guild_id"], row["subject"], row["text_version"], created
    )


def _audit(row: aiosqlite.Row) -> AuditEntry:
    created = dt(row["created_at"])
    assert created is not None
    return AuditEntry(
        id=row["id"],
        guild_id=row["guild_id"],
        actor_id=row["actor_id"],
        action=row["action"],
        target=row["target"],
        detail=json.loads(row["detail"]),
        created_at=created,
    )


class ConsentRepo(Repo):
    async def record(
        self, user_id: int, guild_id: int | None, subject: str, text_version: str
    ) -> ConsentRecord:
        """Store that ``user_id`` confirmed they may train on photos of ``subject``."""
        async with self.db.transaction() as conn:
            now = self.now()
            await ensure_user(conn, user_id, "", now)
            cur = await conn.execute(
                "INSERT INTO consents (user_id, guild_id, subject, text_version, created_at)"
                " VALUES (?, ?, ?, ?, ?) RETURNING *",
                (user_id, guild_id, subject, text_version, now),
            )
            row = await cur.fetchone()
        assert row is not None
        return _consent(row)

    async def for_user(self, user_id: int) -> list[ConsentRecord]:
        rows = await self.db.fetchall(
            "SELECT * FROM consents WHERE user_id = ? ORDER BY id", (user_id,)
        )
        return [_consent(r) for r in rows]

    async def delete_member(self, user_id: int, guild_id: int | None) -> int:
        """Delete the member's consents given in one guild (``/forget``); returns how many."""
        return await self.db.execute(
            "DELETE FROM consents WHERE user_id = ? AND guild_id IS ?", (user_id, guild_id)
        )


# Keys of an audit entry's detail that name the member an action was about.
_SUBJECT_KEYS = ("owner", "member")


class AuditRepo(Repo):
    async def log(
        self,
        guild_id: int | None,
        actor_id: int,
        action: str,
        target: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> AuditEntry:
        row = await self.db.fetchone(
            "INSERT INTO audit_log (guild_id, actor_id, action, target, detail, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?) RETURNING *",
            (guild_id, actor_id, action, target, json.dumps(detail or {}), self.now()),
        )
        assert row is not None
        return _audit(row)

    async def for_guild(self, guild_id: int, limit: int = 50) -> list[AuditEntry]:
        rows = await self.db.fetchall(
            "SELECT * FROM audit_log WHERE guild_id = ? ORDER BY id DESC LIMIT ?",
            (guild_id, limit),
        )
        return [_audit(r) for r in rows]

    async def forget_subject(self, guild_id: int, user_id: int) -> int:
        """Remove a member from the entries of one guild that were about them (``/forget``):
        the target and the detail keys naming them go; what was done, and by which admin,
        stays. Returns the entries changed."""
        rows = await self.db.fetchall(
            "SELECT id, target, detail FROM audit_log WHERE guild_id = ? AND (target = ?"
            " OR detail LIKE ?)",
            (guild_id, str(user_id), f"%{user_id}%"),
        )
        changed = 0
        async with self.db.transaction() as conn:
            for row in rows:
                detail = json.loads(row["detail"])
                kept = {
                    k: v for k, v in detail.items() if not (k in _SUBJECT_KEYS and v == user_id)
                }
                target = None if row["target"] == str(user_id) else row["target"]
                if kept == detail and target == row["target"]:
                    continue
                await conn.execute(
                    "UPDATE audit_log SET target = ?, detail = ? WHERE id = ?",
                    (target, json.dumps(kept), row["id"]),
                )
                changed += 1
        return changed
