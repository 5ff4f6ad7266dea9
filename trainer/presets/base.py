"""What every preset exposes: its shapes (PresetSpec) and its built models (Preset).

The diffusion facts the trainer and the sampler must agree on live here once: the noise
schedule (:func:`alphas_cumprod_schedule`), the timestep embedding (:func:`timestep_embedding`)
and prompt tokenising (:func:`tokenize`, which refuses over-long prompts with
:class:`~trainer.errors.PromptTooLong`). Nothing here but the tokenizer type needs KerasCV.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import keras
import numpy as np
import tensorflow as tf
from keras_cv.src.models.stable_diffusion.clip_tokenizer import SimpleTokenizer

from trainer.config import NATIVE_RESOLUTION
from trainer.errors import PromptTooLong

__all__ = [
    "LATENT_SCALE",
    "PRESETS",
    "TIMESTEP_DIM",
    "TRAIN_TIMESTEPS",
    "Preset",
    "PresetSpec",
    "alphas_cumprod_schedule",
    "timestep_embedding",
    "tokenize",
]

LATENT_SCALE = 0.18215
TIMESTEP_DIM = 320
TRAIN_TIMESTEPS = 1000


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
        resolution=NATIVE_RESOLUTION["sd-v1"],
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
        resolution=NATIVE_RESOLUTION["tiny"],
        unet_widths=(32, 64),
        unet_layers_per_block=1,
        head_size=32,
        text_width=64,
        text_layers=2,
        text_heads=2,
        vae_widths=(32, 64, 64),
    ),
}


def alphas_cumprod_schedule() -> np.ndarray:
    """Stable Diffusion v1's scaled-linear schedule, float64[1000].

    Computed in float64, it matches KerasCV's sampler constants (``_ALPHAS_CUMPROD``) to 6e-8;
    KerasCV's ``NoiseScheduler`` runs the same formula in float32 and is off by 3e-7.
    """
    betas = np.linspace(0.00085**0.5, 0.012**0.5, TRAIN_TIMESTEPS, dtype=np.float64) ** 2
    return np.cumprod(1.0 - betas)


def timestep_embedding(
    timesteps: tf.Tensor | np.ndarray | Sequence[int], dim: int = TIMESTEP_DIM
) -> tf.Tensor:
    """Sinusoidal embedding of a batch of timesteps, [B] -> [B, dim], in one vectorised op.

    Same float32 arithmetic as KerasCV's per-step ``_get_timestep_embedding`` (cosines first),
    so weights trained here sample there. The trainer and the sampler both call this.
    """
    half = dim // 2
    freqs = tf.exp(-np.log(10000.0) * tf.range(half, dtype=tf.float32) / half)
    args = tf.cast(tf.reshape(timesteps, (-1, 1)), tf.float32) * freqs[None, :]
    return tf.concat([tf.cos(args), tf.sin(args)], axis=-1)


def tokenize(
    tokenizer: SimpleTokenizer,
    prompts: Sequence[str],
    *,
    length: int,
    pad_id: int,
    which: str = "prompt",
) -> np.ndarray:
    """Token ids int32[B, length], padded with ``pad_id``; raises :class:`PromptTooLong`.

    ``which`` names the prompt in the error ("negative prompt"), so the person knows which one
    to shorten.
    """
    rows = []
    for prompt in prompts:
        ids = list(tokenizer.encode(prompt))
        if len(ids) > length:
            raise PromptTooLong(len(ids), length, which=which)
        rows.append(ids + [pad_id] * (length - len(ids)))
    return np.asarray(rows, dtype=np.int32).reshape(len(rows), length)


class _Released:
    """Stands in for a model a training run released; calling it is a programming error."""

    def __init__(self, part: str) -> None:
        self.part = part

    def __call__(self, *args: object, **kwargs: object) -> None:
        raise RuntimeError(f"the preset's {self.part} was released to save memory during training")

    def __getattr__(self, name: str) -> None:
        raise RuntimeError(f"the preset's {self.part} was released to save memory during training")


@dataclass(eq=False)
class Preset:
    """A built base model: tokenizer, encoders, UNet and decoder (the schedule is shared)."""

    spec: PresetSpec
    tokenizer: SimpleTokenizer
    text_encoder: keras.Model
    diffusion_model: keras.Model
    image_encoder: keras.Model
    decoder: keras.Model
    weights_id: str
    _posterior: keras.Model | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.spec.name

    def release(self, *parts: str) -> None:
        """Drop models this process no longer needs (training keeps cached encodings instead).

        At real size: VAE encoder 0.14 GB, text encoder 0.49 GB, decoder 0.2 GB of float32. A
        released part is replaced by a stub that names it if something still calls it.
        """
        for part in parts:
            if part not in ("text_encoder", "image_encoder", "decoder"):
                raise ValueError(f"cannot release {part!r}")
            setattr(self, part, _Released(part))
            if part == "image_encoder":
                self._posterior = None

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
        """Cumulative alphas of the training schedule (float64[1000]), for trainer and sampler."""
        return alphas_cumprod_schedule()

    @property
    def posterior_encoder(self) -> keras.Model:
        """VAE encoder up to the mean / log-variance (8 channels, unscaled)."""
        if self._posterior is None:
            enc = self.image_encoder
            self._posterior = keras.Model(enc.inputs, enc.layers[-2].output)
        return self._posterior

    def tokenize(self, prompts: Sequence[str], *, which: str = "prompt") -> np.ndarray:
        """Token ids [B, max_prompt_length], padded with ``pad_id``; see :func:`tokenize`."""
        return tokenize(
            self.tokenizer, prompts, length=self.max_prompt_length, pad_id=self.pad_id, which=which
        )

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
