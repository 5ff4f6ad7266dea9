"""Trained models: one row per exported model, one default per owner."""

from __future__ import annotations

from datetime import datetime

import aiosqlite

from storage.errors import StorageError
from storage.records import ModelRecord, TrainMethod
from storage.repos._base import Repo, ensure_user, ts

__all__ = ["ModelRepo"]


def _model(row: aiosqlite.Row) -> ModelRecord:
    return ModelRecord(
        id=row["id"],
        owner_id=row["owner_id"],
        guild_id=row["guild_id"],
        name=row["name"],
        class_name=row["class_name"],
        identifier=row["identifier"],
        preset=row["preset"],
        method=TrainMethod(row["method"]),
        blob_key=row["blob_key"],
        sha256=row["sha256"],
        size_bytes=row["size_bytes"],
        created_at=datetime.fromisoformat(row["created_at"]),
        is_default=bool(row["is_default"]),
        hub_url=row["hub_url"],
    )


class ModelRepo(Repo):
    async def add(self, model: ModelRecord) -> ModelRecord:
        """Insert a model; the first model of a user becomes their default."""
        async with self.db.transaction() as conn:
            await ensure_user(conn, model.owner_id, "", self.now())
            cur = await conn.execute(
                "SELECT COUNT(*) FROM models WHERE owner_id = ? AND is_default = 1",
                (model.owner_id,),
            )
            row = await cur.fetchone()
            make_default = model.is_default or (row is not None and row[0] == 0)
            if make_default:
                await conn.execute(
                    "UPDATE models SET is_default = 0 WHERE owner_id = ?", (model.owner_id,)
                )
            cur = await conn.execute(
                "INSERT INTO models (id, owner_id, guild_id, name, class_name, identifier, preset,"
                " method, blob_key, sha256, size_bytes, created_at, is_default, hub_url)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING *",
                (
                    model.id,
                    model.owner_id,
                    model.guild_id,
                    model.name,
                    model.class_name,
                    model.identifier,
                    model.preset,
                    model.method.value,
                    model.blob_key,
                    model.sha256,
                    model.size_bytes,
                    ts(model.created_at),
                    int(make_default),
                    model.hub_url,
                ),
            )
            inserted = await cur.fetchone()
        assert inserted is not None
        return _model(inserted)

    async def get(self, model_id: str) -> ModelRecord | None:
        row = await self.db.fetchone("SELECT * FROM models WHERE id = ?", (model_id,))
        return _model(row) if row else None

    async def for_owner(self, owner_id: int, guild_id: int | None = None) -> list[ModelRecord]:
        """The owner's models, oldest first; only those trained in ``guild_id`` when given."""
        if guild_id is None:
            rows = await self.db.fetchall(
                "SELECT * FROM models WHERE owner_id = ? ORDER BY created_at, id", (owner_id,)
            )
        else:
            rows = await self.db.fetchall(
                "SELECT * FROM models WHERE owner_id = ? AND guild_id = ? ORDER BY created_at, id",
                (owner_id, guild_id),
            )
        return [_model(r) for r in rows]

    async def by_name(self, owner_id: int, name: str) -> ModelRecord | None:
        row = await self.db.fetchone(
            "SELECT * FROM models WHERE owner_id = ? AND name = ?", (owner_id, name)
        )
        return _model(row) if row else None

    async def rename(self, owner_id: int, model_id: str, name: str) -> bool:
        """Rename one of the owner's models; False when it is not theirs. A name the owner
        already uses raises StorageError (names are unique per owner)."""
        try:
            changed = await self.db.execute(
                "UPDATE models SET name = ? WHERE id = ? AND owner_id = ?",
                (name, model_id, owner_id),
            )
        except aiosqlite.IntegrityError as exc:
            raise StorageError(f"model name {name!r} is taken") from exc
        return changed > 0

    async def set_default(self, owner_id: int, model_id: str) -> bool:
        async with self.db.transaction() as conn:
            cur = await conn.execute(
                "SELECT 1 FROM models WHERE id = ? AND owner_id = ?", (model_id, owner_id)
            )
            if await cur.fetchone() is None:
                return False
            await conn.execute("UPDATE models SET is_default = 0 WHERE owner_id = ?", (owner_id,))
            await conn.execute("UPDATE models SET is_default = 1 WHERE id = ?", (model_id,))
        return True

    async def delete(self, owner_id: int, model_id: str) -> bool:
        """Delete one of the owner's models; their oldest other model becomes the default."""
        async with self.db.transaction() as conn:
            cur = await conn.execute(
                "DELETE FROM models WHERE id = ? AND owner_id = ? RETURNING is_default",
                (model_id, owner_id),
            )
            row = await cur.fetchone()
            if row is None:
                return False
            if row[0]:
                await conn.execute(
                    "UPDATE models SET is_default = 1 WHERE id = (SELECT id FROM models"
                    " WHERE owner_id = ? ORDER BY created_at, id LIMIT 1)",
                    (owner_id,),
                )
        return True

    async def delete_member(self, owner_id: int, guild_id: int | None) -> list[str]:
        """Delete the owner's models trained in one guild (``/forget``); returns their ids. When
        their default goes with them, their oldest model elsewhere becomes the default."""
        async with self.db.transaction() as conn:
            cur = await conn.execute(
                "DELETE FROM models WHERE owner_id = ? AND guild_id IS ? RETURNING id, is_default",
                (owner_id, guild_id),
            )
            rows = list(await cur.fetchall())
            if any(row[1] for row in rows):
                await conn.execute(
                    "UPDATE models SET is_default = 1 WHERE id = (SELECT id FROM models"
                    " WHERE owner_id = ? ORDER BY created_at, id LIMIT 1)",
                    (owner_id,),
                )
        return [str(row[0]) for row in rows]
