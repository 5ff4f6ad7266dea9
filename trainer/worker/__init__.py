"""The arq worker process (`dreambot worker --queue train|generate|all`).

- :mod:`.process`: arq workers per queue in one process, the heartbeat that keeps running jobs
  claimed (crash recovery within RECOVERY_WINDOW_S), clean stop on SIGINT/SIGTERM;
- :mod:`.jobs`: the job functions ``train_model`` / ``generate_images`` and their error rules;
- :mod:`.bodies`: what those jobs run on the one TensorFlow thread (:mod:`.tfthread`);
- :mod:`.cache`: personal models for generation over the shared base; :mod:`.hub`: Hub hosting;
- :mod:`.runtime`: what the process loads once (base model, sampler, cache, blob store).

A worker serves one resolution: the base model is built at it (``TRAIN_RESOLUTION`` for sd-v1,
the preset's own for tiny), with one sampler, compiled at startup by :func:`.bodies.warm_up`.

Importing this package imports TensorFlow (through the runtime); the CLI imports it only inside
the ``worker`` command.
"""

from __future__ import annotations

import asyncio
import logging
import os

from storage.config import StorageSettings
from storage.jobs import QUEUES
from trainer.config import TrainerSettings, WorkerConfig
from trainer.worker.bodies import warm_up
from trainer.worker.process import QUEUE_CHOICES, WorkerGroup, build_worker, ping, queues_for
from trainer.worker.runtime import Runtime, build_runtime, load_runtime

__all__ = [
    "QUEUES",
    "QUEUE_CHOICES",
    "Runtime",
    "WorkerGroup",
    "build_runtime",
    "build_worker",
    "ping",
    "run_worker",
]

log = logging.getLogger(__name__)


def run_worker(
    storage: StorageSettings,
    trainer: TrainerSettings,
    queue: str = "all",
    *,
    resolution: int,
) -> int:
    """Load the base model and compile its sampler, then serve until SIGINT/SIGTERM; returns
    the exit code.

    Bad settings (no REDIS_URL, an unknown queue, sd-v1 without its weight files) raise a
    ConfigError before anything is served, so a misconfigured worker exits at once.
    """
    queues_for(queue)
    if not storage.redis_url:
        build_worker(storage.redis_url)  # raises the REDIS_URL explanation
    config = WorkerConfig.from_settings(trainer)
    runtime = load_runtime(storage, trainer, config, resolution=resolution)
    try:
        # On the TensorFlow thread, like every job; the worker takes jobs once it is done.
        seconds = runtime.tf.submit_future(lambda: warm_up(runtime)).result()
        log.info("sampler for %spx compiled in %.1f s", runtime.base.resolution, seconds)
        asyncio.run(WorkerGroup(runtime, storage.redis_url, queue).run())
    finally:
        runtime.close()
    log.info("worker %s stopped", os.getpid())
    return 0
