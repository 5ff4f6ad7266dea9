"""DreamBooth with prior preservation as a ``keras.Model`` whose ``train_step`` trains the UNet.

One step: sample latents from the cached VAE posteriors, noise them at the batch's timesteps,
predict the noise for instance and class samples in one UNet call, and minimise
``instance_loss + prior_loss_weight * prior_loss``. Randomness is stateless, keyed on
``(seed, step)`` and drawn by the input pipeline (:func:`trainer.data.make_dataset`), so a run
resumed from a checkpoint repeats an uninterrupted run exactly, with or without XLA.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from trainer.attention import use_remat, use_tiled_attention
from trainer.data import EncodedData, make_dataset, sample_latents
from trainer.errors import InvalidTrainConfig
from trainer.lora import enable_lora, lora_variables
from trainer.precision import (
    device_defaults,
    half_precision_base,
    set_compute_policy,
)
from trainer.presets import Preset, build_diffusion_model, build_text_encoder, timestep_embedding
from trainer.smallconv import use_small_conv_matmul
from trainer.train_config import DEFAULT_LR, TrainConfig

__all__ = [
    "DEFAULT_LR",
    "DreamBoothTrainer",
    "StepCallback",
    "TrainConfig",
    "copy_diffusion_model",
    "copy_text_encoder",
    "device_defaults",
    "half_precision_base",
    "make_trainer",
    "set_compute_policy",
]


class DreamBoothTrainer(keras.Model):  # type: ignore[misc]
    """Trains ``diffusion_model`` (all of it, or only its LoRA factors) on cached latents."""

    def __init__(
        self,
        diffusion_model: keras.Model,
        alphas_cumprod: np.ndarray,
        config: TrainConfig,
        *,
        instance_context: np.ndarray,
        class_context: np.ndarray | None,
        latent_scale: float,
        text_encoder: keras.Model | None = None,
        instance_tokens: np.ndarray | None = None,
        class_tokens: np.ndarray | None = None,
        empty_context: np.ndarray | None = None,
        empty_tokens: np.ndarray | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.diffusion_model = diffusion_model
        # Only set when the text encoder trains too (LoRA); contexts are then computed per step.
        self.text_encoder = text_encoder
        self._tokens = {
            "instance": None if instance_tokens is None else tf.constant(instance_tokens[None]),
            "class": None if class_tokens is None else tf.constant(class_tokens[None]),
            "empty": None if empty_tokens is None else tf.constant(empty_tokens[None]),
        }
        self.config = config
        self.latent_scale = float(latent_scale)
        self.has_prior = class_context is not None and config.prior_loss_weight > 0
        self._alphas = tf.constant(np.asarray(alphas_cumprod, dtype=np.float32))
        self._contexts = {
            name: tf.constant(value[None], tf.float32)
            for name, value in (
                ("instance", instance_context),
                ("class", class_context),
                ("empty", empty_context),
            )
            if value is not None
        }
        self.empty_prompt_rate = float(config.empty_prompt_rate or 0.0) if self.has_prior else 0.0
        self.built = True

    @property
    def trained_variables(self) -> list[keras.Variable]:
        """What the optimizer updates: LoRA factors, or every trainable UNet weight."""
        if self.config.method == "lora":
            text = lora_variables(self.text_encoder) if self.text_encoder is not None else []
            return [*lora_variables(self.diffusion_model), *text]
        return [v for v in self.diffusion_model.trainable_variables if "lora" not in v.path]

    def compile_for_training(self) -> None:
        """Compile with the config's optimizer, built on the trained variables only."""
        optimizer = self.config.make_optimizer()
        optimizer.build(self.trained_variables)
        self.compile(optimizer=optimizer, jit_compile=self.config.jit_compile)

    def _context(self, which: str, batch: tf.Tensor) -> tf.Tensor:
        """Prompt context [batch, L, C]: cached, or from the training text encoder."""
        tokens = self._tokens[which]
        if self.text_encoder is None or tokens is None:
            return tf.repeat(self._contexts[which], batch, axis=0)
        positions = tf.range(tf.shape(tokens)[1], dtype=tf.int32)[None]
        out = self.text_encoder([tokens, positions], training=True)
        return tf.repeat(tf.cast(out, tf.float32), batch, axis=0)

    def _class_rows_context(self, data: dict[str, tf.Tensor], batch: tf.Tensor) -> tf.Tensor:
        """The class prompt's context; the empty prompt's on rows holding an empty-prompt image."""
        context = self._context("class", batch)
        if self.empty_prompt_rate == 0:
            return context
        empty = data["empty_prompt"][:, None, None]
        return tf.where(empty, self._context("empty", batch), context)

    def _noisy_inputs(self, data: dict[str, tf.Tensor]) -> tuple[tf.Tensor, ...]:
        """Noisy latents, timestep embeddings and target noise from one batch's draws."""
        posts = data["instance"]
        batch = tf.shape(posts)[0]
        if self.has_prior:
            posts = tf.concat([posts, data["class"]], axis=0)
        latents = sample_latents(posts, data["latent_noise"], self.latent_scale)
        noise = data["noise"]
        alpha = tf.reshape(tf.gather(self._alphas, data["timesteps"]), (-1, 1, 1, 1))
        noisy = tf.sqrt(alpha) * latents + tf.sqrt(1.0 - alpha) * noise
        return noisy, timestep_embedding(data["timesteps"]), noise, batch

    def train_step(self, data: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        noisy, t_emb, noise, batch = self._noisy_inputs(data)
        variables = self.trained_variables
        with tf.GradientTape() as tape:
            context = self._context("instance", batch)
            if self.has_prior:
                context = tf.concat([context, self._class_rows_context(data, batch)], axis=0)
            pred = self.diffusion_model([noisy, t_emb, context], training=True)
            err = tf.square(tf.cast(pred, tf.float32) - noise)
            instance_loss = tf.reduce_mean(err[:batch])
            if self.has_prior:
                prior_loss = tf.reduce_mean(err[batch:])
                loss = instance_loss + self.config.prior_loss_weight * prior_loss
            else:
                prior_loss = tf.zeros_like(instance_loss)
                loss = instance_loss
            scaled = self.optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, variables)
        self.optimizer.apply(grads, variables)
        return {"loss": loss, "instance_loss": instance_loss, "prior_loss": prior_loss}

    def dataset(self, data: EncodedData, start_step: int = 0) -> tf.data.Dataset:
        """The batches and random draws of this run's steps from ``start_step`` on."""
        if self.empty_prompt_rate and data.empty_posteriors is None:
            raise InvalidTrainConfig(
                f"This run trains {self.empty_prompt_rate:g} of its class samples on images the "
                "base draws for the empty prompt, and none were given: pass them to "
                "encode_training_data, or set empty_prompt_rate=0."
            )
        return make_dataset(
            data,
            self.config.batch_size,
            seed=self.config.seed,
            start_step=start_step,
            prior=self.has_prior,
            timesteps=int(self._alphas.shape[0]),
            empty_prompt_rate=self.empty_prompt_rate,
        )

    def train(
        self,
        data: EncodedData,
        *,
        start_step: int = 0,
        until_step: int | None = None,
        callbacks: list[keras.callbacks.Callback] | None = None,
    ) -> dict[str, list[float]]:
        """Run steps ``start_step`` to ``until_step`` (default: config.steps); return history."""
        end = self.config.steps if until_step is None else until_step
        if end <= start_step:
            return {}
        history = self.fit(
            self.dataset(data, start_step),
            epochs=1,
            steps_per_epoch=end - start_step,
            verbose=0,
            shuffle=False,
            callbacks=callbacks or [],
        )
        return {k: [float(x) for x in v] for k, v in history.history.items()}


