"""`dreambot up` as a real process: embedded Redis + worker + bot, stopped cleanly by a signal."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import psutil
import pytest
from arq import create_pool
from arq.connections import RedisSettings

from storage.jobs import TRAIN_QUEUE
from tests.fakes.discord_http import FakeDiscord

pytestmark = pytest.mark.e2e


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DISCORD_TOKEN")}
    # The worker loads its base model at start: the tiny one, which needs no weight files.
    env.update({"DATA_DIR": str(tmp_path / "data"), "MODEL_PRESET": "tiny", **extra})
    return env


async def _up(tmp_path: Path, env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dreambot",
        "up",
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )


async def _wait_for_children(pid: int, names: set[str], timeout: float) -> list[psutil.Process]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        kids = psutil.Process(pid).children(recursive=True)
        found = {" ".join(k.cmdline()) for k in kids}
        if all(any(n in f for f in found) for n in names):
            return kids
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"children {names} not seen; have {found}")
        await asyncio.sleep(0.2)


async def _ping_worker(kids: list[psutil.Process]) -> dict[str, object]:
    """Ask the stack's own worker, through the stack's own Redis, who it is."""
    redis = next(k for k in kids if "redis-server" in k.name())
    port = next(c.laddr.port for c in redis.net_connections("tcp") if c.status == "LISTEN")
    pool = await create_pool(RedisSettings(host="127.0.0.1", port=port))
    try:
        job = await pool.enqueue_job("ping", _queue_name=TRAIN_QUEUE)
        assert job is not None
        answer: dict[str, object] = await job.result(timeout=60)
    finally:
        await pool.aclose()
    return answer


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_up_runs_everything_and_stops_cleanly_on_signal(
    tmp_path: Path, sig: signal.Signals
) -> None:
    fake = await FakeDiscord().start()
    env = _env(
        tmp_path,
        DISCORD_TOKEN="fake.token.value",
        DISCORD_API_BASE=fake.api_base,
        DISCORD_GATEWAY_URL=fake.gateway_url,
    )
    proc = await _up(tmp_path, env)
    try:
        await asyncio.wait_for(fake.gateway_asked.wait(), 60)
        kids = await _wait_for_children(proc.pid, {"redis-server", "dreambot worker"}, 60)
        answer = await _ping_worker(kids)
        worker = next(k for k in kids if "dreambot worker" in " ".join(k.cmdline()))
        proc.send_signal(sig)
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
        await fake.stop()
    text = out.decode()
    assert proc.returncode == 0, text
    assert answer["pid"] == worker.pid and answer["queue"] == TRAIN_QUEUE
    assert "stopped cleanly" in text and "embedded Redis stopped" in text
    assert "GET /api/v10/users/@me" in fake.seen
    assert any(p.endswith("/commands") for p in fake.seen)
    _gone, alive = psutil.wait_procs(kids, timeout=5)
    assert not alive, [p.cmdline() for p in alive]
    assert (tmp_path / "data" / "redis" / "appendonly.aof").exists()
    assert (tmp_path / "data" / "dreambot.sqlite3").exists()


async def test_up_stops_everything_when_discord_is_unreachable(tmp_path: Path) -> None:
    env = _env(tmp_path, DISCORD_TOKEN="fake", DISCORD_API_BASE="http://127.0.0.1:9/api/v10")
    proc = await _up(tmp_path, env)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    text = out.decode()
    assert proc.returncode == 1, text
    assert "could not reach Discord" in text and "embedded Redis stopped" in text


async def test_up_without_token_fails_fast_and_says_how_to_get_one(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    proc = await _up(tmp_path, _env(tmp_path))
    out, _ = await asyncio.wait_for(proc.communicate(), 120)  # generous: the bound is below
    elapsed = loop.time() - started
    text = out.decode()
    assert proc.returncode == 2
    assert "DISCORD_TOKEN" in text and "discord.com/developers" in text
    assert "Traceback" not in text
    assert not (tmp_path / "data" / "redis").exists()  # nothing was started
    # Refusing takes an interpreter start and the settings (about a second), not a Discord
    # connection attempt or a worker start with its imports.
    assert elapsed < 10, f"took {elapsed:.1f} s to refuse"
