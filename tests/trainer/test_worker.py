"""The worker process: serves jobs from the real Redis (both queues by default, as `dreambot up`
runs it), compiles its sampler before taking jobs, stops cleanly on SIGTERM, and refuses to start
(at once, with the train command's message) when its base model cannot load."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

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


def _worker_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("WEIGHTS_DIR", "BPE_PATH")}
    env.update({"DATA_DIR": str(tmp_path / "data"), **extra})
    return env


def test_worker_with_sd_v1_and_no_weights_exits_at_once(
    redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    """It says what `dreambot train` says, instead of starting and failing every job."""
    env = _worker_env(tmp_path, REDIS_URL=redis_server.url, MODEL_PRESET="sd-v1")
    proc = subprocess.run(
        [sys.executable, "-m", "dreambot", "worker"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "dreambot worker: error: The sd-v1 preset needs WEIGHTS_DIR" in proc.stderr
    assert "ready on" not in proc.stderr + proc.stdout and "Traceback" not in proc.stderr


async def _ping_both_queues(url: str) -> list[dict[str, object]]:
    pool = await create_pool(RedisSettings.from_dsn(url))
    try:
        queues = (TRAIN_QUEUE, GENERATE_QUEUE)
        jobs = [await pool.enqueue_job("ping", _queue_name=q) for q in queues]
        return [await job.result(timeout=30) for job in jobs if job is not None]
    finally:
        await pool.aclose()


def test_worker_process_serves_both_queues_and_stops_on_sigterm(
    redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    """`dreambot worker` (no --queue: all, what `dreambot up` runs) compiles its sampler, then
    answers on both queues from one process."""
    env = _worker_env(tmp_path, REDIS_URL=redis_server.url, MODEL_PRESET="tiny")
    env.pop("WORKER_XLA", None)  # the production default: an XLA-compiled sampler
    proc = subprocess.Popen(
        [sys.executable, "-m", "dreambot", "worker"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 120
        seen = ""
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            seen += line
            if "ready on" in line or not line:
                break
        assert "ready on" in seen, seen
        assert "sampler for 64px compiled in" in seen, seen  # before any job is taken
        answers = asyncio.run(_ping_both_queues(redis_server.url))
        assert [a["pid"] for a in answers] == [proc.pid, proc.pid], answers
        assert [a["queue"] for a in answers] == [TRAIN_QUEUE, GENERATE_QUEUE]
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, seen + out
    assert "stopped" in out
