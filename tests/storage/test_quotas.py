"""The usage ledger: atomic reservations under a race, refunds, windows, overrides."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from storage.db import Database
from storage.errors import QuotaExceeded, StorageError
from storage.records import GuildSettings, LedgerState, QuotaKind
from storage.repos import Repos


class FakeClock:
    """An injectable clock the test moves by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


async def _race(repos_list: list[Repos], attempts: int, limit: int) -> tuple[int, int]:
    async def one(i: int) -> bool:
        repos = repos_list[i % len(repos_list)]
        try:
            await repos.quotas.reserve(7, 1, QuotaKind.IMAGES, 1, default_limit=limit)
        except QuotaExceeded:
            return False
        return True

    results = await asyncio.gather(*(one(i) for i in range(attempts)))
    return sum(results), len(results) - sum(results)


async def test_200_concurrent_reservations_on_one_connection_get_exactly_the_limit(
    repos: Repos,
) -> None:
    ok, refused = await _race([repos], 200, 10)
    assert (ok, refused) == (10, 190)
    assert await repos.quotas.usage(7, 1, QuotaKind.IMAGES, 10) == (10, 10)


async def test_200_concurrent_reservations_across_four_connections(tmp_path: Path) -> None:
    path = tmp_path / "race.sqlite3"
    dbs = [await Database.open(path) for _ in range(4)]
    try:
        ok, refused = await _race([Repos(d) for d in dbs], 200, 10)
        row = await dbs[0].fetchone(
            "SELECT COUNT(*), SUM(amount) FROM usage_ledger WHERE state = 'reserved'"
        )
    finally:
        for d in dbs:
            await d.close()
    assert (ok, refused) == (10, 190)
    assert row is not None and tuple(row) == (10, 10)


async def test_refund_restores_capacity_and_never_doubles(repos: Repos) -> None:
    held = [await repos.quotas.reserve(3, 0, QuotaKind.TRAIN, 1, default_limit=2) for _ in "ab"]
    with pytest.raises(QuotaExceeded) as err:
        await repos.quotas.reserve(3, 0, QuotaKind.TRAIN, 1, default_limit=2)
    assert "2 of your 2 trainings" in err.value.message
    assert await repos.quotas.refund(held[0].id) is True
    assert await repos.quotas.refund(held[0].id) is False
    assert await repos.quotas.commit(held[0].id) is False
    again = await repos.quotas.reserve(3, 0, QuotaKind.TRAIN, 1, default_limit=2)
    assert again.state is LedgerState.RESERVED
    with pytest.raises(QuotaExceeded):
        await repos.quotas.reserve(3, 0, QuotaKind.TRAIN, 1, default_limit=2)


async def test_commit_keeps_usage_and_cannot_be_refunded(repos: Repos) -> None:
    res = await repos.quotas.reserve(3, 0, QuotaKind.IMAGES, 4, default_limit=4)
    assert await repos.quotas.commit(res.id) is True
    assert await repos.quotas.refund(res.id) is False
    stored = await repos.quotas.get(res.id)
    assert stored is not None and stored.state is LedgerState.COMMITTED
    assert await repos.quotas.usage(3, 0, QuotaKind.IMAGES, 4) == (4, 4)


async def test_a_reservation_bigger_than_what_is_left_is_refused(repos: Repos) -> None:
    await repos.quotas.reserve(3, 0, QuotaKind.IMAGES, 3, default_limit=4)
    with pytest.raises(QuotaExceeded):
        await repos.quotas.reserve(3, 0, QuotaKind.IMAGES, 2, default_limit=4)
    await repos.quotas.reserve(3, 0, QuotaKind.IMAGES, 1, default_limit=4)
    with pytest.raises(StorageError):
        await repos.quotas.reserve(3, 0, QuotaKind.IMAGES, 0, default_limit=4)


async def test_daily_window_rolls_over_at_utc_midnight(db: Database) -> None:
    clock = FakeClock(datetime(2026, 11, 26, 23, 59, 30, tzinfo=UTC))
    repos = Repos(db, clock)
    await repos.quotas.reserve(1, 0, QuotaKind.IMAGES, 5, default_limit=5)
    with pytest.raises(QuotaExceeded):
        await repos.quotas.reserve(1, 0, QuotaKind.IMAGES, 1, default_limit=5)
    clock.now += timedelta(seconds=31)
    res = await repos.quotas.reserve(1, 0, QuotaKind.IMAGES, 5, default_limit=5)
    assert res.period == "2026-11-27"


async def test_monthly_window_rolls_over_and_ignores_days(db: Database) -> None:
    clock = FakeClock(datetime(2026, 1, 31, 12, tzinfo=UTC))
    repos = Repos(db, clock)
    await repos.quotas.reserve(1, 0, QuotaKind.TRAIN, 1, default_limit=1)
    clock.now = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(days=30, hours=23)
    with pytest.raises(QuotaExceeded):
        await repos.quotas.reserve(1, 0, QuotaKind.TRAIN, 1, default_limit=1)
    clock.now = datetime(2026, 2, 1, 0, 0, 1, tzinfo=UTC)
    assert (await repos.quotas.reserve(1, 0, QuotaKind.TRAIN, 1, default_limit=1)).period == (
        "2026-02"
    )


async def test_windows_use_utc_whatever_the_clock_zone(db: Database) -> None:
    from datetime import timezone

    tokyo = timezone(timedelta(hours=9))
    clock = FakeClock(datetime(2026, 3, 1, 8, 0, tzinfo=tokyo))  # 2026-02-28 23:00 UTC
    res = await Repos(db, clock).quotas.reserve(1, 0, QuotaKind.TRAIN, 1, default_limit=1)
    assert res.period == "2026-02"


async def test_limit_precedence_user_guild_then_guild_then_default(repos: Repos) -> None:
    q = repos.quotas
    assert await q.usage(9, 5, QuotaKind.IMAGES, 50) == (0, 50)
    await repos.guilds.save(GuildSettings(5, None, 20, (), (), ()))
    assert await q.usage(9, 5, QuotaKind.IMAGES, 50) == (0, 20)
    await q.set_override(9, 0, QuotaKind.IMAGES, 100)
    assert await q.usage(9, 5, QuotaKind.IMAGES, 50) == (0, 100)
    await q.set_override(9, 5, QuotaKind.IMAGES, 0)
    assert await q.usage(9, 5, QuotaKind.IMAGES, 50) == (0, 0)
    with pytest.raises(QuotaExceeded):
        await q.reserve(9, 5, QuotaKind.IMAGES, 1, default_limit=50)
    await q.clear_override(9, 5, QuotaKind.IMAGES)
    assert await q.usage(9, 5, QuotaKind.IMAGES, 50) == (0, 100)


async def test_quota_is_counted_per_guild(repos: Repos) -> None:
    await repos.quotas.reserve(4, 1, QuotaKind.TRAIN, 1, default_limit=1)
    await repos.quotas.reserve(4, 2, QuotaKind.TRAIN, 1, default_limit=1)
    with pytest.raises(QuotaExceeded):
        await repos.quotas.reserve(4, 1, QuotaKind.TRAIN, 1, default_limit=1)
