"""Jobs: one row per training or generation request, from queued to a finished state."""

from __future__ import annotations

import json
from typing import Any

import aiosqlite

from storage.errors import StorageError
from storage.records import Job, JobKind, JobStatus
from storage.repos._base import Repo, dt, ensure_user

__all__ = ["JobRepo"]

# The only moves a job's status may make; anything else is a bug or a stale message.
_ALLOWED: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.FAILED, JobStatus.CANCELLED}),
    JobStatus.RUNNING: frozenset(
        {JobStatus.QUEUED, JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}
    ),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}


def _job(row: aiosqlite.Row) -> Job:
    created = dt(row["created_at"])
    assert created is not None
    return Job(
        id=row["id"],
        kind=JobKind(row["kind"]),
        status=JobStatus(row["status"]),
        owner_id=row["owner_id"],
        guild_id=row["guild_id"],
        channel_id=row["channel_id"],
        message_id=row["message_id"],
        params=json.loads(row["params"]),
        arq_job_id=row["arq_job_id"],
        attempts=row["attempts"],
        error=row["error"],
        result=json.loads(row["result"]) if row["result"] else None,
        created_at=created,
        started_at=dt(row["started_at"]),
        finished_at=dt(row["finished_at"]),
        delivered_at=dt(row["delivered_at"]),
    )


class JobRepo(Repo):
    async def create(
        self,
        job_id: str,
        kind: JobKind,
        owner_id: int,
        *,
        guild_id: int | None = None,
        channel_id: int | None = None,
        params: dict[str, Any] | None = None,
    ) -> Job:
        async with self.db.transaction() as conn:
            now = self.now()
            await ensure_user(conn, owner_id, "", now)
            cur = await conn.execute(
                "INSERT INTO jobs (id, kind, status, owner_id, guild_id, channel_id, params,"
                " arq_job_id, created_at) VALUES (?, ?, 'queued', ?, ?, ?, ?, ?, ?) RETURNING *",
                (
                    job_id,
                    kind.value,
                    owner_id,
                    guild_id,
                    channel_id,
                    json.dumps(params or {}),
                    job_id,
                    now,
                ),
            )
            row = await cur.fetchone()
        assert row is not None
        return _job(row)

    async def get(self, job_id: str) -> Job | None:
        row = await self.db.fetchone("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return _job(row) if row else None

    async def transition(
        self,
        job_id: str,
        status: JobStatus,
        *,
        error: str | None = None,
        result: dict[str, Any] | None = None,
    ) -> Job:
        """Move a job to ``status`` if that move is allowed; raises StorageError otherwise."""
        async with self.db.transaction() as conn:
            cur = await conn.execute("SELECT status FROM jobs WHERE id = ?", (job_id,))
            row = await cur.fetchone()
            if row is None:
                raise StorageError(f"no such job: {job_id}")
            current = JobStatus(row[0])
            if status not in _ALLOWED[current]:
                raise StorageError(f"job {job_id} cannot go from {current} to {status}")
            now = self.now()
            cur = await conn.execute(
                "UPDATE jobs SET status = ?, error = COALESCE(?, error),"
                " result = COALESCE(?, result),"
                " attempts = attempts + (CASE WHEN ? = 'running' THEN 1 ELSE 0 END),"
                " started_at = CASE WHEN ? = 'running' THEN ? ELSE started_at END,"
                " finished_at = CASE WHEN ? IN ('succeeded', 'failed', 'cancelled')"
                " THEN ? ELSE finished_at END WHERE id = ? RETURNING *",
                (
                    status.value,
                    error,
                    json.dumps(result) if result is not None else None,
                    status.value,
                    status.value,
                    now,
                    status.value,
                    now,
                    job_id,
                ),
            )
            updated = await cur.fetchone()
        assert updated is not None
        return _job(updated)

    async def set_message(self, job_id: str, channel_id: int, message_id: int) -> None:
        """Remember the progress message so a restarted bot can keep editing it."""
        await self.db.execute(
            "UPDATE jobs SET channel_id = ?, message_id = ? WHERE id = ?",
            (channel_id, message_id, job_id),
        )

    async def for_owner(
        self, owner_id: int, *, active_only: bool = False, guild_id: int | None = None
    ) -> list[Job]:
        sql = "SELECT * FROM jobs WHERE owner_id = ?"
        params: tuple[Any, ...] = (owner_id,)
        if active_only:
            sql += " AND status IN ('queued', 'running')"
        if guild_id is not None:
            sql += " AND guild_id = ?"
            params += (guild_id,)
        rows = await self.db.fetchall(sql + " ORDER BY created_at, id", params)
        return [_job(r) for r in rows]

    async def mark_delivered(self, job_id: str) -> bool:
        """Record that the member was told of a finished job; False if it already was."""
        return (
            await self.db.execute(
                "UPDATE jobs SET delivered_at = ? WHERE id = ? AND delivered_at IS NULL"
                " AND status IN ('succeeded', 'failed', 'cancelled')",
                (self.now(), job_id),
            )
            > 0
        )

    async def undelivered(self) -> list[Job]:
        """Finished jobs whose member was not told yet (a restart between the two)."""
        rows = await self.db.fetchall(
            "SELECT * FROM jobs WHERE status IN ('succeeded', 'failed', 'cancelled')"
            " AND delivered_at IS NULL ORDER BY finished_at, id"
        )
        return [_job(r) for r in rows]

    async def delete_member(self, owner_id: int, guild_id: int | None) -> list[str]:
        """Delete the member's job rows in one guild (None: outside any); returns their ids."""
        rows = await self.db.fetchall(
            "DELETE FROM jobs WHERE owner_id = ? AND guild_id IS ? RETURNING id",
            (owner_id, guild_id),
        )
        return [str(r[0]) for r in rows]

    async def delete(self, job_id: str) -> bool:
        """Delete one job row (``/forget``, once its worker let go of it); False if none."""
        return await self.db.execute("DELETE FROM jobs WHERE id = ?", (job_id,)) > 0

    async def active(self, kind: JobKind | None = None) -> list[Job]:
        """Queued and running jobs, oldest first (the admin's queue view, restart recovery)."""
        sql = "SELECT * FROM jobs WHERE status IN ('queued', 'running')"
        params: tuple[Any, ...] = ()
        if kind is not None:
            sql += " AND kind = ?"
            params = (kind.value,)
        rows = await self.db.fetchall(sql + " ORDER BY created_at, id", params)
        return [_job(r) for r in rows]
