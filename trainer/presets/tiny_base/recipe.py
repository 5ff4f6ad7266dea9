"""The numbers that decide the tiny base's weights, and the learning-rate schedule both fits use."""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["MODEL_NAMES", "TinyBaseRecipe", "learning_rate"]

MODEL_NAMES = ("text_encoder", "diffusion_model", "image_encoder", "decoder")


@dataclass(frozen=True)
class TinyBaseRecipe:
    """Every number that decides the base's weights (hashed, with the code, into its id).

    Sizes were chosen on a 2-core CPU: the VAE starts as a colour mosaic and needs only a couple
    of hundred steps on 32 px crops; the UNet (with the text encoder) 2,000 steps of 16 pictures,
    after which a LoRA at the CLI's default rate learns a subject in 2,000-3,000 steps.
    """

    seed: int = 0
    images_per_look: int = 64
    images_per_colour: int = 12
    vae_steps: int = 200
    vae_batch: int = 16
    vae_crop: int = 32
    vae_lr: float = 1e-3
    vae_final_lr: float = 2e-5
    vae_warmup: int = 50
    vae_latent_noise: float = 0.05
    unet_steps: int = 2000
    unet_batch: int = 16
    unet_lr: float = 2e-3
    unet_final_lr: float = 1e-4
    unet_warmup: int = 100
    unconditional_fraction: float = 0.1
    colour_fraction: float = 0.35


def learning_rate(peak: float, final: float, warmup: int, steps: int, step: int) -> float:
    """Linear warm-up to ``peak``, then cosine decay to ``final`` at ``steps``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return final + (peak - final) * 0.5 * (1.0 + math.cos(math.pi * progress))
