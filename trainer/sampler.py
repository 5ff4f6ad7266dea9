"""Text-to-image sampling: DDIM as KerasCV does it, with one UNet call per step.

KerasCV's ``StableDiffusion.text_to_image`` runs the UNet twice per step (conditional, then
unconditional), goes through ``predict_on_batch`` each time and hard-codes CLIP's token ids. This
sampler keeps KerasCV's schedule and update arithmetic exactly, but:

- concatenates the unconditional and conditional batches into **one** UNet call per step;
- caches prompt encodings (the unconditional / negative one is reused across calls);
- precomputes every timestep embedding and DDIM coefficient once, vectorised;
- runs the denoising loop and the decoder as ``tf.function`` graphs (optionally XLA-compiled),
  returning to Python only to report progress;
- draws each image's starting noise from its own seed with a stateless RNG, so image ``i`` of a
  batch depends only on ``seeds[i]`` (``[s1, s2]`` gives the same ``s1`` image as ``[s1]``);
- reads the pad id and the prompt length from the tokenizer and the text encoder.

The noise schedule, the timestep embedding and tokenising are the trainer's own (from
:mod:`trainer.presets`), so what was trained is what is sampled. Over-long prompts raise
:class:`~trainer.errors.PromptTooLong` (a ``UserFacingError``) instead of being truncated.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
from PIL import Image

from storage.rules import MAX_IMAGES, MAX_SAMPLER_STEPS, MAX_SEED, check_guidance, check_int
from trainer.errors import PromptTooLong
from trainer.presets import TRAIN_TIMESTEPS, alphas_cumprod_schedule, timestep_embedding, tokenize

SAMPLER_VERSION = 1
"""Bump when a change to the sampler changes its pixels: cached class images are then redrawn."""

__all__ = [
    "SAMPLER_VERSION",
    "PromptTooLong",
    "Sampler",
    "ddim_timesteps",
    "encode_png",
]


ProgressFn = Callable[[int, int], None]
"""Called after each denoising step with ``(steps_done, steps_total)``."""


def ddim_timesteps(steps: int) -> np.ndarray:
    """The timesteps KerasCV visits (ascending; sampling walks them backwards)."""
    ratio = (TRAIN_TIMESTEPS - 1) / (steps - 1) if steps > 1 else TRAIN_TIMESTEPS
    return np.asarray((np.arange(0, steps) * ratio).round().astype(np.int64))


def encode_png(image: np.ndarray) -> bytes:
    """PNG of one ``uint8`` ``[H, W, 3]`` image; no metadata, so equal pixels give equal bytes."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _input_dim(model: Any, index: int, axis: int) -> int | None:
    inputs = getattr(model, "inputs", None)
    if not inputs or len(inputs) <= index:
        return None
    dim = inputs[index].shape[axis]
    return int(dim) if dim is not None else None