def copy_diffusion_model(preset: Preset, dtype_policy: str | None = None) -> keras.Model:
    """A fresh UNet with the preset's base weights, so training never touches the shared base."""
    unet = build_diffusion_model(preset.spec, dtype_policy=dtype_policy)
    unet.set_weights(preset.diffusion_model.get_weights())
    return unet


def copy_text_encoder(preset: Preset) -> keras.Model:
    """A fresh text encoder with the preset's weights, for LoRA on the text side."""
    encoder = build_text_encoder(preset.spec)
    encoder.set_weights(preset.text_encoder.get_weights())
    return encoder


def make_trainer(
    preset: Preset,
    data: EncodedData,
    config: TrainConfig,
    *,
    diffusion_model: keras.Model | None = None,
    in_place: bool = False,
) -> DreamBoothTrainer:
    """A compiled trainer: copy (or take) the UNet, enable LoRA if asked, build the optimizer.

    ``in_place`` trains the preset's own UNet instead of a copy: no second 3.4 GB UNet at real
    size. Use it when nothing else needs the untouched base (the CLI, a training-only worker).
    The config's precision, attention, rematerialisation and convolution are applied to the
    trained UNet.
    LoRA under mixed precision trains on a half-precision copy of the base
    (:func:`half_precision_base`), which in place replaces the preset's float32 UNet.
    """
    half_base = config.method == "lora" and config.dtype_policy is not None
    if diffusion_model is not None:
        unet = diffusion_model
    elif half_base:
        unet = half_precision_base(preset.diffusion_model, preset.spec, config.dtype_policy)
        if in_place:  # the float32 base goes: the preset now holds the half-precision one
            preset.diffusion_model = unet
    elif in_place:
        unet = preset.diffusion_model
        set_compute_policy(unet, config.dtype_policy)
    else:
        unet = copy_diffusion_model(preset, config.dtype_policy)
    use_tiled_attention(unet, config.attention == "tiled")
    use_remat(unet, bool(config.remat))
    use_small_conv_matmul(unet, config.conv == "matmul")
    if config.method == "lora" and not lora_variables(unet):
        enable_lora(unet, config.lora_rank, alpha=config.lora_alpha, seed=config.seed)
    text_encoder = None
    if config.train_text_encoder:
        text_encoder = copy_text_encoder(preset)
        enable_lora(text_encoder, config.lora_rank, alpha=config.lora_alpha, seed=config.seed + 1)
    trainer = DreamBoothTrainer(
        unet,
        preset.alphas_cumprod,
        config,
        instance_context=data.instance_context,
        class_context=data.class_context,
        latent_scale=preset.latent_scale,
        text_encoder=text_encoder,
        instance_tokens=data.instance_tokens,
        class_tokens=data.class_tokens,
        empty_context=data.empty_context,
        empty_tokens=data.empty_tokens,
    )
    trainer.compile_for_training()
    return trainer


class StepCallback(keras.callbacks.Callback):  # type: ignore[misc]
    """Calls ``fn(global_step, logs)`` after each step (progress bars, checkpoints)."""

    def __init__(self, fn: Callable[[int, dict[str, float]], None], start_step: int) -> None:
        super().__init__()
        self.fn = fn
        self.start_step = start_step

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        values = {k: float(v) for k, v in (logs or {}).items()}
        self.fn(self.start_step + batch + 1, values)
