"""Queue benchmark on a real (embedded) Redis: pickup latency, crash recovery, and generation
with a warm against a cold model cache.

1. **Pickup**: enqueue one no-op ``ping`` job at a time (``--jobs``, 200; a random 0-100 ms gap
   before each, as independent users' clicks arrive) and time from just before ``enqueue_job``
   to the moment the job function starts, with the worker's own settings
   (``QUEUE_POLL_S``, 50 ms) and, as the baseline in the same run, arq's default 0.5 s poll
   (fewer jobs). Prints p50 / p99.
2. **Recovery** (skip with ``--no-recovery``): two `dreambot worker --queue train` processes on
   the tiny preset with the default ``RECOVERY_WINDOW_S``; one is SIGKILLed mid-training and the
   time until the other writes progress for that job is the recovery time.
3. **Generation** on the tiny preset in this process: images/s for a model already merged into the
   base (warm), for a model not in the cache (cold: fetch from the blob store and merge), and the
   LoRA swap time between two cached models.
4. **Generation during a training** (skip with ``--no-interleave``): one ``--queue all`` worker
   group on the tiny preset with the worker's default settings, its sampler warmed as at
   startup; enqueue → result of a default /imagine request (4 images, 30 steps) while the worker
   is idle (the baseline) and while it runs a long training, and the training's step time.

    .venv/bin/python -m bench.queue [--jobs 200] [--no-recovery] [--no-interleave]

Last line: ``pickup_p50_ms: <float>``. Goals: pickup p50 < 50 ms, recovery < 90 s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from arq import create_pool
from arq.connections import RedisSettings

from storage.blobs import BlobStore
from storage.jobs import GENERATE_QUEUE, GenerateSpec, Progress, progress_key
from storage.redis_server import EmbeddedRedis
from storage.rules import MAX_TRAIN_STEPS
from trainer.config import WorkerConfig


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def pickup(url: str, jobs: int, poll_s: float | None) -> list[float]:
    """Milliseconds from enqueue to job start, one job at a time."""
    from trainer.worker.process import build_worker

    config = WorkerConfig(poll_s=poll_s) if poll_s is not None else None
    worker = build_worker(url, "generate", config=config)
    runner = asyncio.create_task(worker.async_run())
    pool = await create_pool(RedisSettings.from_dsn(url))
    latencies = []
    try:
        await asyncio.sleep(0.5)  # the worker connects
        for _ in range(jobs):
            # Users do not click in step with the worker's poll: a random gap spreads arrivals
            # over the poll phase (back-to-back enqueues would all wait nearly a full interval).
            await asyncio.sleep(random.uniform(0, 0.1))
            sent = time.time()
            job = await pool.enqueue_job("ping", _queue_name=GENERATE_QUEUE)
            assert job is not None
            answer = await job.result(timeout=30, poll_delay=0.005)
            latencies.append((answer["started_at"] - sent) * 1000)
    finally:
        worker.handle_sig(15)
        await asyncio.gather(runner, return_exceptions=True)
        await worker.close()
        await pool.aclose()
    return latencies


async def recovery(url: str, blob_url: str, data_dir: Path) -> float:
    """Seconds from SIGKILL of the worker running a training to the other worker taking it."""
    from bot.queue import JobQueue
    from tests.trainer.workers import train_spec

    env = {
        **os.environ,
        "MODEL_PRESET": "tiny",
        "REDIS_URL": url,
        "BLOB_URL": blob_url,
        "DATA_DIR": str(data_dir),
        "WORKER_XLA": "false",
        "CHECKPOINT_EVERY": "10",
    }
    store = BlobStore(blob_url)
    queue = await JobQueue.connect(url, store)
    cmd = [sys.executable, "-m", "dreambot", "worker", "--queue", "train"]
    logs = [(data_dir / f"worker-{i}.log").open("w") for i in range(2)]
    first = subprocess.Popen(cmd, env=env, stdout=logs[0], stderr=subprocess.STDOUT)
    second = None
    try:
        spec = train_spec(store, "bench-recovery", steps=10_000)
        await queue.enqueue(spec)
        while (p := await queue.progress(spec.job_id)) is None or p.stage != "training":
            await asyncio.sleep(0.1)
        second = subprocess.Popen(cmd, env=env, stdout=logs[1], stderr=subprocess.STDOUT)
        while len(await queue.workers()) < 2:  # the second loads TensorFlow and the base model
            await asyncio.sleep(0.2)
        first.kill()
        killed = time.time()
        print(f"killed the worker running the training at step {p.step}")
        while True:
            raw = await queue.redis.get(progress_key(spec.job_id))
            if raw is not None and Progress.from_json(raw).updated_at > killed:
                return time.time() - killed
            if time.time() - killed > 600:
                raise RuntimeError("the job was not recovered in 10 minutes")
            await asyncio.sleep(0.05)
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        for log in logs:
            log.close()
        await queue.close()


def generation(blob_url: str) -> dict[str, float]:
    """Images/s warm and cold, and the LoRA swap time, on the tiny preset."""
    from tests.trainer.workers import upload_lora_model
    from trainer.presets import build_preset
    from trainer.worker import build_runtime
    from trainer.worker.bodies import draw_png, warm_up

    store = BlobStore(blob_url)
    rt = build_runtime(build_preset("tiny", seed=0), store, WorkerConfig(cache_size=4))
    n, steps, rounds = 4, 20, 8

    def draw(model_id: str | None) -> float:
        started = time.perf_counter()
        sampler = rt.cache.sampler_for(model_id)
        draw_png(sampler, "a photo of sks dog", list(range(n)), steps=steps)  # as the worker does
        return time.perf_counter() - started

    def run() -> dict[str, float]:
        warm_up(rt)  # compile the sampler, as a worker does at startup
        for i in range(rounds + 2):
            upload_lora_model(store, rt.base, f"bench-{i}", seed=i)
        cold = [draw(f"bench-{i}") for i in range(rounds)]  # each a cache miss
        draw("bench-0")
        warm = [draw("bench-0") for _ in range(rounds)]
        draw("bench-8"), draw("bench-9")
        swaps = []
        for i in range(rounds):
            rt.cache.sampler_for("bench-8" if i % 2 else "bench-9")
            swaps.append(rt.cache.stats.last_swap_s)
        return {
            "warm_images_per_s": n / statistics.median(warm),
            "cold_images_per_s": n / statistics.median(cold),
            "lora_swap_ms": statistics.median(swaps) * 1000,
        }

    try:
        return rt.tf.submit_future(run).result()
    finally:
        rt.close()


async def interleave(url: str, blob_url: str, rounds: int = 8) -> dict[str, float]:
    """Milliseconds from enqueue to result of a default /imagine request on an idle ``--queue
    all`` worker and on one running a training; and the training's step time."""
    from bot.queue import JobQueue
    from storage.jobs import JobCancelled
    from tests.trainer.workers import new_id, train_spec
    from trainer.presets import build_preset
    from trainer.worker import WorkerGroup, build_runtime
    from trainer.worker.bodies import warm_up

    store = BlobStore(blob_url)
    rt = build_runtime(build_preset("tiny", seed=0), store, WorkerConfig())
    await asyncio.wrap_future(rt.tf.submit_future(lambda: warm_up(rt)))
    group = WorkerGroup(rt, url, "all")
    await group.start()
    queue = await JobQueue.connect(url, store)

    async def imagine() -> float:
        spec = GenerateSpec(new_id("imagine"), "a photo of sks dog", seeds=[1, 2, 3, 4])
        sent = time.perf_counter()
        await queue.enqueue(spec)
        await queue.result(spec.job_id, timeout=120, poll_s=0.005)
        return (time.perf_counter() - sent) * 1000

    async def step_now() -> tuple[float, int]:
        progress = await queue.progress(train.job_id)
        assert progress is not None
        return progress.updated_at, progress.step  # when the worker wrote it

    try:
        await imagine()  # the first request of its size after warm-up: nothing left to compile
        idle = [await imagine() for _ in range(rounds)]
        train = train_spec(store, new_id("long"), steps=MAX_TRAIN_STEPS)
        await queue.enqueue(train)
        while (p := await queue.progress(train.job_id)) is None or p.step < 3:
            await asyncio.sleep(0.05)  # past the first (traced) steps
        t0, s0 = await step_now()
        await asyncio.sleep(5)  # progress is written every ~2 s: a window of clean steps
        t1, s1 = await step_now()
        busy = [await imagine() for _ in range(rounds)]
        status = await queue.status(train.job_id)
        assert status.state == "running", status
        await queue.cancel(train.job_id)
        with contextlib.suppress(JobCancelled):
            await queue.result(train.job_id, timeout=120)
    finally:
        await queue.close()
        await group.close()
        rt.close()
    return {
        "idle_p50_ms": statistics.median(idle),
        "busy_p50_ms": statistics.median(busy),
        "busy_max_ms": max(busy),
        "step_ms": (t1 - t0) / max(1, s1 - s0) * 1000,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=200, help="no-op jobs for pickup latency")
    parser.add_argument("--no-recovery", action="store_true", help="skip the SIGKILL recovery")
    parser.add_argument(
        "--no-interleave", action="store_true", help="skip generation during a training"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        redis = EmbeddedRedis(root / "redis", persist=False)
        url = redis.start()
        blob_url = (root / "blobs").resolve().as_uri()
        try:
            ours = asyncio.run(pickup(url, args.jobs, WorkerConfig().poll_s))
            base = asyncio.run(pickup(url, max(20, args.jobs // 8), None))
            print(
                f"pickup, arq default poll 0.5 s ({len(base)} jobs): "
                f"p50 {statistics.median(base):.1f} ms, p99 {_percentile(base, 0.99):.1f} ms"
            )
            print(
                f"pickup, QUEUE_POLL_S {WorkerConfig().poll_s} s ({len(ours)} jobs): "
                f"p50 {statistics.median(ours):.1f} ms, p99 {_percentile(ours, 0.99):.1f} ms"
            )
            figures = generation(blob_url)
            print(
                f"generation (tiny, 4 images x 20 steps): warm {figures['warm_images_per_s']:.1f} "
                f"images/s, cold {figures['cold_images_per_s']:.1f} images/s, "
                f"LoRA swap {figures['lora_swap_ms']:.1f} ms"
            )
            if not args.no_interleave:
                mixed = asyncio.run(interleave(url, blob_url))
                print(
                    "generation on a --queue all worker (tiny, 4 images x 30 steps, enqueue to "
                    f"result, p50): idle {mixed['idle_p50_ms']:.0f} ms, during a training "
                    f"{mixed['busy_p50_ms']:.0f} ms (max {mixed['busy_max_ms']:.0f} ms); "
                    f"training step {mixed['step_ms']:.0f} ms"
                )
            if not args.no_recovery:
                window = WorkerConfig().recovery_window_s
                seconds = asyncio.run(recovery(url, blob_url, root))
                print(f"recovery after SIGKILL (RECOVERY_WINDOW_S {window:.0f}): {seconds:.1f} s")
        finally:
            redis.stop()
    print(f"pickup_p50_ms: {statistics.median(ours):.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
