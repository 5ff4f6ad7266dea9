"""Fit the tiny VAE as an autoencoder, starting from a colour mosaic.

From random init this VAE needs hundreds of full-size steps on a small CPU before it even gets
colours right. So it starts as a mosaic, set by hand: each latent holds its 8x8 block's mean
colour and the decoder interpolates the blocks back (bilinear), which already reconstructs the
toy world about as well as 800 steps from random init did (mean squared error 0.008 against
0.006, in [0, 1] units). Fitting on 32 px crops then adds detail in 200 steps (0.0025). Last,
the latent space is rescaled to unit spread, which the noise schedule assumes.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf
from keras_cv.src.models.stable_diffusion.padded_conv2d import PaddedConv2D
from keras_cv.src.models.stable_diffusion.resnet_block import ResnetBlock

from trainer.presets.tiny_base.recipe import TinyBaseRecipe, learning_rate

__all__ = ["fit_vae", "mosaic_init", "posterior_model"]

Taps = dict[int, list[tuple[int, np.ndarray]]]

# A large constant beside each colour channel ahead of the output GroupNorms (see _paired).
_PAIR_CONSTANT = 10.0
_BOX = np.full((2, 2), 0.25)  # a stride-2 conv over these taps averages 2x2 blocks
_BLUR = np.outer([1.0, 2.0, 1.0], [1.0, 2.0, 1.0]) / 16.0  # after a nearest 2x: bilinear
_CENTRE = np.pad([[1.0]], 1)
_ONE = np.ones((1, 1))


def _set_taps(
    conv: keras.layers.Layer, outputs: Taps, bias: dict[int, float] | None = None
) -> None:
    """Overwrite output channels of a conv: ``outputs[out] = [(in, taps), ...]``, every other
    input into them zero; channels not named keep their random init (free for fitting)."""
    kernel, b = (np.array(w) for w in conv.get_weights())
    for out, sources in outputs.items():
        kernel[..., out] = 0.0
        b[out] = (bias or {}).get(out, 0.0)
        for source, taps in sources:
            kernel[: taps.shape[0], : taps.shape[1], source, out] = taps
    conv.set_weights([kernel, b])


def _copy(taps: np.ndarray, channels: int = 3) -> Taps:
    return {c: [(c, taps)] for c in range(channels)}


def _paired(taps: np.ndarray) -> tuple[Taps, dict[int, float]]:
    """Channels (c, -c, K, -K) for each colour c: what a GroupNorm of 4 channels per group passes
    through linearly, since the group's mean is 0 and the constant K fixes its spread."""
    outputs: Taps = {}
    bias: dict[int, float] = {}
    for colour in range(3):
        outputs[4 * colour] = [(colour, taps)]
        outputs[4 * colour + 1] = [(colour, -taps)]
        outputs[4 * colour + 2], bias[4 * colour + 2] = [], _PAIR_CONSTANT
        outputs[4 * colour + 3], bias[4 * colour + 3] = [], -_PAIR_CONSTANT
    return outputs, bias


def _unpaired(channels: int) -> Taps:
    """Read each colour back after the GroupNorm and swish: swish(x) - swish(-x) = x, and the
    GroupNorm divided each colour by about K / sqrt(2)."""
    scale = _PAIR_CONSTANT / math.sqrt(2.0)
    out: Taps = {c: [(4 * c, scale * _CENTRE), (4 * c + 1, -scale * _CENTRE)] for c in range(3)}
    return {**out, **{c: [] for c in range(3, channels)}}


def mosaic_init(encoder: keras.Model, decoder: keras.Model) -> None:
    """Set the colour path of a random tiny VAE by hand; every residual block starts as the
    identity (its last conv zero), and every other channel keeps its random init."""
    plans = {
        "encoder": ["in", "box", "box", "pair_box", "out", "identity"],
        "decoder": ["identity", "in", "blur", "blur", "pair_blur", "out"],
    }
    for model, plan in ((encoder, plans["encoder"]), (decoder, plans["decoder"])):
        convs = [layer.conv2d for layer in model.layers if isinstance(layer, PaddedConv2D)]
        for conv, step in zip(convs, plan, strict=True):
            if step == "in":
                _set_taps(conv, _copy(_CENTRE if conv.kernel_size[0] == 3 else _ONE))
            elif step == "identity":
                _set_taps(conv, _copy(_ONE, 4))
            elif step in ("box", "blur"):
                _set_taps(conv, _copy(_BOX if step == "box" else _BLUR))
            elif step.startswith("pair"):
                _set_taps(conv, *_paired(_BOX if step == "pair_box" else _BLUR))
            else:
                _set_taps(conv, _unpaired(4 if model is encoder else 3))
        for layer in model.layers:
            if isinstance(layer, ResnetBlock):
                layer.conv2.set_weights([np.zeros_like(w) for w in layer.conv2.get_weights()])
                if isinstance(getattr(layer, "residual_projection", None), PaddedConv2D):
                    _set_taps(layer.residual_projection.conv2d, _copy(_ONE))


