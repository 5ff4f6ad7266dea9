"""The usage ledger: atomic quota reservations, commits and refunds."""

from __future__ import annotations

import aiosqlite

from storage.errors import QuotaExceeded, StorageError
from storage.records import LedgerState, QuotaKind, Reservation
from storage.repos._base import Repo, ensure_user, period_for, ts

__all__ = ["QuotaRepo"]


def _reservation(row: aiosqlite.Row) -> Reservation:
    return Reservation(
        id=row["id"],
        user_id=row["user_id"],
        guild_id=row["guild_id"],
        kind=QuotaKind(row["kind"]),
        amount=row["amount"],
        period=row["period"],
        state=LedgerState(row["state"]),
        job_id=row["job_id"],
    )


class QuotaRepo(Repo):
    """Reserve on enqueue, commit on success, refund on failure or cancel."""

    async def set_override(self, user_id: int, guild_id: int, kind: QuotaKind, limit: int) -> None:
        async with self.db.transaction() as conn:
            await ensure_user(conn, user_id, "", self.now())
            await conn.execute(
                "INSERT INTO quota_overrides (user_id, guild_id, kind, limit_value)"
                " VALUES (?, ?, ?, ?) ON CONFLICT(user_id, guild_id, kind)"
                " DO UPDATE SET limit_value = excluded.limit_value",
                (user_id, guild_id, kind.value, limit),
            )

    async def clear_override(self, user_id: int, guild_id: int, kind: QuotaKind) -> None:
        await self.db.execute(
            "DELETE FROM quota_overrides WHERE user_id = ? AND guild_id = ? AND kind = ?",
            (user_id, guild_id, kind.value),
        )

    @staticmethod
    async def _limit(
        conn: aiosqlite.Connection, user_id: int, guild_id: int, kind: QuotaKind, default: int
    ) -> int:
        """User override for this guild, then for every guild, then the guild's, then default."""
        cur = await conn.execute(
            "SELECT limit_value FROM quota_overrides WHERE user_id = ? AND kind = ?"
            " AND guild_id IN (?, 0) ORDER BY guild_id = 0 LIMIT 1",
            (user_id, kind.value, guild_id),
        )
        row = await cur.fetchone()
        if row is not None:
            return int(row[0])
        column = "train_per_month" if kind is QuotaKind.TRAIN else "images_per_day"
        cur = await conn.execute(
            f"SELECT {column} FROM guild_settings WHERE guild_id = ?", (guild_id,)
        )
        row = await cur.fetchone()
        if row is not None and row[0] is not None:
            return int(row[0])
        return default

    @staticmethod
    async def _used(
        conn: aiosqlite.Connection, user_id: int, guild_id: int, kind: QuotaKind, period: str
    ) -> int:
        cur = await conn.execute(
            "SELECT COALESCE(SUM(amount), 0) FROM usage_ledger WHERE user_id = ? AND guild_id = ?"
            " AND kind = ? AND period = ? AND state IN ('reserved', 'committed')",
            (user_id, guild_id, kind.value, period),
        )
        row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def usage(
        self, user_id: int, guild_id: int, kind: QuotaKind, default_limit: int
    ) -> tuple[int, int]:
        """(used, limit) in the current window; reserved counts as used until refunded."""
        period = period_for(kind, self.clock())
        async with self.db.transaction() as conn:
            used = await self._used(conn, user_id, guild_id, kind, period)
            limit = await self._limit(conn, user_id, guild_id, kind, default_limit)
        return used, limit

    async def reserve(
        self,
        user_id: int,
        guild_id: int,
        kind: QuotaKind,
        amount: int,
        default_limit: int,
        job_id: str | None = None,
    ) -> Reservation:
        """Check and take quota in one write transaction, or raise ``QuotaExceeded``."""
        if amount <= 0:
            raise StorageError("a reservation must be for a positive amount")
        now = self.clock()
        period = period_for(kind, now)
        async with self.db.transaction() as conn:
            await ensure_user(conn, user_id, "", ts(now))
            limit = await self._limit(conn, user_id, guild_id, kind, default_limit)
            used = await self._used(conn, user_id, guild_id, kind, period)
            if used + amount > limit:
                what = "trainings this month" if kind is QuotaKind.TRAIN else "images today"
                raise QuotaExceeded(
                    f"You have used {used} of your {limit} {what}; this needs {amount} more."
                )
            cur = await conn.execute(
                "INSERT INTO usage_ledger (user_id, guild_id, kind, amount, period, state,"
                " job_id, created_at) VALUES (?, ?, ?, ?, ?, 'reserved', ?, ?) RETURNING *",
                (user_id, guild_id, kind.value, amount, period, job_id, ts(now)),
            )
            row = await cur.fetchone()
        assert row is not None
        return _reservation(row)

    async def _settle(self, reservation_id: int, state: LedgerState) -> bool:
        changed = await self.db.execute(
            "UPDATE usage_ledger SET state = ?, settled_at = ? WHERE id = ? AND state = 'reserved'",
            (state.value, self.now(), reservation_id),
        )
        return changed > 0

    async def commit(self, reservation_id: int) -> bool:
        """Mark a reservation as spent; False if it was already settled."""
        return await self._settle(reservation_id, LedgerState.COMMITTED)

    async def refund(self, reservation_id: int) -> bool:
        """Give a reservation back; False if it was already settled (refunds never double)."""
        return await self._settle(reservation_id, LedgerState.REFUNDED)

    async def get(self, reservation_id: int) -> Reservation | None:
        row = await self.db.fetchone("SELECT * FROM usage_ledger WHERE id = ?", (reservation_id,))
        return _reservation(row) if row else None

    async def for_job(self, job_id: str) -> list[Reservation]:
        rows = await self.db.fetchall("SELECT * FROM usage_ledger WHERE job_id = ?", (job_id,))
        return [_reservation(r) for r in rows]
