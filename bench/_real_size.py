"""What the real-size benches share: the sd-v1 UNet with random weights and stand-in data.

Random weights cost the same memory and time as the real ones, and need no download. The data
is what :func:`trainer.data.encode_training_data` would cache for 4 photos, 4 class images and
4 empty-prompt images (posteriors, 77 x 768 prompt contexts), so no VAE or text encoder is
built.
"""

from __future__ import annotations

import dataclasses
import re
import resource
from pathlib import Path
from typing import Any

import keras
import numpy as np

from trainer.data import EncodedData
from trainer.dreambooth import DreamBoothTrainer, TrainConfig, make_trainer
from trainer.presets import PRESETS, PresetSpec, alphas_cumprod_schedule, build_diffusion_model

GB = 1024**3


def rss_bytes() -> int:
    """Resident memory of this process now."""
    text = Path("/proc/self/status").read_text()
    match = re.search(r"VmRSS:\s+(\d+) kB", text)
    return int(match.group(1)) * 1024 if match else 0


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def available_bytes() -> int:
    """What the kernel says could still be allocated without swapping."""
    text = Path("/proc/meminfo").read_text()
    match = re.search(r"MemAvailable:\s+(\d+) kB", text)
    return int(match.group(1)) * 1024 if match else 0


def real_spec(resolution: int) -> PresetSpec:
    return dataclasses.replace(PRESETS["sd-v1"], resolution=resolution)


def real_unet(resolution: int, dtype_policy: str | None = None) -> keras.Model:
    """sd-v1's UNet (860 M parameters) at ``resolution`` px, random init."""
    return build_diffusion_model(real_spec(resolution), dtype_policy=dtype_policy)


def stand_in_data(resolution: int, n: int = 4, seed: int = 0) -> EncodedData:
    rng = np.random.default_rng(seed)
    s = resolution // 8

    def posteriors() -> np.ndarray:
        return rng.normal(size=(n, 2, s, s, 8)).astype(np.float32)

    def context() -> np.ndarray:
        return rng.normal(size=(77, 768)).astype(np.float32)

    inst, cls, empty = posteriors(), posteriors(), posteriors()
    return EncodedData(
        inst, cls, context(), context(), empty_posteriors=empty, empty_context=context()
    )


@dataclasses.dataclass
class _PresetFacts:
    """The two preset facts a trainer reads when it is handed its UNet."""

    latent_scale: float
    alphas_cumprod: Any


def real_trainer(unet: keras.Model, data: EncodedData, config: TrainConfig) -> DreamBoothTrainer:
    """Our trainer on ``unet`` (LoRA enabled on it if the config asks)."""
    facts = _PresetFacts(PRESETS["sd-v1"].latent_scale, alphas_cumprod_schedule())
    return make_trainer(facts, data, config, diffusion_model=unet)  # type: ignore[arg-type]
