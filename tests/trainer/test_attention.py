"""Memory savers: tiled attention equals KerasCV's; rematerialised blocks give equal gradients."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
import tensorflow as tf


def _attention_model(heads: int, size: int, length: int, context_length: int | None) -> Any:
    import keras
    from keras_cv.src.models.stable_diffusion.diffusion_model import CrossAttention

    x = keras.Input((length, heads * size))
    c = keras.Input((context_length or 1, 48))
    layer = CrossAttention(heads, size)
    out = layer(x, context=c if context_length else None)
    return keras.Model([x, c], out)


def _output_and_grads(model: Any, x: tf.Tensor, c: tf.Tensor) -> list[np.ndarray]:
    with tf.GradientTape() as tape:
        tape.watch([x, c])
        y = model([x, c])
        loss = tf.reduce_sum(tf.cast(y, tf.float32) * tf.sin(tf.cast(y, tf.float32)))
    grads = tape.gradient(loss, [x, c, *model.trainable_variables])
    return [np.asarray(tf.cast(y, tf.float32))] + [
        np.zeros(1) if g is None else np.asarray(tf.cast(g, tf.float32)) for g in grads
    ]


@pytest.mark.parametrize(
    ("length", "context_length", "tile"),
    [(256, None, 64), (256, None, 100), (250, 77, 64), (64, 77, 1024)],
    ids=["self-even-tiles", "self-ragged-tiles", "cross", "one-tile"],
)
def test_tiled_attention_equals_kerascv(length: int, context_length: int | None, tile: int) -> None:
    """Output and every gradient (inputs, projections) match KerasCV's attention."""
    from trainer.attention import TiledCrossAttention, use_tiled_attention

    rng = np.random.default_rng(0)
    model = _attention_model(4, 16, length, context_length)
    x = tf.constant(rng.normal(size=(2, length, 64)), tf.float32)
    c = tf.constant(rng.normal(size=(2, context_length or 1, 48)), tf.float32)
    reference = _output_and_grads(model, x, c)
    assert use_tiled_attention(model, query_tile=tile) == 1
    assert any(isinstance(layer, TiledCrossAttention) for layer in model.layers)
    tiled = _output_and_grads(model, x, c)
    for ref, got in zip(reference, tiled, strict=True):
        scale = float(np.abs(ref).max()) or 1.0
        assert np.abs(ref - got).max() / scale < 1e-5
    assert use_tiled_attention(model, on=False) == 1  # and back to KerasCV's class
    np.testing.assert_allclose(_output_and_grads(model, x, c)[0], reference[0], rtol=0, atol=0)


def test_tiled_attention_keeps_half_precision_io() -> None:
    """Under mixed precision it takes and returns float16 and matches float32 to half precision."""
    from trainer.attention import tiled_attention

    rng = np.random.default_rng(1)
    q, k, v = (tf.constant(rng.normal(size=(1, 2, 96, 8)), tf.float32) for _ in range(3))
    exact = tf.nn.softmax(tf.matmul(q, k, transpose_b=True) * 0.35) @ v
    half = tiled_attention(*(tf.cast(t, tf.float16) for t in (q, k, v)), 0.35, tile=32)
    assert half.dtype == tf.float16
    np.testing.assert_allclose(np.asarray(tf.cast(half, tf.float32)), exact.numpy(), atol=5e-3)


def _step_grads(preset: Any, data: Any, **options: Any) -> tuple[float, list[np.ndarray]]:
    """Loss and LoRA gradients of one training step of a fresh copy of the base UNet."""
    from trainer.data import make_dataset
    from trainer.dreambooth import TrainConfig, make_trainer

    config = TrainConfig(method="lora", steps=1, seed=3, jit_compile=False, **options)
    trainer = make_trainer(preset, data, config)
    batch = next(iter(make_dataset(data, 1, seed=3)))
    noisy, t_emb, noise, n = trainer._noisy_inputs(batch)
    context = tf.concat([trainer._context("instance", n), trainer._context("class", n)], axis=0)
    variables = trainer.trained_variables
    with tf.GradientTape() as tape:
        pred = trainer.diffusion_model([noisy, t_emb, context], training=True)
        loss = tf.reduce_mean(tf.square(tf.cast(pred, tf.float32) - noise))
    return float(loss), [np.asarray(g) for g in tape.gradient(loss, variables)]


def test_memory_savers_leave_the_training_step_unchanged(tiny_preset: Any, tiny_data: Any) -> None:
    """Tiled attention and rematerialisation change memory, not the loss or the gradients."""
    loss, grads = _step_grads(tiny_preset, tiny_data, attention="kerascv", remat=False)
    for options in ({"attention": "tiled", "remat": False}, {"attention": "tiled", "remat": True}):
        other_loss, other = _step_grads(tiny_preset, tiny_data, **options)
        assert other_loss == pytest.approx(loss, rel=1e-5)
        for a, b in zip(grads, other, strict=True):
            assert np.abs(a - b).max() <= 1e-4 * (np.abs(a).max() + 1e-12)
    assert any(np.abs(g).max() > 0 for g in grads)  # the comparison is not of zeros


def test_remat_swaps_every_block_and_back(tiny_preset: Any) -> None:
    from trainer.attention import use_remat
    from trainer.dreambooth import copy_diffusion_model

    unet = copy_diffusion_model(tiny_preset)
    swapped = use_remat(unet)
    assert swapped >= 6  # the tiny UNet's residual and transformer blocks
    assert use_remat(unet, on=False) == swapped


def test_device_defaults_on_this_cpu() -> None:
    """No GPU here: float32, no XLA, tiled attention, no remat, matmul convolutions on small
    maps; explicit values win."""
    from trainer.dreambooth import TrainConfig

    config = TrainConfig()
    assert (config.precision, config.jit_compile, config.attention, config.remat, config.conv) == (
        "float32",
        False,
        "tiled",
        False,
        "matmul",
    )
    chosen = dataclasses.replace(config, precision="mixed_bfloat16", remat=True)
    assert chosen.precision == "mixed_bfloat16" and chosen.remat
