"""SQLite connection (WAL, foreign keys, busy timeout) and the migrations runner.

Only the bot writes SQLite. One ``Database`` wraps one aiosqlite connection; an asyncio lock
serialises statements and transactions on it, so coroutines never interleave inside each other's
transaction. Transactions start with ``BEGIN IMMEDIATE`` so a second process (``dreambot
migrate``, an admin script) waits on the busy timeout instead of failing half-way.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import aiosqlite

from storage.errors import StorageError

__all__ = ["Database", "Migration", "load_migrations"]

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 10_000


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations() -> list[Migration]:
    """The numbered ``NNNN_name.sql`` files shipped in ``storage/migrations``, in order."""
    found = []
    for entry in resources.files("storage.migrations").iterdir():
        name = entry.name
        if not name.endswith(".sql"):
            continue
        head, _, rest = name.partition("_")
        if not head.isdigit():
            raise StorageError(f"migration file name must start with a number: {name}")
        found.append(Migration(int(head), rest.removesuffix(".sql"), entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise StorageError(f"two migrations share a number: {versions}")
    return found


def _statements(sql: str) -> list[str]:
    """Split a script into complete statements (so they can run inside our own transaction)."""
    out: list[str] = []
    buf = ""
    for line in sql.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip():
                out.append(buf.strip())
            buf = ""
    if buf.strip() and not all(
        ln.strip().startswith("--") or not ln.strip() for ln in buf.splitlines()
    ):
        raise StorageError("migration ends with an incomplete statement")
    return out


async def _enable_wal(conn: aiosqlite.Connection) -> None:
    """Switch to WAL. The switch needs an exclusive lock and SQLite does not always wait for it
    on the busy timeout (two processes opening a new file at once), so retry briefly."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cur = await conn.execute("PRAGMA journal_mode = WAL")
            row = await cur.fetchone()
            if row is not None and str(row[0]).lower() == "wal":
                return
            raise StorageError(f"SQLite refused WAL mode (got {row[0] if row else None!r})")
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


class Database:
    """One connection to the dreambot SQLite file."""

    def __init__(self, conn: aiosqlite.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path | str, *, migrate: bool = True) -> Database:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = await aiosqlite.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
        conn.row_factory = aiosqlite.Row
        db = cls(conn, path)
        try:
            await conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            await _enable_wal(conn)
            await conn.execute("PRAGMA foreign_keys = ON")
            await conn.execute("PRAGMA synchronous = NORMAL")
            if migrate:
                await db.migrate()
        except BaseException:
            await conn.close()
            raise
        return db

    async def close(self) -> None:
        await self._conn.close()

    async def __aenter__(self) -> Database:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """An immediate (write-locked) transaction; commits on success, rolls back on error."""
        async with self._lock:
            await self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                await self._conn.execute("ROLLBACK")
                raise
            else:
                await self._conn.execute("COMMIT")

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement in autocommit mode; returns the number of rows changed."""
        async with self._lock:
            cur = await self._conn.execute(sql, params)
            return cur.rowcount

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> aiosqlite.Row | None:
        async with self._lock:
            cur = await self._conn.execute(sql, params)
            return await cur.fetchone()

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[aiosqlite.Row]:
        async with self._lock:
            cur = await self._conn.execute(sql, params)
            return list(await cur.fetchall())

    async def applied_versions(self) -> set[int]:
        rows = await self.fetchall(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
        )
        if not rows:
            return set()
        return {r[0] for r in await self.fetchall("SELECT version FROM schema_migrations")}

    async def migrate(self, migrations: Iterable[Migration] | None = None) -> list[int]:
        """Apply pending migrations, each in its own transaction; returns the versions applied.

        Safe to run again and from two processes at once: the applied set is re-read under the
        write lock, so a migration never runs twice.
        """
        pending = list(load_migrations() if migrations is None else migrations)
        applied_now: list[int] = []
        for migration in pending:
            async with self.transaction() as conn:
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations ("
                    " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
                )
                cur = await conn.execute(
                    "SELECT 1 FROM schema_migrations WHERE version = ?", (migration.version,)
                )
                if await cur.fetchone():
                    continue
                for statement in _statements(migration.sql):
                    await conn.execute(statement)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    (migration.version, migration.name, datetime.now(UTC).isoformat()),
                )
            log.info("applied migration %04d_%s", migration.version, migration.name)
            applied_now.append(migration.version)
        return applied_now
