"""Training data: photos in, cached VAE posteriors and prompt embeddings out, batches per step.

Every image is encoded once (and once flipped) to its VAE posterior — mean and log-variance —
and the prompts are encoded once, so a training step runs only the UNet. Which images a step
sees, whether each is flipped, and the step's noise and timesteps are a pure function of
``(seed, step)``: a resumed run reads the same batches as an uninterrupted one without saving
iterator state. The noise is drawn here, in the input pipeline, and not inside the training
step: XLA compiles TensorFlow's stateless Philox into other numbers than the CPU kernel draws
(measured here), so a step drawing its own noise would train differently with and without XLA.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image, ImageOps

from trainer.errors import TrainingDataError
from trainer.presets import TRAIN_TIMESTEPS, Preset

__all__ = [
    "EncodedData",
    "encode_posteriors",
    "encode_training_data",
    "load_image",
    "load_images",
    "make_dataset",
    "sample_latents",
]


def load_image(source: bytes | Path | str, resolution: int) -> np.ndarray:
    """Decode, honour EXIF rotation, centre-crop to a square and resize: uint8 [R, R, 3]."""
    try:
        raw = source if isinstance(source, bytes) else Path(source).read_bytes()
        with Image.open(io.BytesIO(raw)) as opened:
            rgb = ImageOps.exif_transpose(opened).convert("RGB")
            square = ImageOps.fit(rgb, (resolution, resolution), Image.Resampling.LANCZOS)
            return np.asarray(square, dtype=np.uint8)
    except (OSError, ValueError) as exc:
        name = "an image" if isinstance(source, bytes) else Path(source).name
        raise TrainingDataError(f"Could not read {name} as a picture ({exc}).") from exc


def load_images(sources: Iterable[bytes | Path | str], resolution: int) -> np.ndarray:
    """Stack :func:`load_image` results: uint8 [N, R, R, 3]."""
    images = [load_image(s, resolution) for s in sources]
    if not images:
        raise TrainingDataError("No pictures to train on.")
    return np.stack(images)


def encode_posteriors(preset: Preset, images: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """VAE posterior of each image and of its mirror: float32 [N, 2, s, s, 8] (mean, logvar)."""
    if images.ndim != 4 or images.shape[1:] != (preset.resolution, preset.resolution, 3):
        raise TrainingDataError(
            f"Images must be {preset.resolution}x{preset.resolution} RGB; got shape {images.shape}."
        )
    encoder = preset.posterior_encoder
    out = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size].astype(np.float32) / 127.5 - 1.0
        both = np.concatenate([chunk, chunk[:, :, ::-1]], axis=0)
        post = np.asarray(encoder(tf.constant(both), training=False), dtype=np.float32)
        n = len(chunk)
        out.append(np.stack([post[:n], post[n:]], axis=1))
    return np.concatenate(out, axis=0)


@dataclass(frozen=True)
class EncodedData:
    """Everything a run needs from the photos and prompts; the encoders can be released after."""

    instance_posteriors: np.ndarray
    class_posteriors: np.ndarray | None
    instance_context: np.ndarray
    class_context: np.ndarray | None
    instance_tokens: np.ndarray | None = None
    class_tokens: np.ndarray | None = None
    # What the base draws for the empty prompt, trained with it in some class rows
    # (TrainConfig.empty_prompt_rate) so guidance keeps subtracting the base's prediction.
    empty_posteriors: np.ndarray | None = None
    empty_context: np.ndarray | None = None
    empty_tokens: np.ndarray | None = None

    @property
    def has_prior(self) -> bool:
        return self.class_posteriors is not None

    @property
    def epoch_length(self) -> int:
        """Instance set repeated to the class set's length, as the reference DreamBooth does."""
        n_inst = len(self.instance_posteriors)
        return (
            max(n_inst, len(self.class_posteriors)) if self.class_posteriors is not None else n_inst
        )


def encode_training_data(
    preset: Preset,
    instance_images: np.ndarray,
    instance_prompt: str,
    class_images: np.ndarray | None = None,
    class_prompt: str | None = None,
    empty_images: np.ndarray | None = None,
) -> EncodedData:
    """Encode images (with flips) and the prompts once; ``empty_images`` go with class images."""
    if class_images is None or len(class_images) == 0:
        tokens = preset.tokenize([instance_prompt])
        context = np.asarray(preset.encode_tokens(tokens), dtype=np.float32)
        return EncodedData(
            encode_posteriors(preset, instance_images), None, context[0], None, tokens[0], None
        )
    if not class_prompt:
        raise TrainingDataError("Class images need a class prompt.")
    tokens = preset.tokenize([instance_prompt, class_prompt, ""])
    contexts = np.asarray(preset.encode_tokens(tokens), np.float32)
    return EncodedData(
        instance_posteriors=encode_posteriors(preset, instance_images),
        class_posteriors=encode_posteriors(preset, class_images),
        instance_context=contexts[0],
        class_context=contexts[1],
        instance_tokens=tokens[0],
        class_tokens=tokens[1],
        empty_posteriors=(
            None
            if empty_images is None or len(empty_images) == 0
            else encode_posteriors(preset, empty_images)
        ),
        empty_context=contexts[2],
        empty_tokens=tokens[2],
    )