def posterior_model(encoder: keras.Model) -> keras.Model:
    """The image encoder up to its mean and log-variance (``layers[-2]``), sharing its layers."""
    return keras.Model(encoder.inputs, encoder.layers[-2].output)


def fit_vae(
    encoder: keras.Model,
    posterior: keras.Model,
    decoder: keras.Model,
    images: np.ndarray,
    recipe: TinyBaseRecipe,
    scale: float,
) -> float:
    """Fit the VAE (``posterior`` is :func:`posterior_model` of ``encoder``) on random crops of
    ``images``; returns the last step's reconstruction error (mean squared, in [-1, 1] pixel
    units)."""
    mosaic_init(encoder, decoder)
    variables = posterior.trainable_variables + decoder.trainable_variables
    optimizer = keras.optimizers.Adam(recipe.vae_lr)
    optimizer.build(variables)

    def step(batch: tf.Tensor, eps: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            mean = posterior(batch, training=True)[..., :4]
            # A near-deterministic posterior: a little noise, relative to the latents' spread,
            # keeps the decoder smooth around the latents the UNet will draw.
            spread = tf.stop_gradient(tf.math.reduce_std(mean))
            z = (mean + recipe.vae_latent_noise * spread * eps) * scale
            recon = tf.reduce_mean(tf.square(decoder(z, training=True) - batch))
        optimizer.apply(tape.gradient(recon, variables), variables)
        return recon

    compiled = tf.function(step, jit_compile=True)
    rng = np.random.default_rng([recipe.seed, 1])
    x = images.astype(np.float32) / 127.5 - 1.0
    size, crop, batch = images.shape[1], recipe.vae_crop, recipe.vae_batch
    recon = float("nan")
    for i in range(recipe.vae_steps):
        rate = learning_rate(
            recipe.vae_lr, recipe.vae_final_lr, recipe.vae_warmup, recipe.vae_steps, i
        )
        optimizer.learning_rate.assign(rate)
        pick = x[rng.choice(len(x), batch, replace=False)]
        top, left = rng.integers(0, size - crop + 1, 2) // 8 * 8
        crops = pick[:, top : top + crop, left : left + crop]
        crops = np.where(rng.random((batch, 1, 1, 1)) < 0.5, crops, crops[:, :, ::-1])
        eps = rng.standard_normal((batch, crop // 8, crop // 8, 4)).astype(np.float32)
        recon = float(compiled(tf.constant(crops), tf.constant(eps)))
    _unit_latents(posterior, decoder, x[:: max(1, len(x) // 64)], scale, recipe.vae_latent_noise)
    return recon


def _unit_latents(
    posterior: keras.Model, decoder: keras.Model, x: np.ndarray, scale: float, noise: float
) -> None:
    """Rescale the latent space so scaled latents have unit spread, folding the factor into the
    encoder's last and the decoder's first 1x1 conv, and fix the posterior's log-variance to
    the noise the decoder was fitted with."""
    mean = np.asarray(posterior(tf.constant(x), training=False))[..., :4]
    factor = float(np.std(mean * scale))
    out_conv = posterior.layers[-1]
    kernel, bias = (np.array(w) for w in out_conv.get_weights())
    kernel[..., :4] /= factor
    bias[:4] /= factor
    kernel[..., 4:] = 0.0
    bias[4:] = 2.0 * math.log(noise / scale)
    out_conv.set_weights([kernel, bias])
    in_conv = next(layer for layer in decoder.layers if layer.get_weights())
    kernel, bias = (np.array(w) for w in in_conv.get_weights())
    in_conv.set_weights([kernel * factor, bias])
