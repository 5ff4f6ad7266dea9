"""Shared pieces of the repositories: the clock, time formats, quota windows."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import aiosqlite

from storage.db import Database
from storage.records import QuotaKind

__all__ = ["Clock", "Repo", "dt", "ensure_user", "period_for", "ts", "utcnow"]

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


def ts(value: datetime) -> str:
    return value.astimezone(UTC).isoformat()


def dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def period_for(kind: QuotaKind, now: datetime) -> str:
    """The quota window ``now`` falls in: a UTC calendar month for trainings, a day for images."""
    now = now.astimezone(UTC)
    return now.strftime("%Y-%m") if kind is QuotaKind.TRAIN else now.strftime("%Y-%m-%d")


class Repo:
    def __init__(self, db: Database, clock: Clock) -> None:
        self.db = db
        self.clock = clock

    def now(self) -> str:
        return ts(self.clock())


async def ensure_user(conn: aiosqlite.Connection, user_id: int, name: str, now: str) -> None:
    """Insert the user row if missing (every owned row references it)."""
    await conn.execute(
        "INSERT INTO users (id, name, created_at) VALUES (?, ?, ?) "
        "ON CONFLICT(id) DO UPDATE SET name = CASE WHEN excluded.name != '' "
        "THEN excluded.name ELSE users.name END",
        (user_id, name, now),
    )
