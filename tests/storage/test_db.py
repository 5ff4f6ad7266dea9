"""Migrations on real SQLite files: fresh, re-run, concurrent, failing."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path

import aiosqlite
import pytest

from storage.db import Database, Migration, load_migrations
from storage.errors import StorageError

EXPECTED_TABLES = {
    "users",
    "guild_settings",
    "limit_overrides",
    "models",
    "jobs",
    "usage_ledger",
    "consents",
    "audit_log",
    "schema_migrations",
}


def _tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {r[0] for r in rows} - {"sqlite_sequence"}


async def test_fresh_database_gets_every_table(tmp_path: Path) -> None:
    path = tmp_path / "fresh.sqlite3"
    db = await Database.open(path)
    await db.close()
    assert _tables(path) == EXPECTED_TABLES
    assert await _versions(path) == [m.version for m in load_migrations()]


async def _versions(path: Path) -> list[int]:
    with sqlite3.connect(path) as conn:
        return [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY 1")]


async def test_rerun_applies_nothing_and_keeps_data(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    db = await Database.open(path)
    await db.execute("INSERT INTO users (id, name, created_at) VALUES (1, 'ann', 'x')")
    assert await db.migrate() == []
    await db.close()
    db = await Database.open(path)
    assert await db.migrate() == []
    row = await db.fetchone("SELECT name FROM users WHERE id = 1")
    await db.close()
    assert row is not None and row[0] == "ann"


@pytest.mark.parametrize("round_", range(5))
async def test_connections_opening_and_migrating_at_once_apply_each_migration_once(
    tmp_path: Path, round_: int
) -> None:
    path = tmp_path / f"race{round_}.sqlite3"
    dbs = await asyncio.gather(*(Database.open(path, migrate=False) for _ in range(4)))
    applied = await asyncio.gather(*(d.migrate() for d in dbs))
    for d in dbs:
        await d.close()
    flat = sorted(v for versions in applied for v in versions)
    assert flat == [m.version for m in load_migrations()]


async def test_failing_migration_rolls_back_whole(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "bad.sqlite3")
    broken = Migration(999, "broken", "CREATE TABLE half (id INTEGER);\nSELECT * FROM nope;\n")
    with pytest.raises(sqlite3.OperationalError):
        await db.migrate([broken])
    assert 999 not in await db.applied_versions()
    assert await db.fetchone("SELECT name FROM sqlite_master WHERE name = 'half'") is None
    await db.close()


async def test_pragmas_wal_foreign_keys_busy_timeout(db: Database) -> None:
    mode = await db.fetchone("PRAGMA journal_mode")
    fks = await db.fetchone("PRAGMA foreign_keys")
    busy = await db.fetchone("PRAGMA busy_timeout")
    assert mode is not None and mode[0] == "wal"
    assert fks is not None and fks[0] == 1
    assert busy is not None and busy[0] >= 1000
    with pytest.raises(sqlite3.IntegrityError):
        await db.execute(
            "INSERT INTO jobs (id, kind, status, owner_id, created_at)"
            " VALUES ('j', 'train', 'queued', 424242, 'now')"
        )


async def test_transaction_rolls_back_on_error(db: Database) -> None:
    with pytest.raises(RuntimeError):
        async with db.transaction() as conn:
            await conn.execute("INSERT INTO users (id, name, created_at) VALUES (5, 'x', 'y')")
            raise RuntimeError("boom")
    assert await db.fetchone("SELECT 1 FROM users WHERE id = 5") is None


def test_migration_files_are_numbered_uniquely() -> None:
    versions = [m.version for m in load_migrations()]
    assert versions == sorted(set(versions)) and versions[0] == 1


async def test_incomplete_statement_is_refused(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "x.sqlite3")
    with pytest.raises(StorageError):
        await db.migrate([Migration(500, "cut", "CREATE TABLE t (id INTEGER")])
    await db.close()


async def test_a_second_writer_waits_at_begin_instead_of_failing_on_a_stale_read(
    tmp_path: Path,
) -> None:
    """Two processes read-modify-write one row (a quota reservation, a migration check).

    ``BEGIN IMMEDIATE`` takes the write lock at BEGIN, so the second writer waits on the busy
    timeout and then reads the first one's result. A deferred ``BEGIN`` would let it read a
    snapshot first; its write then fails ("database is locked": the snapshot is stale), which
    the busy timeout cannot cure.
    """
    path = tmp_path / "two.sqlite3"
    first, second = await Database.open(path), await Database.open(path, migrate=False)
    await first.execute("CREATE TABLE counter (id INTEGER PRIMARY KEY, value INTEGER NOT NULL)")
    await first.execute("INSERT INTO counter VALUES (1, 0)")
    first_holds_lock, second_read = asyncio.Event(), asyncio.Event()
    seen: list[int] = []

    async def increment(conn: aiosqlite.Connection) -> None:
        cur = await conn.execute("SELECT value FROM counter WHERE id = 1")
        row = await cur.fetchone()
        assert row is not None
        seen.append(row[0])
        if first_holds_lock.is_set():
            second_read.set()
        await conn.execute("UPDATE counter SET value = ? WHERE id = 1", (row[0] + 1,))

    async def first_writer() -> None:
        async with first.transaction() as conn:
            await increment(conn)
            first_holds_lock.set()
            # Commit once the second writer has read (it could, with a deferred BEGIN), or
            # after a pause in which it is stuck at BEGIN IMMEDIATE.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(second_read.wait(), 0.5)

    async def second_writer() -> None:
        await first_holds_lock.wait()
        async with second.transaction() as conn:
            await increment(conn)

    try:
        await asyncio.gather(first_writer(), second_writer())
        row = await first.fetchone("SELECT value FROM counter WHERE id = 1")
    finally:
        await first.close()
        await second.close()
    assert seen == [0, 1]
    assert row is not None and row[0] == 2
