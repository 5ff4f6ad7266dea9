"""Load on the bot: many members run /imagine at the same moment.

The real bot process (`dreambot bot`, with its own SQLite and a private redis-server) runs
against the project's fake of Discord's gateway and REST on 127.0.0.1 (tests/fakes). The fake
dispatches every member's INTERACTION_CREATE at once and records when each acknowledgement (the
interaction callback) arrives: the latency a member feels before Discord shows "thinking…".
Discord allows 3 s. No worker runs: the jobs stay queued, which is what /imagine must survive.

First the same number of /quota commands (read-only: SQLite only) as a baseline in the same
process, then /imagine (guard, quota reservation, job row, spec in the blob store, Redis enqueue,
progress message). It checks that no interaction was lost: each one was acknowledged and answered,
and each /imagine left exactly one queued job.

    .venv/bin/python -m bench.bot_load [--members 100]

Last line: ``ack_p99_ms: <float>`` (goal: under 300).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

from storage.redis_server import EmbeddedRedis
from tests.fakes.discord_gateway import FakeGateway, member

GOAL_MS = 300.0


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _burst(fake: FakeGateway, command: str, members: int, **options: object) -> list[float]:
    """Dispatch ``members`` interactions at once; the ack latency of each, in ms."""
    sent: dict[str, float] = {}
    for index in range(members):
        who = member(600000000000000000 + index, f"member{index}")
        token = await fake.slash(command, member=who, **options)
        sent[token] = time.monotonic()

    def acked() -> dict[str, float]:
        return {
            token: request.at
            for request in fake.requests
            if request.path.endswith("/callback")
            for token in (request.path.split("/")[-2],)
            if token in sent
        }

    deadline = time.monotonic() + 60
    while len(acked()) < members and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    done = acked()
    lost = set(sent) - set(done)
    if lost:
        raise SystemExit(
            f"{len(lost)} of {members} /{command} interactions were never acknowledged"
        )
    # Each was also answered: a message in the callback itself (type 4), or a followup on the
    # interaction's webhook after a defer.
    deadline = time.monotonic() + 60
    while True:
        answered = {
            token
            for r in fake.requests
            for token in sent
            if token in r.path and ("/webhooks/" in r.path or (r.json or {}).get("type") == 4)
        }
        if set(sent) <= answered or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    missing = set(sent) - answered
    if missing:
        raise SystemExit(f"{len(missing)} of {members} /{command} interactions got no answer")
    return [(done[token] - sent[token]) * 1000 for token in sent]


def _report(name: str, latencies: list[float]) -> tuple[float, float]:
    p50, p99 = _percentile(latencies, 0.5), _percentile(latencies, 0.99)
    print(
        f"{name:9s} n={len(latencies)} p50 {p50:7.1f} ms  p99 {p99:7.1f} ms  "
        f"max {max(latencies):7.1f} ms  mean {statistics.mean(latencies):7.1f} ms"
    )
    return p50, p99


async def _run(members: int, work: Path) -> float:
    redis = EmbeddedRedis(work / "redis", persist=False)
    url = redis.start()
    fake = FakeGateway()
    await fake.start()
    env = {k: v for k, v in os.environ.items() if k != "DISCORD_TOKEN"}
    env.update(
        {
            "DATA_DIR": str(work / "data"),
            "REDIS_URL": url,
            "MODEL_PRESET": "tiny",
            "TRAIN_RESOLUTION": "64",
            "DISCORD_TOKEN": "fake.token.value",
            "DISCORD_API_BASE": fake.api_base,
            "DISCORD_GATEWAY_URL": fake.gateway_url,
        }
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dreambot",
        "bot",
        cwd=work,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await asyncio.wait_for(fake.identified.wait(), 60)
        await asyncio.wait_for(fake.synced.wait(), 60)
        await asyncio.sleep(3)  # discord.py waits for guilds before it dispatches commands
        print(f"{members} members at once, bot pid {proc.pid}, 2 cores shared with the fake")
        _, base_p99 = _report("/quota", await _burst(fake, "quota", members))
        _, p99 = _report(
            "/imagine", await _burst(fake, "imagine", members, prompt="a photo of dog", count=1)
        )
        with sqlite3.connect(work / "data" / "dreambot.sqlite3") as db:
            (jobs,) = db.execute("SELECT COUNT(*) FROM jobs WHERE status = 'queued'").fetchone()
        if jobs != members:
            raise SystemExit(f"{jobs} jobs queued for {members} /imagine commands")
        print(f"queued jobs: {jobs} (one per /imagine; none lost, none doubled)")
        print(f"/imagine p99 against /quota p99: {p99 / base_p99:.2f}x; goal p99 < {GOAL_MS} ms")
        return p99
    finally:
        proc.send_signal(signal.SIGTERM)
        await proc.wait()
        await fake.stop()
        redis.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dreambot-bot-load-") as tmp:
        p99 = asyncio.run(_run(args.members, Path(tmp)))
    print(f"ack_p99_ms: {p99:.1f}")


if __name__ == "__main__":
    main()
