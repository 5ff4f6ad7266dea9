"""The worker process: serves jobs from the real Redis and stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from arq import create_pool
from arq.connections import RedisSettings

from storage.errors import ConfigError
from storage.jobs import GENERATE_QUEUE, TRAIN_QUEUE
from storage.redis_server import EmbeddedRedis

pytestmark = pytest.mark.queue


@pytest.mark.parametrize("queue", ["train", "generate"])
async def test_worker_answers_ping_on_its_queue(redis_server: EmbeddedRedis, queue: str) -> None:
    from trainer.worker import build_worker

    queue_name = TRAIN_QUEUE if queue == "train" else GENERATE_QUEUE
    pool = await create_pool(RedisSettings.from_dsn(redis_server.url))
    try:
        job = await pool.enqueue_job("ping", _queue_name=queue_name)
        assert job is not None
        worker = build_worker(redis_server.url, queue, burst=True)
        worker.handle_signals = False
        await worker.main()
        result = await job.result(timeout=10)
        await worker.close()
    finally:
        await pool.aclose()
    assert result["pid"] == os.getpid() and result["queue"] == queue_name


def test_worker_without_redis_url_explains() -> None:
    from trainer.worker import build_worker

    with pytest.raises(ConfigError, match="REDIS_URL"):
        build_worker("")


def test_worker_process_stops_on_sigterm(redis_server: EmbeddedRedis) -> None:
    env = {**os.environ, "REDIS_URL": redis_server.url}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dreambot", "worker"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        seen = ""
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            seen += line
            if "ready on" in line or not line:
                break
        assert "ready on" in seen, seen
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, seen + out
    assert "stopped" in out
