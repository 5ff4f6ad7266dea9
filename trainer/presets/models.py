"""UNet, text encoder and VAE builders: KerasCV's classes for sd-v1, its blocks for tiny."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf
from keras_cv.src.models.stable_diffusion.diffusion_model import (
    DiffusionModel,
    ResBlock,
    SpatialTransformer,
    Upsample,
)
from keras_cv.src.models.stable_diffusion.padded_conv2d import PaddedConv2D
from keras_cv.src.models.stable_diffusion.resnet_block import ResnetBlock
from keras_cv.src.models.stable_diffusion.text_encoder import (
    CLIPEmbedding,
    CLIPEncoderLayer,
    TextEncoder,
    quick_gelu,
)

from storage.errors import ConfigError
from trainer.presets.base import LATENT_SCALE, PresetSpec

__all__ = [
    "build_autoencoder",
    "build_diffusion_model",
    "build_text_encoder",
    "tiny_decoder",
    "tiny_image_encoder",
    "tiny_text_encoder",
]


def _output_norm(width: int) -> keras.layers.GroupNormalization:
    """The GroupNorm before a tiny model's output conv, with 4 channels per group.

    KerasCV's default of 32 groups is one channel per group at the tiny widths: an instance norm,
    which removes each channel's mean over the picture, so the output could not carry a picture's
    overall colour (Stable Diffusion's own widths keep 4 or more channels per group).
    """
    return keras.layers.GroupNormalization(groups=max(1, width // 4), epsilon=1e-5)


def tiny_unet(spec: PresetSpec) -> keras.Model:
    size, widths, n = spec.latent_size, spec.unet_widths, spec.unet_layers_per_block
    context = keras.layers.Input((spec.max_prompt_length, spec.context_width), name="context")
    t_in = keras.layers.Input((spec.timestep_dim,), name="timestep_embedding")
    latent = keras.layers.Input((size, size, spec.latent_channels), name="latent")
    t_emb = keras.layers.Dense(4 * widths[0])(t_in)
    t_emb = keras.layers.Activation("swish")(t_emb)
    t_emb = keras.layers.Dense(4 * widths[0])(t_emb)

    def transformer(width: int) -> SpatialTransformer:
        return SpatialTransformer(width // spec.head_size, spec.head_size, fully_connected=False)

    x = PaddedConv2D(widths[0], 3, padding=1)(latent)
    skips = [x]
    for level, width in enumerate(widths):
        for _ in range(n):
            x = ResBlock(width)([x, t_emb])
            x = transformer(width)([x, context])
            skips.append(x)
        if level < len(widths) - 1:
            x = PaddedConv2D(width, 3, strides=2, padding=1)(x)
            skips.append(x)
    x = ResBlock(widths[-1])([x, t_emb])
    x = transformer(widths[-1])([x, context])
    x = ResBlock(widths[-1])([x, t_emb])
    for level in reversed(range(len(widths))):
        for _ in range(n + 1):
            x = keras.layers.Concatenate()([x, skips.pop()])
            x = ResBlock(widths[level])([x, t_emb])
            x = transformer(widths[level])([x, context])
        if level > 0:
            x = Upsample(widths[level])(x)
    x = _output_norm(widths[0])(x)
    x = keras.layers.Activation("swish")(x)
    out = PaddedConv2D(spec.latent_channels, 3, padding=1)(x)
    return keras.Model([latent, t_in, context], out, name="diffusion_model")


def tiny_text_encoder(spec: PresetSpec) -> keras.Model:
    length = spec.max_prompt_length
    tokens = keras.layers.Input((length,), dtype="int32", name="tokens")
    positions = keras.layers.Input((length,), dtype="int32", name="positions")
    x = CLIPEmbedding(spec.vocab_size, spec.text_width, length)([tokens, positions])
    for _ in range(spec.text_layers):
        x = CLIPEncoderLayer(spec.text_width, spec.text_heads, activation=quick_gelu)(x)
    x = keras.layers.LayerNormalization(epsilon=1e-5)(x)
    return keras.Model([tokens, positions], x, name="text_encoder")


class _ScaleMean(keras.layers.Layer):  # type: ignore[misc]
    """Keep the mean (first 4 channels) and scale it, as KerasCV's encoder's last layer does."""

    def call(self, x: tf.Tensor) -> tf.Tensor:
        return x[..., :4] * LATENT_SCALE


def tiny_image_encoder(spec: PresetSpec) -> keras.Sequential:
    w = spec.vae_widths
    if len(w) != 3:
        raise ConfigError("the VAE halves the image three times: give three vae_widths")
    layers: list[Any] = [keras.layers.Input((None, None, 3)), PaddedConv2D(w[0], 3, padding=1)]
    for width in w:
        layers.append(ResnetBlock(width))
        layers.append(PaddedConv2D(width, 3, padding=((0, 1), (0, 1)), strides=2))
    layers += [
        ResnetBlock(w[-1]),
        _output_norm(w[-1]),
        keras.layers.Activation("swish"),
        PaddedConv2D(8, 3, padding=1),
        PaddedConv2D(8, 1),
        _ScaleMean(),
    ]
    return keras.Sequential(layers, name="image_encoder")


def tiny_decoder(spec: PresetSpec) -> keras.Sequential:
    w = spec.vae_widths[::-1]
    size = spec.latent_size
    layers: list[Any] = [
        keras.layers.Input((size, size, spec.latent_channels)),
        keras.layers.Rescaling(1.0 / LATENT_SCALE),
        PaddedConv2D(4, 1),
        PaddedConv2D(w[0], 3, padding=1),
        ResnetBlock(w[0]),
    ]
    for width in w:
        layers += [
            keras.layers.UpSampling2D(2),
            PaddedConv2D(width, 3, padding=1),
            ResnetBlock(width),
        ]
    layers += [
        _output_norm(w[-1]),
        keras.layers.Activation("swish"),
        PaddedConv2D(3, 3, padding=1),
    ]
    return keras.Sequential(layers, name="decoder")


def build_text_encoder(spec: PresetSpec) -> keras.Model:
    """A randomly initialised text encoder of ``spec`` (copy weights in to get a trainable twin)."""
    if spec.name == "sd-v1":
        return TextEncoder(spec.max_prompt_length, download_weights=False)
    return tiny_text_encoder(spec)


def build_autoencoder(spec: PresetSpec, *, seed: int = 0) -> tuple[keras.Model, keras.Model]:
    """A fresh, randomly initialised VAE (encoder, decoder) of a tiny-style ``spec``.

    For tests and benches that need an autoencoder of their own (e.g. one fitted to synthetic
    images so generated pixels can be compared with photos).
    """
    if spec.name == "sd-v1":
        raise ConfigError("sd-v1 uses KerasCV's VAE; load it with build_preset")
    keras.utils.set_random_seed(seed)
    return tiny_image_encoder(spec), tiny_decoder(spec)


def build_diffusion_model(
    spec: PresetSpec, *, dtype_policy: str | None = None, download: bool = False
) -> keras.Model:
    """The UNet of ``spec``, random init unless ``download`` (sd-v1), under ``dtype_policy``."""
    previous = keras.config.dtype_policy()
    if dtype_policy is not None:
        keras.config.set_dtype_policy(dtype_policy)
    try:
        if spec.name == "sd-v1":
            return DiffusionModel(
                spec.resolution, spec.resolution, spec.max_prompt_length, download_weights=download
            )
        return tiny_unet(spec)
    finally:
        keras.config.set_dtype_policy(previous)
