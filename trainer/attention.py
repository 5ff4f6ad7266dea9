"""Memory savers for training the UNet: query-tiled attention and block rematerialisation.

KerasCV's ``CrossAttention`` materialises the whole ``[batch, heads, queries, keys]`` score
matrix and autodiff keeps it (and its softmax) for the backward pass: at 512 px that is
4096 x 4096 per head, about 1 GiB per self-attention layer for an instance + class batch.

:func:`tiled_attention` computes the same function one tile of queries at a time and has its own
gradient, which recomputes each tile's scores from the saved queries, keys and values and the
per-row log-sum-exp (as FlashAttention does). It keeps only ``[batch, heads, tile, keys]`` alive
at once and saves nothing quadratic for the backward pass. Scores are computed in float32 even
under mixed precision.

:func:`use_tiled_attention` and :func:`use_remat` switch an already built model over in place, by
giving its KerasCV attention / block layers a subclass that overrides ``call`` only, so weights,
variable paths, LoRA and saved files are unchanged and the model can be switched back.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf
from keras_cv.src.models.stable_diffusion.diffusion_model import (
    CrossAttention,
    ResBlock,
    SpatialTransformer,
)

__all__ = [
    "DEFAULT_QUERY_TILE",
    "TiledCrossAttention",
    "swap_layer_classes",
    "tiled_attention",
    "use_remat",
    "use_tiled_attention",
]

# Queries per tile: 4096 queries (512 px, level 1) become 4 tiles, each holding a
# [batch, heads, 1024, 4096] float32 score block (256 MiB for batch 2 x 8 heads).
DEFAULT_QUERY_TILE = 1024


def _tiles(length: int, tile: int) -> list[tuple[int, int]]:
    return [(start, min(start + tile, length)) for start in range(0, length, tile)]


def tiled_attention(
    q: tf.Tensor, k: tf.Tensor, v: tf.Tensor, scale: float, tile: int = DEFAULT_QUERY_TILE
) -> tf.Tensor:
    """``softmax(q k^T * scale) v`` for q [B, H, Tq, D], k and v [B, H, Tk, D], tile by tile.

    Equal to the plain formula to float rounding. The sequence lengths must be static (they are
    in the UNet: latent height x width, and the prompt length).
    """
    length = int(q.shape[2])
    spans = _tiles(length, max(1, int(tile)))
    out_dtype = q.dtype

    @tf.custom_gradient  # type: ignore[misc]
    def attend(q: tf.Tensor, k: tf.Tensor, v: tf.Tensor) -> Any:
        q32, k32, v32 = (tf.cast(t, tf.float32) for t in (q, k, v))
        outs, lses = [], []
        for lo, hi in spans:
            s = tf.matmul(q32[:, :, lo:hi], k32, transpose_b=True) * scale
            lse = tf.reduce_logsumexp(s, axis=-1, keepdims=True)
            outs.append(tf.matmul(tf.exp(s - lse), v32))
            lses.append(lse)
        out = tf.concat(outs, axis=2) if len(outs) > 1 else outs[0]
        lse_all = tf.concat(lses, axis=2) if len(lses) > 1 else lses[0]

        def grad(d_out: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
            do32 = tf.cast(d_out, tf.float32)
            # rowsum(dO * O): the softmax Jacobian's correction term, per query.
            delta = tf.reduce_sum(do32 * out, axis=-1, keepdims=True)
            dqs = []
            dk = tf.zeros_like(k32)
            dv = tf.zeros_like(v32)
            for lo, hi in spans:
                s = tf.matmul(q32[:, :, lo:hi], k32, transpose_b=True) * scale
                p = tf.exp(s - lse_all[:, :, lo:hi])
                do_t = do32[:, :, lo:hi]
                dv += tf.matmul(p, do_t, transpose_a=True)
                dp = tf.matmul(do_t, v32, transpose_b=True)
                ds = p * (dp - delta[:, :, lo:hi]) * scale
                dqs.append(tf.matmul(ds, k32))
                dk += tf.matmul(ds, q32[:, :, lo:hi], transpose_a=True)
            dq = tf.concat(dqs, axis=2) if len(dqs) > 1 else dqs[0]
            return tf.cast(dq, q.dtype), tf.cast(dk, k.dtype), tf.cast(dv, v.dtype)

        return tf.cast(out, out_dtype), grad

    return attend(q, k, v)


class TiledCrossAttention(CrossAttention):  # type: ignore[misc]
    """KerasCV's ``CrossAttention`` (same weights and projections) with tiled attention."""

    query_tile: int = DEFAULT_QUERY_TILE

    def call(self, inputs: tf.Tensor, context: tf.Tensor | None = None) -> tf.Tensor:
        if context is None:
            context = inputs
        heads, size = self.num_heads, self.head_size

        def split(x: tf.Tensor, length: int) -> tf.Tensor:
            return tf.transpose(tf.reshape(x, (-1, length, heads, size)), (0, 2, 1, 3))

        tq, tk = int(inputs.shape[1]), int(context.shape[1])
        q = split(self.to_q(inputs), tq)
        k = split(self.to_k(context), tk)
        v = split(self.to_v(context), tk)
        attn = tiled_attention(q, k, v, self.scale, self.query_tile)
        out = tf.reshape(tf.transpose(attn, (0, 2, 1, 3)), (-1, tq, heads * size))
        return self.out_proj(out)


class _RematResBlock(ResBlock):  # type: ignore[misc]
    """A UNet residual block whose activations are recomputed in the backward pass."""

    def call(self, inputs: list[tf.Tensor]) -> tf.Tensor:
        x, t = inputs
        parent = super().call
        return tf.recompute_grad(lambda a, b: parent([a, b]))(x, t)


class _RematSpatialTransformer(SpatialTransformer):  # type: ignore[misc]
    """A UNet transformer block whose activations are recomputed in the backward pass."""

    def call(self, inputs: list[tf.Tensor]) -> tf.Tensor:
        x, context = inputs
        parent = super().call
        return tf.recompute_grad(lambda a, b: parent([a, b]))(x, context)


_REMAT = {ResBlock: _RematResBlock, SpatialTransformer: _RematSpatialTransformer}


def swap_layer_classes(model: keras.Model, swaps: dict[type, type], on: bool) -> int:
    """Give matching layers their swapped class (or back); returns how many changed."""
    wanted = swaps if on else {new: old for old, new in swaps.items()}
    changed = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        new = wanted.get(type(layer))
        if new is not None:
            layer.__class__ = new
            changed += 1
    return changed


def use_tiled_attention(
    model: keras.Model, on: bool = True, *, query_tile: int = DEFAULT_QUERY_TILE
) -> int:
    """Switch every KerasCV attention layer of ``model`` to tiled attention (or back)."""
    changed = swap_layer_classes(model, {CrossAttention: TiledCrossAttention}, on)
    if on:
        for layer in model._flatten_layers(include_self=False, recursive=True):
            if isinstance(layer, TiledCrossAttention):
                layer.query_tile = int(query_tile)
    return changed


def use_remat(model: keras.Model, on: bool = True) -> int:
    """Recompute each residual and transformer block's activations in the backward pass."""
    return swap_layer_classes(model, _REMAT, on)