def _indices(step: tf.Tensor, batch: int, length: int, seed: int) -> tf.Tensor:
    """Dataset positions of one batch: a fresh permutation of ``length`` slots per epoch.

    A batch spans at most ``batch // length + 2`` epochs (more than one when the batch is
    larger than the data: 3 photos, batch 5), so that many permutations are drawn.
    """
    pos = tf.cast(step, tf.int64) * batch + tf.range(batch, dtype=tf.int64)
    epoch, slot = pos // length, pos % length
    first = epoch[0]

    def perm(e: tf.Tensor) -> tf.Tensor:
        pair = tf.stack([tf.constant(seed, tf.int64), e])
        keys = tf.random.stateless_uniform([length], seed=pair, dtype=tf.float32)
        return tf.argsort(keys)

    spanned = tf.stack([perm(first + i) for i in range(batch // length + 2)])
    chosen = tf.gather_nd(spanned, tf.stack([epoch - first, slot], axis=1))
    return tf.cast(chosen, tf.int64)


def _seed_pair(step: tf.Tensor, seed: int, stream: int) -> tf.Tensor:
    return tf.stack([tf.constant(seed, tf.int64) + stream, tf.cast(step, tf.int64)])


def _flips(step: tf.Tensor, batch: int, seed: int, stream: int) -> tf.Tensor:
    pair = _seed_pair(step, seed, stream)
    return tf.random.stateless_uniform([batch], seed=pair, maxval=2, dtype=tf.int64)


def _uniform(step: tf.Tensor, batch: int, seed: int, stream: int) -> tf.Tensor:
    return tf.random.stateless_uniform([batch], seed=_seed_pair(step, seed, stream))


def _step_draws(
    step: tf.Tensor, rows: int, latent_shape: tuple[int, ...], seed: int, timesteps: int
) -> dict[str, tf.Tensor]:
    """One step's random numbers for ``rows`` UNet samples, keyed on ``(seed, step, stream)``."""

    def key(stream: int) -> tf.Tensor:
        return tf.stack([tf.constant(seed, tf.int64) * 7919 + stream, tf.cast(step, tf.int64)])

    shape = (rows, *latent_shape)
    return {
        "latent_noise": tf.random.stateless_normal(shape, seed=key(1)),
        "noise": tf.random.stateless_normal(shape, seed=key(2)),
        "timesteps": tf.random.stateless_uniform(
            [rows], seed=key(3), minval=0, maxval=timesteps, dtype=tf.int32
        ),
    }


def make_dataset(
    data: EncodedData,
    batch_size: int,
    *,
    seed: int = 0,
    start_step: int = 0,
    prior: bool = True,
    timesteps: int = TRAIN_TIMESTEPS,
    empty_prompt_rate: float = 0.0,
) -> tf.data.Dataset:
    """Endless batches of posteriors [B, s, s, 8] and the step's random draws.

    Keys: ``step``; ``instance`` and, with class data, ``class`` (posteriors); ``latent_noise``
    and ``noise`` [R, s, s, 4] and ``timesteps`` [R] for the R UNet samples of the step: B, or
    2B when ``prior`` is on and class data exist (instance rows first). Instance and class
    samples are paired by slot within the epoch, so the UNet sees both in one call. With
    ``empty_prompt_rate`` above 0, class rows and empty-prompt images, ``empty_prompt`` [B]
    (bool) marks the class rows that hold an empty-prompt image instead, to train with the empty
    prompt; each row is drawn with that probability.
    """
    length = data.epoch_length
    inst = tf.constant(data.instance_posteriors)
    cls = tf.constant(data.class_posteriors) if data.class_posteriors is not None else None
    n_inst = int(inst.shape[0])
    n_cls = int(cls.shape[0]) if cls is not None else 0
    empty = None
    if empty_prompt_rate > 0 and data.empty_posteriors is not None:
        empty = tf.constant(data.empty_posteriors)
    n_empty = int(empty.shape[0]) if empty is not None else 0
    seed = int(seed)
    rows = batch_size * (2 if prior and cls is not None else 1)
    latent_shape = (*inst.shape[2:-1], inst.shape[-1] // 2)

    def batch_for(step: tf.Tensor) -> dict[str, tf.Tensor]:
        idx = _indices(step, batch_size, length, seed * 2 + 11)
        out = {"step": step}
        inst_idx = tf.stack([idx % n_inst, _flips(step, batch_size, seed, 101)], axis=1)
        out["instance"] = tf.gather_nd(inst, inst_idx)
        if cls is not None:
            cls_flips = _flips(step, batch_size, seed, 202)
            out["class"] = tf.gather_nd(cls, tf.stack([idx % n_cls, cls_flips], axis=1))
        out.update(_step_draws(step, rows, latent_shape, seed, timesteps))
        if empty is not None and rows > batch_size:  # rows that take an empty-prompt image
            chosen = _uniform(step, batch_size, seed, 303) < empty_prompt_rate
            drawn = tf.gather_nd(empty, tf.stack([idx % n_empty, cls_flips], axis=1))
            out["class"] = tf.where(chosen[:, None, None, None], drawn, out["class"])
            out["empty_prompt"] = chosen
        return out

    ds = tf.data.Dataset.counter(start=start_step, dtype=tf.int64)
    return ds.map(batch_for, num_parallel_calls=1, deterministic=True).prefetch(2)


def sample_latents(posterior: tf.Tensor, noise: tf.Tensor, scale: float) -> tf.Tensor:
    """Draw latents from cached posteriors: (mean + std * noise) * scale, as the VAE would."""
    mean, logvar = tf.split(posterior, 2, axis=-1)
    logvar = tf.clip_by_value(logvar, -30.0, 20.0)
    return (mean + tf.exp(0.5 * logvar) * noise) * scale
