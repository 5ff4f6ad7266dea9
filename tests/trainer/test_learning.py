"""Honesty check: DreamBooth on `tiny` really learns the subject.

The subject is a red/blue checkerboard (16 px cells, shifted per photo); the class images are
smooth grey-ish gradients. The tiny preset's VAE is random, so generated pixels mean nothing until
it is fitted as an autoencoder on these images — the "pretrained VAE" of this toy world. The text
encoder stays the random seed-0 base. After DreamBooth, images for "a photo of sks dog"
must be closer to the instance photos than before training and than images for "a photo of
dog", and the loss must fall: with full fine-tuning of the random base UNet, and with LoRA on a
base UNet first pretrained on the class images. Distance: pixel MSE to the nearest photo, over
flips and shifts (the subject may appear anywhere), in [0, 1] units.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from tests.trainer.conftest import CLASS_PROMPT, INSTANCE_PROMPT, checker_images, class_like_images

# Hundreds of steps each (with XLA, the trainer's default): minutes, so only in `make ci`.
pytestmark = pytest.mark.slow

VAE_STEPS = 100
PRETRAIN_STEPS = 300
TRAIN_STEPS = 600
SEEDS = [11, 12, 13, 14]


def _fit_autoencoder(preset: Any, images: np.ndarray) -> Any:
    """A fresh tiny VAE fitted to ``images`` and their mirrors; returns a preset using it."""
    import keras
    import tensorflow as tf

    from trainer.presets import build_autoencoder

    encoder, decoder = build_autoencoder(preset.spec, seed=0)
    posterior = keras.Model(encoder.inputs, encoder.layers[-2].output)
    x = np.concatenate([images, images[:, :, ::-1]]).astype(np.float32) / 127.5 - 1.0
    variables = posterior.trainable_variables + decoder.trainable_variables
    optimizer = keras.optimizers.Adam(3e-3)
    optimizer.build(variables)

    @tf.function
    def step(batch: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            mean, logvar = tf.split(posterior(batch, training=True), 2, axis=-1)
            logvar = tf.clip_by_value(logvar, -30.0, 20.0)
            eps = tf.random.stateless_normal(tf.shape(mean), seed=seed)
            z = (mean + tf.exp(0.5 * logvar) * eps) * preset.latent_scale
            recon = tf.reduce_mean(tf.square(decoder(z, training=True) - batch))
            kl = 0.5 * tf.reduce_mean(tf.square(mean) + tf.exp(logvar) - 1.0 - logvar)
            loss = recon + 1e-4 * kl
        optimizer.apply(tape.gradient(loss, variables), variables)
        return recon

    rng = np.random.default_rng(0)
    for i in range(VAE_STEPS):
        batch = x[rng.choice(len(x), 8, replace=False)]
        step(tf.constant(batch), tf.constant([0, i], tf.int32))
    return dataclasses.replace(preset, image_encoder=encoder, decoder=decoder, _posterior=None)


def _distance(images: np.ndarray, photos: np.ndarray, max_shift: int = 16) -> float:
    """Mean over images of the pixel MSE to the nearest photo, over flips and shifts."""
    a = images.astype(np.float32) / 255.0
    b = photos.astype(np.float32) / 255.0
    b = np.concatenate([b, b[:, :, ::-1]])
    best = []
    for img in a:
        errors = [
            float(
                np.square(np.roll(img, (dy, dx), axis=(0, 1))[None] - b).mean(axis=(1, 2, 3)).min()
            )
            for dy in range(-max_shift, max_shift + 1, 2)
            for dx in range(-max_shift, max_shift + 1, 2)
        ]
        best.append(min(errors))
    return float(np.mean(best))


def _generate(preset: Any, *prompts: str) -> list[np.ndarray]:
    """Images for each prompt from one sampler (a sampler traces its graph once)."""
    from trainer.sampler import Sampler

    sampler = Sampler.from_components(preset)
    return [sampler.generate(p, seeds=SEEDS, steps=20, guidance=7.5) for p in prompts]


@dataclass(frozen=True)
class ToyWorld:
    """The tiny base with a VAE fitted to the subject and class pictures."""

    base: Any
    photos: np.ndarray
    classes: np.ndarray
    vae_reconstruction: float


@pytest.fixture(scope="module")
def toy_world(tiny_preset: Any) -> ToyWorld:
    photos = checker_images(4, seed=1, colours=((230, 30, 40), (30, 60, 220)), cell=16)
    classes = class_like_images(8, seed=3)
    base = _fit_autoencoder(tiny_preset, np.concatenate([photos, classes]))
    recon = np.asarray(base.decoder(base.image_encoder(photos / 127.5 - 1.0)))
    recon_u8 = np.clip((recon + 1.0) * 127.5, 0, 255).astype(np.uint8)
    return ToyWorld(base, photos, classes, _distance(recon_u8, photos))


def _train(base: Any, data: Any, config: Any) -> tuple[Any, list[float]]:
    """Train from ``base``; the trainer and its per-step losses."""
    from trainer.dreambooth import StepCallback, make_trainer

    trainer = make_trainer(base, data, config)
    losses: list[float] = []
    trainer.train(data, callbacks=[StepCallback(lambda s, logs: losses.append(logs["loss"]), 0)])
    return trainer, losses


def _dreambooth_numbers(world: ToyWorld, base: Any, config: Any) -> dict[str, float]:
    """Images for the instance prompt before and after DreamBooth, and the distances."""
    from trainer.data import encode_training_data

    (before,) = _generate(base, INSTANCE_PROMPT)
    data = encode_training_data(base, world.photos, INSTANCE_PROMPT, world.classes, CLASS_PROMPT)
    trainer, losses = _train(base, data, config)
    trained = dataclasses.replace(base, diffusion_model=trainer.diffusion_model)
    after, after_class = _generate(trained, INSTANCE_PROMPT, CLASS_PROMPT)
    return {
        "vae_reconstruction": world.vae_reconstruction,
        "class_images": _distance(world.classes, world.photos),
        "before_sks": _distance(before, world.photos),
        "after_sks": _distance(after, world.photos),
        "after_class_prompt": _distance(after_class, world.photos),
        "after_class_prompt_to_class_images": _distance(after_class, world.classes),
        "loss_first20": float(np.mean(losses[:20])),
        "loss_last20": float(np.mean(losses[-20:])),
    }


def _assert_learned(numbers: dict[str, float], loss_drop: float) -> None:
    print("learning-test numbers:", {k: round(v, 4) for k, v in numbers.items()})
    assert numbers["vae_reconstruction"] < 0.05, numbers  # pixels are comparable at all
    assert numbers["loss_last20"] < loss_drop * numbers["loss_first20"], numbers
    assert numbers["after_sks"] < 0.9 * numbers["before_sks"], numbers
    assert numbers["after_sks"] < 0.95 * numbers["after_class_prompt"], numbers
    # prior preservation: the class prompt still draws the class, not the subject
    assert numbers["after_class_prompt_to_class_images"] < numbers["after_class_prompt"], numbers


def test_full_dreambooth_learns_the_subject(toy_world: ToyWorld) -> None:
    """Full fine-tuning of the random base UNet."""
    from trainer.dreambooth import TrainConfig

    config = TrainConfig(method="full", steps=TRAIN_STEPS, batch_size=2, learning_rate=1e-3, seed=0)
    _assert_learned(_dreambooth_numbers(toy_world, toy_world.base, config), loss_drop=0.5)


def test_lora_dreambooth_learns_the_subject(toy_world: ToyWorld) -> None:
    """LoRA (rank 4, attention projections only) on a base UNet first taught the class.

    LoRA adapts a model that already denoises; on the random base UNet its loss stays above 1
    and nothing is learned (tried), as it would on any untrained model. So the base is first
    pretrained, full fine-tuning, on the class images alone: the toy world's "Stable Diffusion".
    """
    from trainer.data import encode_training_data
    from trainer.dreambooth import TrainConfig

    world = toy_world
    class_only = encode_training_data(world.base, world.classes, CLASS_PROMPT)
    pre_config = TrainConfig(
        method="full", steps=PRETRAIN_STEPS, batch_size=4, learning_rate=1e-3, seed=1
    )
    pretrained, pre_losses = _train(world.base, class_only, pre_config)
    assert np.mean(pre_losses[-20:]) < 0.5 * np.mean(pre_losses[:20]), pre_losses
    base = dataclasses.replace(world.base, diffusion_model=pretrained.diffusion_model)
    base_weights = [np.array(w) for w in base.diffusion_model.get_weights()]

    config = TrainConfig(method="lora", steps=TRAIN_STEPS, batch_size=2, learning_rate=3e-3, seed=0)
    numbers = _dreambooth_numbers(world, base, config)
    _assert_learned(numbers, loss_drop=0.85)
    # the pretrained base itself is untouched: DreamBooth trained a copy's LoRA factors
    for kept, now in zip(base_weights, base.diffusion_model.get_weights(), strict=True):
        np.testing.assert_array_equal(kept, now)
