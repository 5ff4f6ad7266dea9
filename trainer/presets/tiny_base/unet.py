"""Pretrain the tiny UNet, with its text encoder, on captioned pictures of the toy world.

The objective is the trainer's own: eps prediction at uniform timesteps under the shared noise
schedule and timestep embedding. Captions are "a photo of <class>", "a photo of <colour>
<class>" (the object painted that colour, so the base learns that a word before the class word
can change how the subject looks, which is what DreamBooth then teaches the identifier), and,
one in ten, the empty caption, so classifier-free guidance has an unconditional model.

The text encoder's layers train too. Left random, it makes "a photo of dog" and "a photo of
sks dog" 0.975 alike (cosine over the context), and a LoRA at the CLI's rate had not told them
apart after 1,500 steps; fitted with the UNet it separates words that change the picture. Its
token embeddings stay as seeded, so a word the corpus never uses ("sks") stays a random one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from storage.rules import class_prompt
from trainer.presets.base import (
    TRAIN_TIMESTEPS,
    PresetSpec,
    alphas_cumprod_schedule,
    timestep_embedding,
    tokenize,
)
from trainer.presets.tiny_base import world
from trainer.presets.tiny_base.recipe import TinyBaseRecipe, learning_rate

__all__ = ["Corpus", "build_corpus", "fit_unet"]

log = logging.getLogger(__name__)

Group = tuple[np.ndarray, np.ndarray]  # picture indices, caption indices that fit them


@dataclass(frozen=True)
class Corpus:
    """Posteriors of every picture and its mirror, the token ids of every caption (the empty
    one last), and which pictures go with which captions, by kind of caption."""

    posteriors: np.ndarray  # [N, 2, s, s, 8]
    tokens: np.ndarray  # [C, L]
    groups: dict[str, list[Group]]

    def draw(self, rng: np.random.Generator, batch: int, recipe: TinyBaseRecipe) -> np.ndarray:
        """[batch, 2]: picture and caption index of each sample."""
        kinds = ["empty", "colour", "plain"]
        empty, colour = recipe.unconditional_fraction, recipe.colour_fraction
        out = np.empty((batch, 2), np.int64)
        for row, kind in enumerate(rng.choice(kinds, batch, p=[empty, colour, 1 - empty - colour])):
            pictures, captions = self.groups[kind][rng.integers(len(self.groups[kind]))]
            out[row] = rng.choice(pictures), rng.choice(captions)
        return out


def build_corpus(
    spec: PresetSpec,
    tokenizer: object,
    posterior: keras.Model,
    recipe: TinyBaseRecipe,
    plain: dict[str, np.ndarray],
) -> Corpus:
    """Encode every look's ``plain`` pictures (the ones the VAE was fitted on) and new ones in
    every colour word, and tokenise their captions."""
    prompts: list[str] = []
    pictures: list[np.ndarray] = []
    groups: dict[str, list[Group]] = {"plain": [], "colour": [], "empty": []}

    def add(drawn: np.ndarray, texts: list[str]) -> Group:
        first = sum(len(p) for p in pictures)
        pictures.append(drawn)
        prompts.extend(texts)
        return np.arange(first, first + len(drawn)), np.arange(
            len(prompts) - len(texts), len(prompts)
        )

    for look in sorted(set(world.CLASS_WORDS.values())):
        words = [word for word, name in sorted(world.CLASS_WORDS.items()) if name == look]
        groups["plain"].append(add(plain[look], [class_prompt(w) for w in words]))
        for colour in sorted(world.COLOUR_WORDS):
            drawn = world.draw_class(look, recipe.images_per_colour, recipe.seed, colour=colour)
            groups["colour"].append(add(drawn, [class_prompt(f"{colour} {w}") for w in words]))
    prompts.append("")
    groups["empty"].append(
        (np.arange(sum(len(p) for p in pictures)), np.asarray([len(prompts) - 1]))
    )

    x = np.concatenate(pictures).astype(np.float32) / 127.5 - 1.0
    chunks = np.array_split(x, max(1, len(x) // 128))
    posteriors = np.concatenate(
        [
            np.stack(
                [np.asarray(posterior(tf.constant(v), training=False)) for v in (c, c[:, :, ::-1])],
                1,
            )
            for c in chunks
        ]
    )
    pad = int(tokenizer.end_of_text)  # type: ignore[attr-defined]
    tokens = tokenize(tokenizer, prompts, length=spec.max_prompt_length, pad_id=pad)  # type: ignore[arg-type]
    return Corpus(posteriors, tokens, groups)


def fit_unet(
    unet: keras.Model,
    text_encoder: keras.Model,
    corpus: Corpus,
    recipe: TinyBaseRecipe,
    scale: float,
) -> float:
    """Fit the UNet and the text encoder's layers; returns the mean of the last 100 losses."""
    alphas = tf.constant(alphas_cumprod_schedule().astype(np.float32))
    embedding = next(layer for layer in text_encoder.layers if hasattr(layer, "token_embedding"))
    frozen = {id(v) for v in embedding.token_embedding.weights}
    variables = unet.trainable_variables + [
        v for v in text_encoder.trainable_variables if id(v) not in frozen
    ]
    optimizer = keras.optimizers.AdamW(recipe.unet_lr, weight_decay=1e-2, global_clipnorm=1.0)
    optimizer.build(variables)
    posts = tf.constant(corpus.posteriors)
    token_table = tf.constant(corpus.tokens)
    positions = tf.range(corpus.tokens.shape[1], dtype=tf.int32)[None]

    def step(index: tf.Tensor, draws: tf.Tensor, t: tf.Tensor) -> tf.Tensor:
        mean, logvar = tf.split(tf.gather_nd(posts, index[:, :2]), 2, axis=-1)
        latents = (mean + tf.exp(0.5 * tf.clip_by_value(logvar, -30.0, 20.0)) * draws[0]) * scale
        alpha = tf.reshape(tf.gather(alphas, t), (-1, 1, 1, 1))
        noisy = tf.sqrt(alpha) * latents + tf.sqrt(1.0 - alpha) * draws[1]
        tokens = tf.gather(token_table, index[:, 2])
        with tf.GradientTape() as tape:
            where = tf.repeat(positions, tf.shape(tokens)[0], axis=0)
            context = text_encoder([tokens, where], training=True)
            pred = unet([noisy, timestep_embedding(t), context], training=True)
            loss = tf.reduce_mean(tf.square(pred - draws[1]))
        optimizer.apply(tape.gradient(loss, variables), variables)
        return loss

    compiled = tf.function(step, jit_compile=True)
    rng = np.random.default_rng([recipe.seed, 2])
    batch, shape = recipe.unet_batch, corpus.posteriors.shape[2:-1]
    losses: list[tf.Tensor] = []
    for i in range(recipe.unet_steps):
        rate = learning_rate(
            recipe.unet_lr, recipe.unet_final_lr, recipe.unet_warmup, recipe.unet_steps, i
        )
        optimizer.learning_rate.assign(rate)
        drawn = corpus.draw(rng, batch, recipe)
        index = np.stack([drawn[:, 0], rng.integers(0, 2, batch), drawn[:, 1]], axis=1)
        draws = rng.standard_normal((2, batch, *shape, 4)).astype(np.float32)
        t = rng.integers(0, TRAIN_TIMESTEPS, batch).astype(np.int32)
        losses.append(compiled(tf.constant(index), tf.constant(draws), tf.constant(t)))
        if (i + 1) % 500 == 0:
            recent = float(np.mean([float(x) for x in losses[-500:]]))
            log.info("tiny base: UNet step %d/%d, loss %.4f", i + 1, recipe.unet_steps, recent)
    return float(np.mean([float(x) for x in losses[-100:]]))
