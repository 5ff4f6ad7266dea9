"""The trainer's settings: which base model, where its files are, and Hub hosting.

Read once by the composition root (the same ``.env`` as the other sides, each variable in one
place); no TensorFlow here, so building settings stays cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings

from storage.config import ENV_CONFIG

__all__ = ["NATIVE_RESOLUTION", "PresetName", "TrainerSettings", "training_resolution"]

PresetName = Literal["sd-v1", "tiny"]


class TrainerSettings(BaseSettings):
    """Model settings. Field names map to upper-case environment variables."""

    model_config = ENV_CONFIG

    model_preset: PresetName = Field(default="sd-v1", description="sd-v1, or tiny for tests")
    weights_dir: Path | None = Field(default=None, description="KerasCV weight files")
    bpe_path: Path | None = Field(default=None, description="CLIP BPE vocabulary; empty: download")
    hf_token: SecretStr | None = Field(default=None, description="Hub token for hosting models")
    hf_namespace: str = Field(default="", description="Hub user or organisation for model repos")


# Each preset's own resolution: sd-v1 trains at TRAIN_RESOLUTION unless told otherwise; the tiny
# toy is built for 64 px. (``trainer.presets`` builds its specs from this, without TensorFlow here.)
NATIVE_RESOLUTION: dict[str, int] = {"sd-v1": 512, "tiny": 64}


def training_resolution(preset: str, requested: int | None, configured: int) -> int:
    """The resolution a run trains at: ``requested``, else ``configured`` (TRAIN_RESOLUTION) for
    sd-v1, else the preset's own."""
    if requested is not None:
        return requested
    return configured if preset == "sd-v1" else NATIVE_RESOLUTION[preset]
