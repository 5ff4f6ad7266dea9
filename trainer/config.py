"""The trainer's settings: which base model, where its files are, Hub hosting, and the worker's
timeouts, recovery window and retries.

Read once by the composition root (the same ``.env`` as the other sides, each variable in one
place); no TensorFlow here, so building settings stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Self

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings

from storage.config import ENV_CONFIG

__all__ = [
    "NATIVE_RESOLUTION",
    "PresetName",
    "TrainerSettings",
    "WorkerConfig",
    "bases_dir",
    "preset_bases_dir",
    "training_resolution",
]

PresetName = Literal["sd-v1", "tiny"]
TinyBase = Literal["pretrained", "random"]


class TrainerSettings(BaseSettings):
    """Model settings. Field names map to upper-case environment variables."""

    model_config = ENV_CONFIG

    model_preset: PresetName = Field(default="sd-v1", description="sd-v1, or tiny for tests")
    tiny_base: TinyBase = Field(
        default="pretrained",
        description="tiny preset: pretrained (fitted once under DATA_DIR/bases) or random",
    )
    weights_dir: Path | None = Field(default=None, description="KerasCV weight files")
    bpe_path: Path | None = Field(default=None, description="CLIP BPE vocabulary; empty: download")
    hf_token: SecretStr | None = Field(default=None, description="Hub token for hosting models")
    hf_namespace: str = Field(default="", description="Hub user or organisation for model repos")
    train_timeout_s: float = Field(default=6 * 3600, gt=0, description="longest training job")
    generate_timeout_s: float = Field(default=600, gt=0, description="longest generation job")
    recovery_window_s: float = Field(
        default=30, ge=3, description="a dead worker's job is picked up again within this"
    )
    job_max_tries: int = Field(default=3, ge=1, le=20, description="runs per job, crashes included")
    retry_backoff_s: float = Field(default=10, ge=0, description="first retry delay; doubles")
    checkpoint_every: int = Field(default=100, ge=1, description="training steps per checkpoint")
    model_cache_size: int = Field(default=8, ge=1, description="personal models kept loaded")
    worker_xla: bool | None = Field(
        default=None, description="XLA-compile training and sampling; empty: the trainer's choice"
    )
    queue_poll_s: float = Field(default=0.05, gt=0, le=5, description="queue poll interval")


# Each preset's own resolution: sd-v1 trains at TRAIN_RESOLUTION unless told otherwise; the tiny
# toy is built for 64 px. (``trainer.presets`` builds its specs from this, without TensorFlow here.)
NATIVE_RESOLUTION: dict[str, int] = {"sd-v1": 512, "tiny": 64}


def bases_dir(data_dir: Path) -> Path:
    """Where fitted base models are kept: ``$DATA_DIR/bases``. The tiny preset's pretrained base
    is fitted there on first use (minutes, once, one process at a time under
    ``$DATA_DIR/bases.lock``) and named by its recipe, so one folder serves every version side
    by side: a model trained on an older version's base loads that one from here."""
    return data_dir / "bases"


def preset_bases_dir(trainer: TrainerSettings, data_dir: Path) -> Path | None:
    """The ``bases_dir`` to build the base preset with: None when ``TINY_BASE=random`` asks for
    the random tiny preset (pipeline tests), which needs no fitting. A saved model names its
    own base, so loading one always gets :func:`bases_dir`."""
    return bases_dir(data_dir) if trainer.tiny_base == "pretrained" else None


def training_resolution(preset: str, requested: int | None, configured: int) -> int:
    """The resolution a run trains at: ``requested``, else ``configured`` (TRAIN_RESOLUTION) for
    sd-v1, else the preset's own."""
    if requested is not None:
        return requested
    return configured if preset == "sd-v1" else NATIVE_RESOLUTION[preset]


@dataclass(frozen=True)
class WorkerConfig:
    """How a worker process runs jobs; built from the settings once, constructed directly in
    tests (which shorten the windows and turn XLA off)."""

    train_timeout_s: float = 6 * 3600
    generate_timeout_s: float = 600
    recovery_window_s: float = 30
    max_tries: int = 3
    retry_backoff_s: float = 10
    checkpoint_every: int = 100
    cache_size: int = 8
    xla: bool | None = None  # None: the trainer's and sampler's own default
    poll_s: float = 0.05
    progress_every_s: float = 2.0
    # How long arq keeps a job's result; the blob store keeps it for good (``result_key``).
    keep_result_s: float = 7 * 24 * 3600

    @property
    def heartbeat_s(self) -> float:
        """Renew a running job's claim three times per recovery window, so one late beat is
        not a lost job."""
        return self.recovery_window_s / 3

    def retry_delay_s(self, job_try: int) -> float:
        """Back-off before run ``job_try + 1``: the base delay, doubled after each run."""
        return float(self.retry_backoff_s * 2 ** max(0, job_try - 1))

    @classmethod
    def from_settings(cls, settings: TrainerSettings) -> Self:
        return cls(
            train_timeout_s=settings.train_timeout_s,
            generate_timeout_s=settings.generate_timeout_s,
            recovery_window_s=settings.recovery_window_s,
            max_tries=settings.job_max_tries,
            retry_backoff_s=settings.retry_backoff_s,
            checkpoint_every=settings.checkpoint_every,
            cache_size=settings.model_cache_size,
            xla=settings.worker_xla,
            poll_s=settings.queue_poll_s,
        )
