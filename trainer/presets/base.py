"""What every preset exposes: its shapes (PresetSpec) and its built models (Preset)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import keras
import numpy as np
import tensorflow as tf
from keras_cv.src.models.stable_diffusion.clip_tokenizer import SimpleTokenizer
from keras_cv.src.models.stable_diffusion.noise_scheduler import NoiseScheduler

from storage.errors import UserFacingError

__all__ = [
    "LATENT_SCALE",
    "PRESETS",
    "TIMESTEP_DIM",
    "Preset",
    "PresetSpec",
    "noise_scheduler",
    "timestep_embedding",
]

LATENT_SCALE = 0.18215
TIMESTEP_DIM = 320


@dataclass(frozen=True)
class PresetSpec:
    """Shapes of one preset; everything else (latent size, context width) is derived."""

    name: str
    resolution: int
    unet_widths: tuple[int, ...]
    unet_layers_per_block: int
    head_size: int
    text_width: int
    text_layers: int
    text_heads: int
    vae_widths: tuple[int, ...]
    max_prompt_length: int = 77
    vocab_size: int = 49408
    latent_channels: int = 4
    latent_scale: float = LATENT_SCALE
    timestep_dim: int = TIMESTEP_DIM

    @property
    def latent_size(self) -> int:
        return self.resolution // 8

    @property
    def context_width(self) -> int:
        return self.text_width


PRESETS: dict[str, PresetSpec] = {
    "sd-v1": PresetSpec(
        name="sd-v1",
        resolution=512,
        unet_widths=(320, 640, 1280, 1280),
        unet_layers_per_block=2,
        head_size=40,
        text_width=768,
        text_layers=12,
        text_heads=12,
        vae_widths=(128, 256, 512, 512),
    ),
    "tiny": PresetSpec(
        name="tiny",
        resolution=64,
        unet_widths=(32, 64),
        unet_layers_per_block=1,
        head_size=32,
        text_width=64,
        text_layers=2,
        text_heads=2,
        vae_widths=(32, 64, 64),
    ),
}


def timestep_embedding(timesteps: tf.Tensor, dim: int = TIMESTEP_DIM) -> tf.Tensor:
    """Sinusoidal embedding of a batch of timesteps, [B] -> [B, dim], in one vectorised op.

    Same formula as KerasCV's sampler (cosines first), so weights trained here sample there.
    """
    half = dim // 2
    freqs = tf.exp(-np.log(10000.0) * tf.range(half, dtype=tf.float32) / half)
    args = tf.cast(tf.reshape(timesteps, (-1, 1)), tf.float32) * freqs[None, :]
    return tf.concat([tf.cos(args), tf.sin(args)], axis=-1)


@dataclass(eq=False)
class Preset:
    """A built base model: tokenizer, encoders, UNet, decoder and noise schedule."""

    spec: PresetSpec
    tokenizer: SimpleTokenizer
    text_encoder: keras.Model
    diffusion_model: keras.Model
    image_encoder: keras.Model
    decoder: keras.Model
    noise_scheduler: NoiseScheduler
    weights_id: str
    _posterior: keras.Model | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def resolution(self) -> int:
        return self.spec.resolution

    @property
    def latent_size(self) -> int:
        return self.spec.latent_size

    @property
    def latent_scale(self) -> float:
        return self.spec.latent_scale

    @property
    def max_prompt_length(self) -> int:
        return self.spec.max_prompt_length

    @property
    def start_of_text_id(self) -> int:
        return int(self.tokenizer.start_of_text)

    @property
    def end_of_text_id(self) -> int:
        return int(self.tokenizer.end_of_text)

    @property
    def pad_id(self) -> int:
        """CLIP pads with its end-of-text token; read it from the tokenizer, never hard-code."""
        return self.end_of_text_id

    @property
    def alphas_cumprod(self) -> np.ndarray:
        """Cumulative alphas of the training schedule (float32[1000]); the sampler uses these."""
        return np.asarray(self.noise_scheduler.alphas_cumprod, dtype=np.float32)

    @property
    def posterior_encoder(self) -> keras.Model:
        """VAE encoder up to the mean / log-variance (8 channels, unscaled)."""
        if self._posterior is None:
            enc = self.image_encoder
            self._posterior = keras.Model(enc.inputs, enc.layers[-2].output)
        return self._posterior

    def tokenize(self, prompts: Sequence[str]) -> np.ndarray:
        """Token ids [B, max_prompt_length], padded with ``pad_id``."""
        length = self.max_prompt_length
        rows = []
        for prompt in prompts:
            ids = self.tokenizer.encode(prompt)
            if len(ids) > length:
                raise UserFacingError(
                    f"The prompt is too long ({len(ids)} tokens, at most {length}).",
                    code="prompt_too_long",
                )
            rows.append(ids + [self.pad_id] * (length - len(ids)))
        return np.asarray(rows, dtype=np.int32)

    def encode_tokens(self, tokens: np.ndarray | tf.Tensor) -> tf.Tensor:
        """Text-encoder context for token ids [B, L] -> [B, L, context_width]."""
        tokens = tf.convert_to_tensor(tokens, dtype=tf.int32)
        batch = tf.shape(tokens)[0]
        positions = tf.tile(tf.range(self.max_prompt_length, dtype=tf.int32)[None], [batch, 1])
        out = self.text_encoder([tokens, positions], training=False)
        return tf.cast(out, tf.float32)

    def encode_prompts(self, prompts: Sequence[str]) -> tf.Tensor:
        """Text-encoder context for a list of prompts."""
        return self.encode_tokens(self.tokenize(prompts))


def noise_scheduler() -> NoiseScheduler:
    """The schedule Stable Diffusion v1 was trained with (KerasCV's sampler constants match it)."""
    return NoiseScheduler(
        train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
    )
