"""Small-map convolutions as matrix products: equal to KerasCV's, forward and backward."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import tensorflow as tf

from tests.trainer.test_attention import _step_grads


def _conv_model(size: int, channels: int, filters: int, kernel: int, strides: int = 1) -> Any:
    import keras
    from keras_cv.src.models.stable_diffusion.padded_conv2d import PaddedConv2D

    x = keras.Input((size, size, channels))
    out = PaddedConv2D(filters, kernel, padding=kernel // 2, strides=strides)(x)
    return keras.Model(x, out)


def _output_and_grads(model: Any, x: tf.Tensor) -> list[np.ndarray]:
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = model(x)
        loss = tf.reduce_sum(tf.cast(y, tf.float32) * tf.sin(tf.cast(y, tf.float32)))
    grads = tape.gradient(loss, [x, *model.trainable_variables])
    return [np.asarray(tf.cast(t, tf.float32)) for t in (y, *grads)]


def _ops(model: Any, x: tf.Tensor) -> set[str]:
    graph = tf.function(model).get_concrete_function(x).graph
    return {op.type for op in graph.get_operations()}


@pytest.mark.parametrize(
    ("size", "kernel", "strides", "rewritten"),
    [(4, 3, 1, True), (8, 3, 1, True), (2, 1, 1, True), (16, 3, 1, False), (8, 3, 2, False)],
    ids=["3x3-on-4x4", "3x3-on-8x8", "1x1-on-2x2", "large-map-kept", "strided-kept"],
)
def test_small_conv_matmul_equals_kerascv(
    size: int, kernel: int, strides: int, rewritten: bool
) -> None:
    """Output and every gradient (input, kernel, bias) match; only small stride-1 maps change."""
    from trainer.smallconv import MatmulPaddedConv2D, use_small_conv_matmul

    rng = np.random.default_rng(0)
    model = _conv_model(size, 24, 40, kernel, strides)
    x = tf.constant(rng.normal(size=(2, size, size, 24)), tf.float32)
    reference = _output_and_grads(model, x)
    assert "Conv2D" in _ops(model, x)
    assert use_small_conv_matmul(model) == 1
    assert any(isinstance(layer, MatmulPaddedConv2D) for layer in model.layers)
    assert ("Conv2D" not in _ops(model, x)) is rewritten
    got = _output_and_grads(model, x)
    for ref, new in zip(reference, got, strict=True):
        assert ref.shape == new.shape
        assert np.abs(ref - new).max() <= 1e-5 * (np.abs(ref).max() or 1.0)
    assert use_small_conv_matmul(model, on=False) == 1  # and back to KerasCV's class
    assert "Conv2D" in _ops(model, x)


def test_small_conv_matmul_under_mixed_precision() -> None:
    """Half-precision inputs and float32 variables: the result stays in the compute dtype."""
    from trainer.precision import set_compute_policy
    from trainer.smallconv import use_small_conv_matmul

    rng = np.random.default_rng(1)
    model = _conv_model(4, 16, 8, 3)
    x = tf.constant(rng.normal(size=(1, 4, 4, 16)), tf.float32)
    exact = np.asarray(model(x))
    set_compute_policy(model, "mixed_bfloat16")
    use_small_conv_matmul(model)
    half = model(tf.cast(x, tf.bfloat16))
    assert half.dtype == tf.bfloat16
    np.testing.assert_allclose(np.asarray(tf.cast(half, tf.float32)), exact, atol=0.05)


def test_make_trainer_applies_the_conv_option(tiny_preset: Any, tiny_data: Any) -> None:
    """``conv="matmul"`` rewrites the trained UNet's convolutions; ``"kerascv"`` leaves none."""
    from trainer.dreambooth import TrainConfig, make_trainer
    from trainer.smallconv import MatmulPaddedConv2D

    def rewritten(conv: str) -> int:
        config = TrainConfig(method="lora", steps=1, jit_compile=False, conv=conv)  # type: ignore[arg-type]
        unet = make_trainer(tiny_preset, tiny_data, config).diffusion_model
        layers = unet._flatten_layers(include_self=False, recursive=True)
        return sum(isinstance(layer, MatmulPaddedConv2D) for layer in layers)

    assert rewritten("matmul") >= 10
    assert rewritten("kerascv") == 0


def test_small_conv_matmul_leaves_the_training_step_unchanged(
    tiny_preset: Any, tiny_data: Any
) -> None:
    """The whole tiny UNet's loss and LoRA gradients, with KerasCV's convolutions and without."""
    loss, grads = _step_grads(tiny_preset, tiny_data, conv="kerascv")
    other_loss, other = _step_grads(tiny_preset, tiny_data, conv="matmul")
    assert other_loss == pytest.approx(loss, rel=1e-5)
    for a, b in zip(grads, other, strict=True):
        assert np.abs(a - b).max() <= 1e-4 * (np.abs(a).max() + 1e-12)
    assert any(np.abs(g).max() > 0 for g in grads)  # the comparison is not of zeros
