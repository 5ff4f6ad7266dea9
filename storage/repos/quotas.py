"""The usage ledger: atomic quota reservations, commits and refunds."""

from __future__ import annotations

from datetime import UTC, timedelta

import aiosqlite

from storage.errors import QuotaExceeded, StorageError
from storage.records import LedgerState, LimitKind, QuotaKind, Reservation
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


_GUILD_COLUMN = {
    LimitKind.TRAIN: "train_per_month",
    LimitKind.IMAGES: "images_per_day",
    LimitKind.MODELS: "max_models",
    LimitKind.QUEUED: "max_queued_jobs",
}


class QuotaRepo(Repo):
    """Reserve on enqueue, commit on success, refund on failure or cancel."""

    async def set_override(
        self, user_id: int, guild_id: int, kind: QuotaKind | LimitKind, limit: int
    ) -> None:
        """Set one member's own limit (``guild_id`` 0: in every guild)."""
        if limit < 0:
            raise StorageError("a limit must be 0 or more")
        async with self.db.transaction() as conn:
            await ensure_user(conn, user_id, "", self.now())
            await conn.execute(
                "INSERT INTO limit_overrides (user_id, guild_id, kind, limit_value)"
                " VALUES (?, ?, ?, ?) ON CONFLICT(user_id, guild_id, kind)"
                " DO UPDATE SET limit_value = excluded.limit_value",
                (user_id, guild_id, kind.value, limit),
            )

    async def clear_override(
        self, user_id: int, guild_id: int, kind: QuotaKind | LimitKind
    ) -> bool:
        """Drop one member's own limit; False when there was none."""
        changed = await self.db.execute(
            "DELETE FROM limit_overrides WHERE user_id = ? AND guild_id = ? AND kind = ?",
            (user_id, guild_id, kind.value),
        )
        return changed > 0

    async def overrides(self, user_id: int, guild_id: int) -> dict[LimitKind, int]:
        """The member's own limits in this guild (a guild-specific one wins over a global one)."""
        rows = await self.db.fetchall(
            "SELECT kind, limit_value FROM limit_overrides WHERE user_id = ?"
            " AND guild_id IN (?, 0) ORDER BY guild_id = ? ",
            (user_id, guild_id, guild_id),
        )
        return {LimitKind(r[0]): int(r[1]) for r in rows}

    async def limit(
        self, user_id: int, guild_id: int, kind: QuotaKind | LimitKind, default: int
    ) -> int:
        """The limit that applies to this member in this guild (see ``_limit``)."""
        async with self.db.transaction() as conn:
            return await self._limit(conn, user_id, guild_id, kind, default)

    @staticmethod
    async def _limit(
        conn: aiosqlite.Connection,
        user_id: int,
        guild_id: int,
        kind: QuotaKind | LimitKind,
        default: int,
    ) -> int:
        """User override for this guild, then for every guild, then the guild's, then default."""
        cur = await conn.execute(
            "SELECT limit_value FROM limit_overrides WHERE user_id = ? AND kind = ?"
            " AND guild_id IN (?, 0) ORDER BY guild_id = 0 LIMIT 1",
            (user_id, kind.value, guild_id),
        )
        row = await cur.fetchone()
        if row is not None:
            return int(row[0])
        column = _GUILD_COLUMN[LimitKind(kind.value)]
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

    async def usage_by_day(self, guild_id: int, days: int = 7) -> list[tuple[int, str, str, int]]:
        """(user_id, day, kind, amount) spent or held in this guild over the last ``days`` days,
        newest day first: the admin's usage view (refunds do not count)."""
        since = (self.clock() - timedelta(days=days - 1)).astimezone(UTC).strftime("%Y-%m-%d")
        rows = await self.db.fetchall(
            "SELECT user_id, substr(created_at, 1, 10) AS day, kind, SUM(amount)"
            " FROM usage_ledger WHERE guild_id = ? AND state IN ('reserved', 'committed')"
            " AND substr(created_at, 1, 10) >= ? GROUP BY user_id, day, kind"
            " ORDER BY day DESC, user_id, kind",
            (guild_id, since),
        )
        return [(int(r[0]), str(r[1]), str(r[2]), int(r[3])) for r in rows]

    async def delete_member(self, user_id: int, guild_id: int) -> int:
        """Forget one member's usage and overrides in one guild; returns the rows removed."""
        async with self.db.transaction() as conn:
            cur = await conn.execute(
                "DELETE FROM usage_ledger WHERE user_id = ? AND guild_id = ?", (user_id, guild_id)
            )
            removed = cur.rowcount
            cur = await conn.execute(
                "DELETE FROM limit_overrides WHERE user_id = ? AND guild_id = ?",
                (user_id, guild_id),
            )
            return removed + cur.rowcount
