"""What a worker process loads once and every job shares: the base model, its sampler, the
personal-model cache, the blob store, the TensorFlow thread and the progress writer."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from storage.blobs import BlobStore
from storage.config import StorageSettings
from trainer.config import TrainerSettings, WorkerConfig, bases_dir, preset_bases_dir
from trainer.presets import Preset
from trainer.sampler import Sampler
from trainer.worker.cache import ModelCache
from trainer.worker.hub import HubHost
from trainer.worker.progress import ProgressWriter
from trainer.worker.tfthread import TFThread

__all__ = ["Runtime", "build_runtime", "load_runtime"]

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    base: Preset
    sampler: Sampler
    cache: ModelCache
    store: BlobStore
    config: WorkerConfig
    tf: TFThread
    hub: HubHost | None = None
    writer: ProgressWriter | None = field(default=None, repr=False)
    jobs_run: dict[str, int] = field(default_factory=dict)  # job function -> bodies run

    def close(self) -> None:
        self.tf.close(timeout=5)


def _sampler_options(config: WorkerConfig) -> dict[str, Any]:
    return {} if config.xla is None else {"jit_compile": config.xla}


def build_runtime(
    base: Preset,
    store: BlobStore,
    config: WorkerConfig,
    *,
    hub: HubHost | None = None,
    bases_dir: Path | None = None,
    bpe_path: Path | None = None,
) -> Runtime:
    """A runtime around an already-built base (tests pass the tiny preset). ``bases_dir`` is
    where a tiny model trained on another pretrained tiny base finds its own."""
    options = _sampler_options(config)
    sampler = Sampler.from_components(base, **options)
    cache = ModelCache(
        base,
        sampler,
        store,
        config.cache_size,
        sampler_options=options,
        hub=hub,
        bases_dir=bases_dir,
        bpe_path=bpe_path,
    )
    return Runtime(base, sampler, cache, store, config, TFThread(), hub=hub)


def _memory_growth() -> None:
    """Let TensorFlow take GPU memory as it needs it (so two processes can share a card)."""
    import tensorflow as tf

    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # already initialised; nothing to change
            log.warning("GPU %s was initialised before memory growth could be set", gpu.name)


def load_runtime(
    storage: StorageSettings,
    trainer: TrainerSettings,
    config: WorkerConfig,
    *,
    resolution: int,
) -> Runtime:
    """Load the base model once. Bad model settings (sd-v1 without its weight files) raise the
    same ConfigError ``dreambot train`` gives, before the worker takes any job."""
    from trainer.presets import build_preset

    store = BlobStore(storage.blob_store_url)
    _memory_growth()
    base = build_preset(
        trainer.model_preset,
        resolution=resolution,
        weights_dir=trainer.weights_dir,
        bpe_path=trainer.bpe_path,
        bases_dir=preset_bases_dir(trainer, storage.data_dir),
    )
    hub = HubHost.from_settings(trainer)
    log.info("base model %s at %spx loaded (%s)", base.name, base.resolution, base.weights_id)
    # A saved model names its own base, so models find theirs in bases_dir whatever TINY_BASE is.
    return build_runtime(
        base,
        store,
        config,
        hub=hub,
        bases_dir=bases_dir(storage.data_dir),
        bpe_path=trainer.bpe_path,
    )