class Sampler:
    """Generates images from one set of Stable Diffusion components.

    Build one per loaded model and keep it: traced steps and prompt encodings are reused.
    """

    def __init__(
        self,
        *,
        tokenizer: Any,
        text_encoder: Any,
        diffusion_model: Any,
        decoder: Any,
        max_prompt_length: int | None = None,
        pad_id: int | None = None,
        alphas_cumprod: Sequence[float] | np.ndarray | None = None,
        compile: bool = True,
        jit_compile: bool = True,
    ) -> None:
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.diffusion_model = diffusion_model
        self.decoder = decoder
        length = max_prompt_length or _input_dim(text_encoder, 0, 1)
        if not length:
            raise ValueError("max_prompt_length is needed when the text encoder has no fixed input")
        self.max_prompt_length = int(length)
        self.pad_id = int(tokenizer.end_of_text if pad_id is None else pad_id)
        if not getattr(diffusion_model, "inputs", None):
            raise ValueError("the diffusion model must be a built functional model")
        self.latent_shape = tuple(int(d) for d in diffusion_model.inputs[0].shape[1:])
        self.embedding_dim = int(diffusion_model.inputs[1].shape[-1])
        alphas = alphas_cumprod_schedule() if alphas_cumprod is None else alphas_cumprod
        self.alphas_cumprod = np.asarray(alphas, dtype=np.float64)
        self._positions = tf.range(self.max_prompt_length, dtype=tf.int32)[None, :]
        self._contexts: dict[str, tf.Tensor] = {}
        self._schedules: dict[int, tuple[tf.Tensor, tf.Tensor]] = {}
        if compile:
            # One trace serves every batch size and span length; XLA still specialises per shape.
            latent_spec = tf.TensorSpec((None, *self.latent_shape), tf.float32)
            context_spec = tf.TensorSpec((None, self.max_prompt_length, None), tf.float32)
            self._span = tf.function(
                self._denoise_span,
                jit_compile=jit_compile,
                input_signature=[
                    latent_spec,
                    tf.TensorSpec((None, self.embedding_dim), tf.float32),
                    context_spec,
                    tf.TensorSpec((None, 4), tf.float32),
                    tf.TensorSpec((), tf.float32),
                ],
            )
            self._decode = tf.function(
                self._decode_images, jit_compile=jit_compile, input_signature=[latent_spec]
            )
            self._encode = tf.function(
                self._encode_tokens,
                input_signature=[tf.TensorSpec((1, self.max_prompt_length), tf.int32)],
            )
        else:
            self._span = self._denoise_span
            self._decode = self._decode_images
            self._encode = self._encode_tokens

    @classmethod
    def from_components(cls, components: Any, **options: Any) -> Sampler:
        """Build from any object carrying the four models (a preset or a loaded model).

        Optional attributes ``max_prompt_length``, ``pad_id`` and ``alphas_cumprod`` are used when
        present, so the preset stays the one source of those facts.
        """
        for name in ("max_prompt_length", "pad_id", "alphas_cumprod"):
            value = getattr(components, name, None)
            if value is not None:
                options.setdefault(name, value)
        return cls(
            tokenizer=components.tokenizer,
            text_encoder=components.text_encoder,
            diffusion_model=components.diffusion_model,
            decoder=components.decoder,
            **options,
        )

    @property
    def resolution(self) -> tuple[int, int]:
        """(height, width) of generated images in pixels."""
        return self.latent_shape[0] * 8, self.latent_shape[1] * 8

    # -- text ---------------------------------------------------------------------------------

    def tokens(self, prompt: str, *, which: str = "prompt") -> list[int]:
        """Token ids padded to the encoder's length; raises :class:`PromptTooLong`."""
        ids = tokenize(
            self.tokenizer, [prompt], length=self.max_prompt_length, pad_id=self.pad_id, which=which
        )
        return [int(i) for i in ids[0]]

    def _encode_tokens(self, tokens: tf.Tensor) -> tf.Tensor:
        return tf.cast(self.text_encoder([tokens, self._positions], training=False), tf.float32)

    def context(self, prompt: str, *, which: str = "prompt") -> tf.Tensor:
        """The text encoder's output for ``prompt``, ``[1, length, width]`` (cached)."""
        cached = self._contexts.get(prompt)
        if cached is None:
            tokens = tf.constant([self.tokens(prompt, which=which)], dtype=tf.int32)
            cached = tf.convert_to_tensor(self._encode(tokens))
            if len(self._contexts) >= 64:
                self._contexts.pop(next(iter(self._contexts)))
            self._contexts[prompt] = cached
        return cached

    def clear_prompt_cache(self) -> None:
        """Forget cached prompt encodings (after the text encoder's weights changed)."""
        self._contexts.clear()

    # -- noise and steps ----------------------------------------------------------------------

    def initial_noise(self, seeds: Sequence[int]) -> tf.Tensor:
        """Starting latents, one stateless draw per seed: ``[len(seeds), h, w, 4]``."""
        draws = [
            tf.random.stateless_normal(
                self.latent_shape, seed=tf.constant([seed, 0], dtype=tf.int64), dtype=tf.float32
            )
            for seed in seeds
        ]
        return tf.stack(draws)

    def _denoise_step(
        self,
        latent: tf.Tensor,
        t_emb: tf.Tensor,
        contexts: tf.Tensor,
        coeffs: tf.Tensor,
        guidance: tf.Tensor,
    ) -> tf.Tensor:
        """One DDIM step (eta 0) with classifier-free guidance in a single UNet call.

        ``contexts`` is ``[unconditional; conditional]`` (2n rows); ``coeffs`` holds
        sqrt(1-a_t), sqrt(a_t), sqrt(1-a_prev), sqrt(a_prev) computed in float64 like KerasCV.
        """
        both = tf.concat([latent, latent], axis=0)
        t_batch = tf.repeat(t_emb[None, :], tf.shape(both)[0], axis=0)
        eps = self.diffusion_model([both, t_batch, contexts], training=False)
        eps_uncond, eps_cond = tf.split(tf.cast(eps, latent.dtype), 2, axis=0)
        eps = eps_uncond + guidance * (eps_cond - eps_uncond)
        pred_x0 = (latent - coeffs[0] * eps) / coeffs[1]
        return eps * coeffs[2] + coeffs[3] * pred_x0

    def _denoise_span(
        self,
        latent: tf.Tensor,
        t_embs: tf.Tensor,
        contexts: tf.Tensor,
        coeffs: tf.Tensor,
        guidance: tf.Tensor,
    ) -> tf.Tensor:
        """Consecutive steps (rows in execution order) in one graph loop: no Python per step."""
        for i in tf.range(tf.shape(t_embs)[0]):
            latent = self._denoise_step(latent, t_embs[i], contexts, coeffs[i], guidance)
        return latent

    def _decode_images(self, latent: tf.Tensor) -> tf.Tensor:
        decoded = tf.cast(self.decoder(latent, training=False), tf.float32)
        decoded = ((decoded + 1.0) / 2.0) * 255.0
        return tf.cast(tf.clip_by_value(decoded, 0.0, 255.0), tf.uint8)

    def _schedule(self, steps: int) -> tuple[tf.Tensor, tf.Tensor]:
        """Timestep embeddings and DDIM coefficients in execution order (high t first), cached."""
        cached = self._schedules.get(steps)
        if cached is not None:
            return cached
        timesteps = ddim_timesteps(steps)
        alphas = self.alphas_cumprod[timesteps]
        alphas_prev = np.concatenate([[1.0], alphas[:-1]])
        coeffs = np.stack(
            [
                np.sqrt(1.0 - alphas),
                np.sqrt(alphas),
                np.sqrt(1.0 - alphas_prev),
                np.sqrt(alphas_prev),
            ],
            axis=1,
        ).astype(np.float32)
        embeddings = timestep_embedding(timesteps, self.embedding_dim)
        cached = (embeddings[::-1], tf.constant(coeffs[::-1].copy()))
        self._schedules[steps] = cached
        return cached

    # -- public -------------------------------------------------------------------------------

    def generate(
        self,
        prompt: str,
        *,
        seeds: Sequence[int],
        negative_prompt: str = "",
        steps: int = 50,
        guidance: float = 7.5,
        progress: ProgressFn | None = None,
        progress_every: int = 1,
        initial_noise: tf.Tensor | None = None,
    ) -> np.ndarray:
        """Images for ``prompt``, one per seed, as ``uint8`` ``[n, H, W, 3]``.

        ``negative_prompt`` replaces the empty unconditional prompt of classifier-free guidance.
        Without ``progress`` all steps run in one graph loop; with it, ``progress`` is called
        every ``progress_every`` steps (each report is one return to Python).
        ``initial_noise`` overrides the seeded noise (used to compare against KerasCV).
        """
        self._validate(seeds, steps, guidance)
        n = len(seeds)
        cond = self.context(prompt)
        uncond = self.context(negative_prompt, which="negative prompt")
        contexts = tf.concat([tf.repeat(uncond, n, axis=0), tf.repeat(cond, n, axis=0)], axis=0)
        if initial_noise is None:
            latent = self.initial_noise(seeds)
        else:
            latent = tf.convert_to_tensor(initial_noise, dtype=tf.float32)
            if tuple(latent.shape) != (n, *self.latent_shape):
                raise ValueError(f"initial_noise must have shape {(n, *self.latent_shape)}")
        t_embs, coeffs = self._schedule(steps)
        scale = tf.constant(guidance, dtype=tf.float32)
        span = steps if progress is None else max(1, progress_every)
        for start in range(0, steps, span):
            stop = min(start + span, steps)
            latent = self._span(latent, t_embs[start:stop], contexts, coeffs[start:stop], scale)
            if progress is not None:
                progress(stop, steps)
        return np.asarray(self._decode(latent))

    def generate_png(self, prompt: str, **kwargs: Any) -> list[bytes]:
        """Like :meth:`generate`, encoded as PNG files."""
        return [encode_png(image) for image in self.generate(prompt, **kwargs)]

    @staticmethod
    def _validate(seeds: Sequence[int], steps: int, guidance: float) -> None:
        """The shared rules (storage.rules), so the sampler refuses what the CLI and bot refuse."""
        check_int(len(seeds), "the number of images", 1, MAX_IMAGES)
        for seed in seeds:
            check_int(seed, "seed", 0, MAX_SEED)
        check_int(steps, "steps", 1, MAX_SAMPLER_STEPS)
        check_guidance(guidance)
